"""Where the engine's time goes: each planned operation timed over many runs, summed by kind (1x1 convs,
depthwise convs, pools, copies, ...), for several models side by side, in interleaved rounds (one
round of every model, then the next) so the machine's drift lands on all of them alike.

    python benchmarks/engine_profile.py fenet_dw_x1_0 fenet_x1_0 [--size 224] [--threads 1] \\
        [--rounds 20] [--output benchmarks/results/<cpu>/engine-profile-fenet]

Made for Chen et al. 2019's Table 6 claim (FE-Net with sparse shifts 1.35-1.4x faster than with depthwise
convs): in the engine a shift is addressing, so FE-Net's time is its 1x1 convs, whatever its shift
pattern; FE-Net (DW) spends the difference in its depthwise convs.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from shufflenet import create_model
from shufflenet._table import markdown_table
from shufflenet.bench.report import save_record
from shufflenet.deploy.engine import Engine, engine_isa, load_library, plan_engine


def kind_of(description: str) -> str:
    words = description.split()
    if words[0] == "fused":
        return "fused 1x1 + depthwise (+ 1x1) by rows"
    if words[0] == "pointwise":
        return "1x1 conv (GEMM)" if " 1 px" not in description else "classifier / SE convs"
    return {"depthwise": "depthwise conv", "pad": "input padding"}.get(words[0], " ".join(words[:2]))


def operation_table(name: str, engine: Engine, seconds: dict[int, list[float]]) -> str:
    """Every operation of one model that takes time (the operations a fused run stands for take none of
    their own): median ms and GMAC/s."""
    rows = []
    for index, samples in seconds.items():
        ms = 1e3 * float(np.median(samples))
        if ms < 1e-4:
            continue
        macs = engine.multiply_adds(index)
        rate = f"{macs / ms * 1e-6:.1f}" if macs else ""
        rows.append([str(index), engine.describe(index), f"{ms:.3f}", rate])
    return f"{name}, per operation:\n\n" + markdown_table(["#", "operation", "ms", "GMAC/s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="registered model names")
    parser.add_argument("--size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads (default 1)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--repeats", type=int, default=10, help="runs per model per round (default 10)")
    parser.add_argument(
        "--unfused",
        action="store_true",
        help="time every operation on its own: no 1x1 + depthwise runs fused row by row (as the engine "
        "runs big maps), so the time splits by kind",
    )
    parser.add_argument(
        "--per-op",
        action="store_true",
        help="also list every operation of each model with its time and GMAC/s (the FMA ceiling of this "
        "CPU: benchmarks/cpu_peak.py)",
    )
    parser.add_argument("--output", type=Path, help="write engine_profile.md/.csv/.json into this folder")
    args = parser.parse_args(argv)
    size = (args.size, args.size)
    engines, batches = {}, {}
    library = load_library()
    for name in args.models:
        torch.manual_seed(0)
        plan = plan_engine(
            create_model(name).eval(),
            size,
            lanes=library.shufflenet_engine_lanes(),
            fuse_map_bytes=1 << 62 if args.unfused else None,
        )
        engines[name] = Engine(library, plan, threads=args.threads)
        batches[name] = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    totals: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in args.models}
    per_op: dict[str, dict[int, list[float]]] = {name: defaultdict(list) for name in args.models}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            by_kind: dict[str, float] = defaultdict(float)
            for index, (description, seconds) in enumerate(
                engine.profile(batches[name], repeats=args.repeats)
            ):
                by_kind[kind_of(description)] += seconds
                per_op[name][index].append(seconds)
            for kind, seconds in by_kind.items():
                totals[name][kind].append(seconds)
    kinds = sorted({kind for per in totals.values() for kind in per})
    medians = {
        name: {kind: 1e3 * float(np.median(per[kind])) for kind in per} for name, per in totals.items()
    }
    sums = {name: sum(medians[name].values()) for name in args.models}
    rows = [
        [f"{kind} ms", *(f"{medians[name].get(kind, 0.0):.2f}" for name in args.models)] for kind in kinds
    ]
    rows.append(["**total ms**", *(f"**{sums[name]:.2f}**" for name in args.models)])
    table = markdown_table(["operation", *args.models], rows)
    first = args.models[0]
    ratios = "\n".join(f"- {first} / {name}: {sums[first] / sums[name]:.2f}" for name in args.models[1:])
    body = (
        f"Engine {engine_isa()}, {args.threads} thread(s), {args.size}x{args.size}, batch 1"
        f"{', every operation on its own (--unfused)' if args.unfused else ''}: medians of "
        f"{args.rounds} interleaved rounds of {args.repeats} runs.\n\n{table}\n\n{ratios}\n"
    )
    if args.per_op:
        body += "".join(f"\n{operation_table(name, engines[name], per_op[name])}\n" for name in args.models)
    print(body)
    if args.output:
        records = [
            {"model": name, **{kind: medians[name].get(kind, 0.0) for kind in kinds}, "total": sums[name]}
            for name in args.models
        ]
        save_record(args.output, "engine_profile", "Where the engine's time goes", body, records, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
