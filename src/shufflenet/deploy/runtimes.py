"""The runtimes a user would pick to run a network on a CPU (or GPU), behind one interface: build from a
PyTorch module, then call with a NumPy batch. Used by export verification and the latency benchmark.

``eager``/``eager_cl``: PyTorch eager (NCHW / channels_last); ``eager_deploy``: our deploy graph
(:func:`shufflenet.deploy.optimize`, no channel padding) in PyTorch eager, channels_last, where its 1x1
convs are matrix products on NHWC rows (:mod:`shufflenet.deploy.eager`); ``compile``: torch.compile
(inductor, with freezing for inference); ``ort``: ONNX Runtime on the plain ONNX export; ``openvino``:
OpenVINO on the same export, fp32 (``openvino_default``: at its default precision, bf16 on CPUs with
AVX512_BF16); ``ncnn`` (fp32) and ``ncnn_default`` (its fp16 defaults) through pnnx, and ``mnn`` on the
ONNX export (:mod:`shufflenet.deploy.peers`); ``ort_int8`` and ``openvino_int8``: ONNX Runtime's static
int8 quantization (QDQ) run by each; ``ncnn_int8``: ncnn's own int8 (ncnn2table, ncnn2int8);
``engine``: our C engine alone (``engine_bf16``, ``engine_int8``: in bf16, int8)
(:mod:`shufflenet.deploy.engine`: ShuffleNet V1/V2, MobileNet V1/V2, FE-Net, ShiftResNet); ``ours``: our
deploy path, the fastest here of that engine
and our deploy graph (:func:`shufflenet.deploy.optimize`) on OpenVINO, ONNX Runtime or PyTorch, with the
ShuffleNet V1 shuffle form chosen by timing that backend itself.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shufflenet._system import usable_cores
from shufflenet.deploy.engine import build_engine
from shufflenet.deploy.errors import RuntimeUnavailable, require_package
from shufflenet.deploy.optimize import optimize
from shufflenet.deploy.peers import mnn_runner, ncnn_int8_runner, ncnn_runner
from shufflenet.deploy.timing import eager_timer, interleaved_seconds, median_seconds

RUNTIMES = (
    "eager",
    "eager_cl",
    "eager_deploy",
    "compile",
    "ort",
    "openvino",
    "openvino_default",
    "ncnn",
    "ncnn_default",
    "mnn",
    "engine",
    "ours",
    "engine_bf16",
    "engine_int8",
    "ort_int8",
    "openvino_int8",
    "ncnn_int8",
)
# int8 cells: our engine's (shufflenet.deploy.quantize), ONNX Runtime's static quantization (QDQ,
# per-channel weights) run by ONNX Runtime and by OpenVINO (at its default precision for what stays float),
# and ncnn's own post-training quantization run by ncnn (likewise at its defaults for what stays float).
INT8_RUNTIMES = ("engine_int8", "ort_int8", "openvino_int8", "ncnn_int8")
Runner = Callable[[np.ndarray], np.ndarray]


def export_onnx(
    model: nn.Module, path: str | Path, example: torch.Tensor, *, dynamic_batch: bool = True
) -> Path:
    """Write ``model`` as ONNX (opset 17, input ``input``, output ``output``) through the TorchScript
    exporter, which keeps the graph op for op (no decompositions), so shuffles and slices stay visible."""
    require_package("onnx", "onnx")
    path = Path(path)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks in forward() are Python branches the tracer can only freeze; it warns about each.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def quantize_onnx_int8(
    onnx_path: Path, calibration: Sequence[np.ndarray], folder: Path, *, unsigned_activations: bool = False
) -> Path:
    """ONNX Runtime static quantization (QDQ, per-channel int8 weights; int8 activations, or uint8 with
    ``unsigned_activations``: ONNX Runtime's and OpenVINO's fast path on x86) calibrated on
    ``calibration``."""
    require_package("onnxruntime", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    prepared = folder / "prepared.onnx"
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    output = folder / "model.int8.onnx"
    quantize_static(
        str(prepared),
        str(output),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if unsigned_activations else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return output


def benchmark_calibration(example: torch.Tensor, batches: int = 4) -> list[np.ndarray]:
    """What the int8 cells of a benchmark calibrate on: ``example`` and a few seeded random batches like
    it (the benchmark nets have random weights; int8 accuracy is measured on trained nets)."""
    generator = torch.Generator().manual_seed(1)
    extra = [torch.randn(example.shape, generator=generator).numpy() for _ in range(batches)]
    return [example.numpy(), *extra]


def ort_session(onnx_path: str | Path, threads: int):
    """An ONNX Runtime CPU session with every graph optimization and ``threads`` intra-op threads."""
    ort = require_package("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def openvino_compiled(
    model_path: str | Path,
    threads: int,
    device: str = "CPU",
    extra_config: dict | None = None,
    *,
    precision: str | None = "f32",
):
    """An OpenVINO compiled model: latency hint, ``precision`` (default f32; None keeps OpenVINO's
    default, bf16 on CPUs with AVX512_BF16 or AMX), ``threads`` threads without pinning them to cores
    (other processes share these machines), plus any ``extra_config`` (e.g. ``{"PERF_COUNT": True}``
    for per-node profiles)."""
    ov = require_package("openvino", "openvino")
    config = {"PERFORMANCE_HINT": "LATENCY", **(extra_config or {})}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if device == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
        config["ENABLE_CPU_PINNING"] = False
    return ov.Core().compile_model(str(model_path), device, config)


def ort_runner(onnx_path: Path, threads: int) -> Runner:
    session = ort_session(onnx_path, threads)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def openvino_runner(model_path: Path, threads: int, *, precision: str | None = "f32") -> Runner:
    request = openvino_compiled(model_path, threads, precision=precision).create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: batch}, share_inputs=True, share_outputs=True)[0].copy()

    return run


def _torch_runner(module: nn.Module, channels_last: bool) -> Runner:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = module.eval().to(memory_format=memory_format)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=memory_format)
            return module(x).numpy()

    return run


ONNX_BACKENDS = {"openvino": openvino_runner, "ort": ort_runner}


def onnx_timer(backend: str = "openvino", threads: int = 1, repeats: int = 30):
    """A timer for :func:`shufflenet.deploy.optimize`'s ``v1_shuffle="auto"``: median seconds of the
    module exported to ONNX and run by ``backend`` (``"openvino"`` or ``"ort"``)."""

    def measure(module: nn.Module, example: torch.Tensor) -> float:
        with tempfile.TemporaryDirectory() as folder:
            path = export_onnx(module, Path(folder) / "piece.onnx", example, dynamic_batch=False)
            run = ONNX_BACKENDS[backend](path, threads)
            return median_seconds(lambda: run(example.numpy()), warmup=5, repeats=repeats)[0]

    return measure


def _deploy_runner(model: nn.Module, example: torch.Tensor, threads: int, workdir: Path) -> Runner:
    """Our deploy path: our C engine (ShuffleNet, MobileNet, FE-Net, ShiftResNet) or the optimized
    graph on whichever of OpenVINO, ONNX Runtime and PyTorch (eager, channels_last) runs it fastest here,
    each with the V1 shuffle form timed on that backend; ``runner.backend`` names the one kept. PyTorch is a
    candidate for the shift nets: only it runs their shifts in place, moving just the shifted channels,
    where an exported graph must concatenate."""
    candidates: dict[str, Callable[[], Runner]] = {}
    candidates["engine"] = lambda: _engine_runner(model, example, threads)
    for backend in ONNX_BACKENDS:
        candidates[backend] = lambda backend=backend: ONNX_BACKENDS[backend](
            export_onnx(
                optimize(model, v1_shuffle="auto", example_input=example, timer=onnx_timer(backend, threads)),
                workdir / f"ours-{backend}.onnx",
                example,
            ),
            threads,
        )
    candidates["torch"] = lambda: _eager_deploy_runner(model, example)
    runners: dict[str, Runner] = {}
    with torch.inference_mode():
        reference = model(example).float().numpy()
    for backend, build in candidates.items():
        try:
            run = build()
        except RuntimeUnavailable:  # the engine: another CPU, no compiler, or a network it does not run
            continue
        # A backend is kept only if it computes the model: OpenVINO 2026.4 gets the shift nets wrong.
        if agrees(run(example.numpy()), reference):
            runners[backend] = run
    best = fastest(runners, example.numpy())
    run = runners[best]
    run.backend = best
    return run


def relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    """The largest difference between ``output`` and ``reference`` (same shape), as a fraction of the
    reference's largest magnitude."""
    scale = max(float(np.abs(reference).max()), 1e-6)
    return float(np.abs(output - reference).max()) / scale


def agrees(output: np.ndarray, reference: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether ``output`` equals ``reference`` within ``tolerance`` of its largest magnitude (fp32
    runtimes differ from eager by ~1e-5 of it; a wrong network by far more)."""
    return output.shape == reference.shape and relative_error(output, reference) <= tolerance


def fastest(runners: dict[str, Runner], batch: np.ndarray, *, passes: int = 30) -> str:
    """The name of the runner with the lowest median time on ``batch``, timed in interleaved passes
    (:func:`interleaved_seconds`) so that the machine's drift lands on all of them alike rather than
    deciding the choice."""
    if len(runners) == 1:
        return next(iter(runners))
    names = list(runners)
    times = interleaved_seconds(
        [lambda run=runners[name]: run(batch) for name in names], passes=passes, warmup=3
    )
    return min(zip(names, times, strict=True), key=lambda pair: float(np.median(pair[1])))[0]


def _eager_deploy_runner(model: nn.Module, example: torch.Tensor) -> Runner:
    """Our deploy graph in PyTorch eager, channels_last; no channel padding (it only helps ONNX Runtime),
    the ShuffleNet V1 shuffle form timed in eager."""
    deployed = optimize(
        model, v1_shuffle="auto", example_input=example, timer=eager_timer, channel_multiple=1
    )
    return _torch_runner(deployed, channels_last=True)


def _engine_runner(model: nn.Module, example: torch.Tensor, threads: int) -> Runner:
    return build_engine(model, tuple(example.shape[-2:]), threads=threads)


def build_runner(
    runtime: str, model: nn.Module, example: torch.Tensor, *, threads: int, workdir: Path
) -> Runner:
    """Prepare ``model`` for ``runtime`` (export, compile) and return a NumPy-in, NumPy-out callable.

    ``threads`` applies to every runtime. For the PyTorch ones it is PyTorch's process-wide thread count,
    which this sets and leaves set: the callable returned runs later, and must run at that count. To get
    the caller's count back afterwards, build and run inside :func:`shufflenet._system.torch_threads`."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    torch.set_num_threads(threads)  # not restored on return: see the docstring
    model = model.eval()
    if runtime in ("eager", "eager_cl"):
        return _torch_runner(model, channels_last=runtime == "eager_cl")
    if runtime == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold the weights: the inference setting
        return _torch_runner(torch.compile(model), channels_last=True)
    if runtime == "ours":
        return _deploy_runner(model, example, threads, workdir)
    if runtime == "eager_deploy":
        return _eager_deploy_runner(model, example)
    if runtime == "engine":
        return _engine_runner(model, example, threads)
    if runtime == "engine_bf16":
        return build_engine(model, tuple(example.shape[-2:]), threads=threads, precision="bf16")
    if runtime == "engine_int8":
        size = tuple(example.shape[-2:])
        calibration = benchmark_calibration(example)
        return build_engine(model, size, threads=threads, precision="int8", calibration=calibration)
    if runtime in ("ncnn", "ncnn_default"):
        return ncnn_runner(model, example, threads, workdir, defaults=runtime == "ncnn_default")
    if runtime == "ncnn_int8":
        return ncnn_int8_runner(model, example, benchmark_calibration(example), workdir, threads)
    path = export_onnx(model, workdir / "plain.onnx", example)
    if runtime == "mnn":
        return mnn_runner(path, threads)
    if runtime == "openvino_default":
        return openvino_runner(path, threads, precision=None)
    if runtime in ("ort_int8", "openvino_int8"):
        quantized = quantize_onnx_int8(
            path, benchmark_calibration(example), workdir, unsigned_activations=True
        )
        if runtime == "ort_int8":
            return ort_runner(quantized, threads)
        return openvino_runner(quantized, threads, precision=None)
    return ort_runner(path, threads) if runtime == "ort" else openvino_runner(path, threads)


def default_threads() -> int:
    """The thread count a runtime gets unless told otherwise: all cores this process may use."""
    return usable_cores()
