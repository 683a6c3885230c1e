"""Actual speed, side by side (Zhang et al. 2018, Table 8; Ma et al. 2018, section 2: FLOPs are not speed).

Every (model, input size, threads, runtime) cell runs in its own Python subprocess, so one runtime's
thread pools, caches and allocator never touch another's measurement. Each cell warms up, then reports the
median and 90th percentile of single-batch latency.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from shufflenet._table import markdown_table
from shufflenet.deploy.errors import RuntimeUnavailable
from shufflenet.deploy.runtimes import INT8_RUNTIMES, RUNTIMES, agrees, build_runner, relative_error
from shufflenet.deploy.timing import interleaved_seconds, median_seconds
from shufflenet.profile import profile
from shufflenet.registry import create_model

ANCHOR_PREFIX = "torchvision:"
ANCHORS = ("torchvision:alexnet", "torchvision:shufflenet_v2_x1_0", "torchvision:mobilenet_v2")
SIZES = ((224, 224), (480, 640), (720, 1280))  # Zhang et al. 2018, Table 8
# The cells the headline comparisons need (benchmarks/paired_latency.py times the same set).
HEADLINE_LATENCY_MODELS = (
    "shufflenet_v2_x1_0[layout=torchvision]",
    "torchvision:shufflenet_v2_x1_0",
    "shufflenet_v1_g3_x1_0",
    "shufflenet_v1_g3_x1_0[shuffle=false]",
    "shufflenet_v1_g3_x0_5",
    "torchvision:alexnet",
)
DEFAULT_LATENCY_MODELS = (*HEADLINE_LATENCY_MODELS, "mobilenet_v2_x1_0", "torchvision:mobilenet_v2")

# Zhang et al. 2018, Table 8: Snapdragon 820, 1 thread, ms at 224x224 / 480x640 / 720x1280.
PAPER_ARM_MS = {
    "shufflenet_v1_g3_x0_5": (15.2, 87.4, 260.1),
    "shufflenet_v1_g3_x1_0": (37.8, 222.2, 684.5),
    "shufflenet_v1_g3_x2_0": (108.8, 617.0, 1857.6),
    "torchvision:alexnet": (184.0, 1156.7, 3633.9),
    "mobilenet_v1_x1_0": (110.0, 612.0, 1879.2),
}
# Ma et al. 2018, Table 8: Snapdragon 810, 1 thread, images/s at 224x224 (ms = 1000 / images/s).
PAPER_ARM_224_IMAGES_PER_S = {
    "shufflenet_v2_x0_5": 57.0,
    "shufflenet_v1_g3_x0_5": 56.8,
    "shufflenet_v2_x1_0": 24.4,
    "torchvision:shufflenet_v2_x1_0": 24.4,
    "shufflenet_v1_g3_x1_0": 21.8,
    "mobilenet_v2_x1_0": 8.9,
    "torchvision:mobilenet_v2": 8.9,
    "shufflenet_v2_x1_5": 11.8,
    "shufflenet_v2_x2_0": 6.7,
    "shufflenet_v1_g3_x2_0": 6.4,
    "mobilenet_v1_x1_0": 6.5,
}


def paper_arm_ms(model: str, size: tuple[int, int]) -> float | None:
    """The paper's single-thread ARM latency for this model and input size, where one was published."""
    name, args = parse_model_spec(model)
    if args.get("se"):  # Table 8 times the nets without SE (section 4.3 gives only "25-40% slower")
        return None
    if name in PAPER_ARM_MS and size in SIZES:
        return PAPER_ARM_MS[name][SIZES.index(size)]
    if size == (224, 224) and name in PAPER_ARM_224_IMAGES_PER_S:
        return 1000 / PAPER_ARM_224_IMAGES_PER_S[name]
    return None


@dataclass
class LatencyCell:
    """One measurement: a model spec (``name`` or ``name[key=value,...]`` or ``torchvision:name``)."""

    model: str
    height: int
    width: int
    threads: int
    runtime: str
    batch: int = 1
    warmup: int = 10
    repeats: int = 50
    median_ms: float | None = None
    p90_ms: float | None = None
    mflops: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"shufflenet_v1_g3_x1_0[shuffle=false]"`` -> (name, {"shuffle": False})."""
    if "[" not in spec:
        return spec, {}
    name, _, rest = spec.partition("[")
    if not rest.endswith("]"):
        raise ValueError(f"model spec {spec!r}: expected name[key=value,...]")
    args: dict[str, Any] = {}
    for item in filter(None, rest[:-1].split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"model spec {spec!r}: {item!r} is not key=value")
        lowered = value.lower()
        if lowered in ("true", "false"):
            args[key] = lowered == "true"
        else:
            try:
                args[key] = json.loads(value)
            except json.JSONDecodeError:
                args[key] = value
    return name, args


def build_benchmark_model(spec: str, size: tuple[int, int] = (224, 224)) -> torch.nn.Module:
    """A randomly initialised model in eval mode for ``size`` inputs: one of ours, or a torchvision anchor."""
    if spec.startswith(ANCHOR_PREFIX):
        import torchvision

        name = spec[len(ANCHOR_PREFIX) :]
        if not hasattr(torchvision.models, name):
            raise ValueError(f"torchvision has no model {name!r}")
        return exportable_pooling(getattr(torchvision.models, name)().eval(), size)
    name, args = parse_model_spec(spec)
    return create_model(name, **args).eval()


def exportable_pooling(model: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """Swap each adaptive average pool whose input is not a multiple of its output at ``size`` (AlexNet's
    6x6 pool at 480x640 and 720x1280, Zhang et al. 2018, Table 8) for a fixed pool of the same output
    shape: ONNX cannot express the adaptive one, and the pool's cost is negligible either way."""
    pools = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.AdaptiveAvgPool2d) and module.output_size not in (1, (1, 1))
    }
    if not pools:
        return model
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(_module, args) -> None:
            seen[name] = tuple(args[0].shape[-2:])

        return hook

    hooks = [module.register_forward_pre_hook(record(name)) for name, module in pools.items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    for hook in hooks:
        hook.remove()
    for name, module in pools.items():
        out = torch.nn.modules.utils._pair(module.output_size)
        if all(i % o == 0 for i, o in zip(seen[name], out, strict=True)):
            continue
        stride = tuple(i // o for i, o in zip(seen[name], out, strict=True))
        kernel = tuple(i - (o - 1) * s for i, o, s in zip(seen[name], out, stride, strict=True))
        model.set_submodule(name, torch.nn.AvgPool2d(kernel, stride))
    return model


def measure_cell(cell: LatencyCell) -> LatencyCell:
    """Run one cell in this process (the subprocess body)."""
    torch.manual_seed(0)
    model = build_benchmark_model(cell.model, (cell.height, cell.width))
    example = torch.randn(cell.batch, 3, cell.height, cell.width)
    cell.mflops = profile(model, input_size=(cell.height, cell.width)).mflops
    with tempfile.TemporaryDirectory() as folder:
        run = build_runner(cell.runtime, model, example, threads=cell.threads, workdir=Path(folder))
        batch = example.numpy()
        median, p90 = median_seconds(lambda: run(batch), warmup=cell.warmup, repeats=cell.repeats)
        if hasattr(run, "backend"):
            cell.extra["backend"] = run.backend
    cell.median_ms, cell.p90_ms = 1000 * median, 1000 * p90
    return cell


def run_cell_subprocess(cell: LatencyCell, timeout: float = 900) -> LatencyCell:
    """Measure ``cell`` in a fresh interpreter; failures come back as ``cell.error``."""
    command = [sys.executable, "-m", "shufflenet.bench.latency", json.dumps(asdict(cell))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        cell.error = f"timed out after {timeout:.0f} s"
        return cell
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        cell.error = last[:300]
        return cell
    return LatencyCell(**json.loads(lines[-1]))


ENGINE_FAMILIES = ("shufflenet_v1", "shufflenet_v2", "mobilenet_v1", "mobilenet_v2", "fenet", "shiftresnet")


def skip_reason(model: str, runtime: str) -> str | None:
    """Cells that do not apply: our deploy path only rewrites our own models; the engine runs our
    ShuffleNet V1/V2 (the Table 4 peers too), MobileNet V1/V2, FE-Net and ShiftResNet, at any thread
    count."""
    if runtime in ("ours", "eager_deploy") and model.startswith(ANCHOR_PREFIX):
        return "the deploy path rewrites our models only"
    if runtime in ("engine", "engine_int8") and not model.startswith(ENGINE_FAMILIES):
        return "the engine runs our ShuffleNet, MobileNet, FE-Net and ShiftResNet"
    return None


def latency_benchmark(
    models: Sequence[str],
    *,
    sizes: Iterable[tuple[int, int]] = ((224, 224),),
    threads: Iterable[int] = (1,),
    runtimes: Sequence[str] = RUNTIMES,
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 1,
    progress: bool = True,
) -> list[LatencyCell]:
    """Measure every (model, size, threads, runtime) cell, each in its own subprocess.

    With ``rounds > 1`` the whole list is measured that many times, in a different order each round, and
    each cell reports the median over rounds of its median (p90 likewise): drift in the machine's load
    then spreads over all cells instead of favouring whichever ran in a quiet moment."""
    unknown = [runtime for runtime in runtimes if runtime not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime {unknown[0]!r}; choose from {', '.join(RUNTIMES)}")
    cells = [
        LatencyCell(model, height, width, thread_count, runtime, batch, warmup, repeats)
        for model in models
        for height, width in sizes
        for thread_count in threads
        for runtime in runtimes
        if skip_reason(model, runtime) is None
    ]
    order = random.Random(0)
    measured: list[list[LatencyCell]] = [[] for _ in cells]
    bar = tqdm(total=len(cells) * rounds, desc="latency", unit="cell", disable=not progress)
    for round_index in range(rounds):
        positions = list(range(len(cells)))
        if round_index:
            order.shuffle(positions)
        for position in positions:
            cell = cells[position]
            bar.set_postfix_str(f"{cell.model} {cell.height}x{cell.width} t{cell.threads} {cell.runtime}")
            measured[position].append(run_cell_subprocess(dataclasses.replace(cell, extra={})))
            bar.update(1)
    bar.close()
    return [_combine(runs) for runs in measured]


def measure_paired(
    models: Sequence[str],
    *,
    size: tuple[int, int] = (224, 224),
    runtimes: Sequence[str] = RUNTIMES,
    passes: int = 300,
    warmup: int = 10,
    rewarm: int = 1,
    rewarm_seconds: float = 0.05,
    quiet: bool = True,
    threads: int = 1,
    batch: int = 1,
    progress: bool = True,
) -> list[LatencyCell]:
    """Every (model, runtime) cell at one input size, thread count and batch built in this process, then
    called in turn, one batch each, in a fresh shuffled order per pass: the machine's drift lands on every
    cell alike, so ratios between cells hold even where absolute times drift (unlike
    ``latency_benchmark``'s one subprocess per cell). Untimed calls of a cell precede each timed one, at
    least ``rewarm`` of them and for at least ``rewarm_seconds`` (steady state), once (``quiet``) the
    previous cell's spinning threads have stopped: see :func:`interleaved_seconds`. Each cell's output is
    checked against eager PyTorch first (its largest error relative to the largest logit in
    ``extra["error"]``); a cell that cannot be built or computes something else gets ``error`` and is not
    timed."""
    torch.set_num_threads(threads)
    runners, timed = [], []
    cells: list[LatencyCell] = []
    specs = tqdm(models, desc=f"building {size[0]}x{size[1]}", unit="model", disable=not progress)
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            eager = build_seeded(spec, size)
            mflops = profile(eager, input_size=size).mflops
            torch.manual_seed(0)
            example = torch.randn(batch, 3, *size)
            with torch.inference_mode():
                reference = eager(example).float().numpy()
            for runtime in runtimes:
                if skip_reason(spec, runtime) is not None:
                    continue
                cell = LatencyCell(
                    spec, *size, threads, runtime, batch=batch, warmup=warmup, repeats=passes, mflops=mflops
                )
                cells.append(cell)
                # A fresh copy per runtime (same seed, same weights): eager_cl converts its model to
                # channels_last in place, which must not reach the eager cell.
                workdir = Path(folder) / f"{len(cells)}"
                workdir.mkdir()
                try:
                    run = build_runner(
                        runtime, build_seeded(spec, size), example, threads=threads, workdir=workdir
                    )
                    output = run(example.numpy())
                except RuntimeUnavailable as error:
                    cell.error = str(error)
                    continue
                torch.set_num_threads(threads)  # build_runner sets it; kept explicit for the eager cells
                if output.shape == reference.shape:
                    cell.extra["error"] = relative_error(output, reference)
                # Reduced-precision defaults round every activation; a wrong network is off by O(1). int8 on
                # these random-weight nets is judged by accuracy on trained ones (docs/reduced-precision.md):
                # its error is recorded, only a wrong shape or a non-finite logit refuses the cell.
                if runtime in INT8_RUNTIMES:
                    valid = output.shape == reference.shape and bool(np.isfinite(output).all())
                else:
                    rounded = runtime in (*REDUCED_PRECISION, ENGINE_BF16)
                    valid = agrees(output, reference, 0.1 if rounded else 1e-3)
                if not valid:
                    error = cell.extra.get("error")
                    cell.error = (
                        f"wrong output: off by {error:.2g} of the largest logit"
                        if error is not None
                        else f"wrong output shape {output.shape}, expected {reference.shape}"
                    )
                    continue
                if hasattr(run, "backend"):
                    cell.extra["backend"] = run.backend
                runners.append((run, example.numpy()))
                timed.append(cell)
        calls = [lambda run=run, batch=batch: run(batch) for run, batch in runners]
        times = interleaved_seconds(
            calls,
            passes=passes,
            warmup=warmup,
            rewarm=rewarm,
            rewarm_seconds=rewarm_seconds,
            quiet=quiet,
            progress=progress,
        )
    for cell, samples in zip(timed, times, strict=True):
        cell.median_ms = 1000 * float(np.median(samples))
        cell.p90_ms = 1000 * float(np.percentile(samples, 90))
        cell.extra["pass_ms"] = [1000 * sample for sample in samples]  # in pass order: ratios pass by pass
    return cells


def build_seeded(spec: str, size: tuple[int, int]) -> torch.nn.Module:
    """The benchmark model ``spec`` with the weights of seed 0, in eval mode: every runtime of a paired
    run gets the same network."""
    torch.manual_seed(0)
    return build_benchmark_model(spec, size).eval()


def _combine(runs: list[LatencyCell]) -> LatencyCell:
    """One cell from its rounds: the median of the medians (and of the p90s); an error if any round failed."""
    failed = [run for run in runs if run.error]
    if failed:
        return failed[0]
    result = dataclasses.replace(runs[0])
    result.median_ms = statistics.median(run.median_ms for run in runs)
    result.p90_ms = statistics.median(run.p90_ms for run in runs)
    if len(runs) > 1:
        result.extra = {**result.extra, "rounds": [round(run.median_ms, 3) for run in runs]}
    return result


def _lookup(cells: Sequence[LatencyCell], model: str, runtime: str, size=(224, 224), threads: int = 1):
    for cell in cells:
        if (cell.model, cell.runtime, (cell.height, cell.width), cell.threads) == (
            model,
            runtime,
            size,
            threads,
        ):
            return cell.median_ms
    return None


OURS_FASTER_BELOW_1 = "below 1: ours is faster"
# Runtimes timed at their default precision, not fp32 (checked against eager with a looser tolerance).
REDUCED_PRECISION = ("openvino_default", "ncnn_default")
# The engine's own reduced precision other than int8: bfloat16 dot products (checked as the defaults above).
ENGINE_BF16 = "engine_bf16"
# The fp32 peers of the engine (Ma et al. 2018 and the mobile frameworks): ONNX Runtime, OpenVINO forced to
# fp32, ncnn forced to fp32, MNN at high precision.
FP32_PEERS = ("ort", "openvino", "ncnn", "mnn")
# The peers' int8: ONNX Runtime's static quantization, run by ONNX Runtime and by OpenVINO; ncnn's own.
PEER_INT8 = ("ort_int8", "openvino_int8", "ncnn_int8")


def pass_ratio_spread(engine: LatencyCell, peer: LatencyCell) -> str:
    """The middle half of ``engine``'s time over ``peer``'s pass by pass, as text (empty without the
    passes of one paired run): how far one run's ratio of medians can be trusted on a noisy machine."""
    ours, theirs = engine.extra.get("pass_ms"), peer.extra.get("pass_ms")
    if not ours or not theirs or len(ours) != len(theirs) or len(ours) < 4:
        return ""
    low, high = np.percentile(np.array(ours) / np.array(theirs), [25, 75])
    return f"; pass by pass, the middle half {low:.2f}-{high:.2f}"


def peer_ratios(cells: Sequence[LatencyCell]) -> list[tuple[str, float | None, str]]:
    """For each model, size and thread count measured: the engine's median over the fastest fp32 peer's
    (naming it, with the spread of the ratio pass by pass), and over each default-precision cell measured
    (OpenVINO's bf16, ncnn's fp16); the bf16 and int8 engines' over the fastest peer cell at any
    precision."""
    rows = []
    keys = dict.fromkeys((c.model, (c.height, c.width), c.threads, c.batch) for c in cells)
    for model, size, threads, batch in keys:
        timed = {
            c.runtime: c
            for c in cells
            if (c.model, (c.height, c.width), c.threads, c.batch) == (model, size, threads, batch)
            and c.median_ms is not None
        }
        group = {runtime: cell.median_ms for runtime, cell in timed.items()}
        engine = group.get("engine")
        where = f"{model}, {size[0]}x{size[1]}, {threads} thread{'s' if threads > 1 else ''}, batch {batch}"
        peers = {name: group[name] for name in FP32_PEERS if name in group}
        if engine is None or not peers:
            continue
        best = min(peers, key=peers.get)
        reading = OURS_FASTER_BELOW_1 + pass_ratio_spread(timed["engine"], timed[best])
        rows.append((f"{where}: engine / fastest fp32 peer ({best})", engine / peers[best], reading))
        for default in REDUCED_PRECISION:
            if default in group:
                rows.append(
                    (f"{where}: engine (fp32) / {default}", engine / group[default], OURS_FASTER_BELOW_1)
                )
        anyway = {
            name: group[name] for name in (*FP32_PEERS, *REDUCED_PRECISION, *PEER_INT8) if name in group
        }
        for precision in ("bf16", "int8"):
            if f"engine_{precision}" in group and anyway:
                best = min(anyway, key=anyway.get)
                rows.append(
                    (
                        f"{where}: engine ({precision}) / fastest peer at any precision ({best})",
                        group[f"engine_{precision}"] / anyway[best],
                        OURS_FASTER_BELOW_1,
                    )
                )
    return rows


OURS_FASTER_ABOVE_1 = "above 1: ours is faster"
ALEXNET_PAPER = "Zhang et al. 2018, section 4.5: ~13x on ARM"


def headline_ratios(cells: Sequence[LatencyCell]) -> list[tuple[str, float | None, str]]:
    """The headline comparisons that the measured cells allow: (what, ratio, how to read it).

    Each ratio is a plain quotient of two median latencies (or its inverse for speedups); the third item
    says which side of 1 favours whom, or the paper's figure where the paper gives one."""
    rows = []

    def fastest(model: str, runtimes: Sequence[str]) -> float | None:
        found = [_lookup(cells, model, runtime) for runtime in runtimes]
        found = [value for value in found if value is not None]
        return min(found) if found else None

    def ratio(numerator, denominator):
        return numerator / denominator if numerator and denominator else None

    v2 = "shufflenet_v2_x1_0[layout=torchvision]"
    rows.append(
        (
            "V2 1x: ours / faster of ORT, OpenVINO on torchvision's shufflenet_v2_x1_0 (224, 1 thread)",
            ratio(_lookup(cells, v2, "ours"), fastest("torchvision:shufflenet_v2_x1_0", ("ort", "openvino"))),
            OURS_FASTER_BELOW_1,
        )
    )
    v1 = "shufflenet_v1_g3_x1_0"
    rows.append(
        (
            "V1 g3 1x: ours / faster of ORT, OpenVINO on its plain export",
            ratio(_lookup(cells, v1, "ours"), fastest(v1, ("ort", "openvino"))),
            OURS_FASTER_BELOW_1,
        )
    )
    v1_unshuffled = "shufflenet_v1_g3_x1_0[shuffle=false]"
    for runtime in ("ours", "engine"):
        rows.append(
            (
                f"V1 g3 1x, {runtime}: with shuffle / shuffle=False (shuffle cost)",
                ratio(_lookup(cells, v1, runtime), _lookup(cells, v1_unshuffled, runtime)),
                "1 = the shuffle costs nothing",
            )
        )
    for runtime in ("openvino", "ort", "engine", "eager"):
        rows.append(
            (
                f"AlexNet / V1 0.5x g3, both on {runtime} (speedup)",
                ratio(
                    _lookup(cells, "torchvision:alexnet", runtime),
                    _lookup(cells, "shufflenet_v1_g3_x0_5", runtime),
                ),
                ALEXNET_PAPER,
            )
        )
    rows.append(
        (
            "AlexNet (fastest runtime) / V1 0.5x g3 on ours (speedup)",
            ratio(fastest("torchvision:alexnet", RUNTIMES), _lookup(cells, "shufflenet_v1_g3_x0_5", "ours")),
            ALEXNET_PAPER,
        )
    )
    torchvision_eager = _lookup(cells, "torchvision:shufflenet_v2_x1_0", "eager")
    rows.append(
        (
            "torchvision eager / our deploy graph in eager (channels_last) V2 1x, same weights (speedup)",
            ratio(torchvision_eager, _lookup(cells, v2, "eager_deploy")),
            OURS_FASTER_ABOVE_1,
        )
    )
    rows.append(
        (
            "torchvision eager / our trainable model in eager (channels_last) V2 1x, same weights (speedup)",
            ratio(torchvision_eager, _lookup(cells, v2, "eager_cl")),
            f"{OURS_FASTER_ABOVE_1}; BN and convs as torchvision's",
        )
    )
    # The grouped initialisation shifts 8/9 of the channels (a trained SSL shifts fewer); zero
    # initialisation shifts none: the two bound what a trained FE-Net can gain over its DW twin.
    for width in ("x1_0", "x1_375"):
        for ssl_spec, shifted in (
            (f"fenet_{width}", "grouped init"),
            (f"fenet_{width}[ssl_init=zero]", "no shifts"),
        ):
            for runtime in ("ours", "eager_cl", "openvino"):
                rows.append(
                    (
                        f"FE-Net {width} (DW) / FE-Net {width} (SSL, {shifted}), both on {runtime} (Table 6)",
                        ratio(
                            _lookup(cells, f"fenet_dw_{width}", runtime), _lookup(cells, ssl_spec, runtime)
                        ),
                        "Chen et al. 2019, Table 6: 1.35-1.4 on ARM",
                    )
                )
    return [row for row in rows if row[1] is not None]


def _label(model: str) -> str:
    """``shufflenet_v1_g3_x0_5[se=true]`` -> ``V1 g3 0.5x SE`` for the claims' wording."""
    name, args = parse_model_spec(model)
    if name.startswith("shufflenet_v1_g"):
        groups, _, scale = name.removeprefix("shufflenet_v1_g").partition("_x")
        label = f"V1 g{groups} {float(scale.replace('_', '.')):g}x"
    else:
        label = name.removeprefix(ANCHOR_PREFIX)
    return label + (" SE" if args.get("se") else "")


def speed_claims(cells: Sequence[LatencyCell]) -> list[tuple[str, float | None, str]]:
    """Zhang et al. 2018's claims on actual speed as ratios of measured cells, per input size and runtime:
    section 4.5 (every 4x MFLOPs costs ~2.6x the time; ~13x over AlexNet; g = 4 and 8 slower than g = 3 in
    practice), section 4.3 (SE units 25-40% slower on mobile) and Table 8 (MobileNet 1.0 beside 2x).
    Each row: (what, our ratio, the paper's figure). Rows whose cells were not measured are left out."""
    rows: list[tuple[str, float | None, str]] = []
    v1 = {scale: f"shufflenet_v1_g3_x{scale}" for scale in ("0_5", "1_0", "2_0")}
    sizes = list(dict.fromkeys((cell.height, cell.width) for cell in cells))
    runtimes = [runtime for runtime in RUNTIMES if any(cell.runtime == runtime for cell in cells)]

    def mflops(model: str, size) -> float | None:
        return next((c.mflops for c in cells if c.model == model and (c.height, c.width) == size), None)

    def quotient(numerator, denominator):
        return numerator / denominator if numerator and denominator else None

    for size in sizes:
        where = f"{size[0]}x{size[1]}"

        def arm(numerator: str, denominator: str, size=size) -> str:
            figure = quotient(paper_arm_ms(numerator, size), paper_arm_ms(denominator, size))
            return f"Table 8 on ARM: {figure:.2f}" if figure else "Table 8 has no ARM figure here"

        for runtime in runtimes:

            def time(model: str, runtime=runtime, size=size) -> float | None:
                return _lookup(cells, model, runtime, size)

            for small, large in ((v1["0_5"], v1["1_0"]), (v1["1_0"], v1["2_0"])):
                cost = quotient(mflops(large, size), mflops(small, size))
                rows.append(
                    (
                        f"{_label(large)} / {_label(small)} time, {runtime}, {where} "
                        f"({cost or 0:.1f}x the MFLOPs)",
                        quotient(time(large), time(small)),
                        f"section 4.5: ~2.6 per 4x MFLOPs; {arm(large, small)}",
                    )
                )
            rows.append(
                (
                    f"AlexNet / V1 g3 0.5x time, {runtime}, {where} (speedup)",
                    quotient(time("torchvision:alexnet"), time(v1["0_5"])),
                    f"section 4.5: ~13 (18 in MFLOPs); {arm('torchvision:alexnet', v1['0_5'])}",
                )
            )
            rows.append(
                (
                    f"MobileNet V1 1.0 / V1 g3 2x time, {runtime}, {where}",
                    quotient(time("mobilenet_v1_x1_0"), time(v1["2_0"])),
                    arm("mobilenet_v1_x1_0", v1["2_0"]),
                )
            )
            for model in v1.values():
                rows.append(
                    (
                        f"{_label(model)} SE / without SE time, {runtime}, {where}",
                        quotient(time(f"{model}[se=true]"), time(model)),
                        "section 4.3: 1.25-1.40 on mobile devices",
                    )
                )
                for groups in (4, 8):
                    other = model.replace("_g3_", f"_g{groups}_")
                    rows.append(
                        (
                            f"{_label(other)} / {_label(model)} time, {runtime}, {where}",
                            quotient(time(other), time(model)),
                            "section 4.5: g = 4, 8 'less efficient' than g = 3 in the authors' code",
                        )
                    )
    return [row for row in rows if row[1] is not None]


def latency_table(cells: Sequence[LatencyCell]) -> str:
    """Markdown: one row per (model, size, threads), one column per runtime (median ms), plus MFLOPs and
    the paper's ARM figure where published."""
    runtimes = [runtime for runtime in RUNTIMES if any(cell.runtime == runtime for cell in cells)]
    keys = list(dict.fromkeys((cell.model, cell.height, cell.width, cell.threads) for cell in cells))
    rows = []
    for model, height, width, thread_count in keys:
        group = {
            c.runtime: c
            for c in cells
            if (c.model, c.height, c.width, c.threads) == (model, height, width, thread_count)
        }
        mflops = next((c.mflops for c in group.values() if c.mflops), None)
        row = [model, f"{height}x{width}", str(thread_count), "" if mflops is None else f"{mflops:.0f}"]
        for runtime in runtimes:
            cell = group.get(runtime)
            if cell is None:
                row.append("")
            elif cell.error:
                row.append("error")
            else:
                backend = cell.extra.get("backend")
                row.append(f"{cell.median_ms:.2f} ({cell.p90_ms:.2f})" + (f" [{backend}]" if backend else ""))
        arm = paper_arm_ms(model, (height, width))
        row.append("" if arm is None else f"{arm:.1f}")
        rows.append(row)
    headers = ["model", "input", "threads", "MFLOPs", *[f"{r} ms" for r in runtimes], "paper ARM ms"]
    return markdown_table(headers, rows)


def latency_plot(
    cells: Sequence[LatencyCell], path: str | Path, *, size=(224, 224), threads: int = 1
) -> Path:
    """PNG: latency against MFLOPs per runtime at one size and thread count, the paper's ARM figures in a
    second panel (FLOPs are not speed: the points do not fall on one line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [c for c in cells if (c.height, c.width) == size and c.threads == threads and c.median_ms]
    figure, (ours_axis, paper_axis) = plt.subplots(1, 2, figsize=(13, 5.5))
    for runtime in RUNTIMES:
        points = [c for c in chosen if c.runtime == runtime]
        if points:
            ours_axis.scatter([c.mflops for c in points], [c.median_ms for c in points], label=runtime, s=28)
    for c in chosen:
        if c.runtime == "openvino":
            ours_axis.annotate(c.model.replace(ANCHOR_PREFIX, "tv:"), (c.mflops, c.median_ms), fontsize=7)
    ours_axis.set(xscale="log", yscale="log", xlabel="MFLOPs (multiply-adds)", ylabel="median latency (ms)")
    ours_axis.set_title(f"this machine, {size[0]}x{size[1]}, batch 1, {threads} thread(s)")
    ours_axis.legend(fontsize=8)
    ours_axis.grid(True, which="both", alpha=0.3)
    for model in dict.fromkeys(c.model for c in chosen):
        arm = paper_arm_ms(model, size)
        mflops = next((c.mflops for c in chosen if c.model == model), None)
        if arm and mflops:
            paper_axis.scatter(mflops, arm, color="tab:gray")
            paper_axis.annotate(model.replace(ANCHOR_PREFIX, "tv:"), (mflops, arm), fontsize=7)
    paper_axis.set(xscale="log", yscale="log", xlabel="MFLOPs", ylabel="latency (ms)")
    paper_axis.set_title("papers' ARM figures (V1 Table 8; V2 Table 8), 1 thread")
    paper_axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Subprocess entry point: measure one JSON-encoded cell, print it back as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    cell = LatencyCell(**json.loads(argv[0]))
    print(json.dumps(asdict(measure_cell(cell))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
