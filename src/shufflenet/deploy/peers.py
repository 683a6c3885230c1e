"""The mobile inference frameworks users pick for these nets, behind the runtimes' interface (NumPy batch
in, logits out): ncnn (Tencent) through pnnx, which converts a TorchScript trace, and MNN (Alibaba) through
its ONNX converter. Both are optional (``pip install 'shufflenet[peers]'``).

ncnn is timed in three cells: ``ncnn`` forces fp32 (pnnx's fp16=0 and every fp16/bf16 storage and
arithmetic option off), ``ncnn_default`` keeps its defaults (pnnx stores the weights in fp16 and ncnn
computes in fp16 where the CPU allows). ``ncnn_int8`` is ncnn's own post-training int8: its ncnn2table
calibrates the fp32 conversion (ACIQ ranges), its ncnn2int8 rewrites it (grouped convolutions that are
not depthwise kept fp32: see :func:`ncnn_int8_runner`), and ncnn runs the int8 files with its defaults for
what stays float. The PyPI wheel has neither tool: benchmarks/build_ncnn_quantize_tools.sh builds them from
ncnn's source. MNN runs at its "high" precision, fp32. MNN's converter is called through its Python
module's native entry, never its ``mnnconvert`` console script, which installs a logging SDK and sends
usage data out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shufflenet.deploy.errors import RuntimeUnavailable, require_package

Runner = Callable[[np.ndarray], np.ndarray]

# ncnn options that store or compute in reduced precision; all off for the fp32 cell.
NCNN_REDUCED_PRECISION = (
    "use_fp16_packed",
    "use_fp16_storage",
    "use_fp16_arithmetic",
    "use_bf16_storage",
    "use_bf16_packed",
)
# ncnn's int8 switches, all on by default; set again for the int8 cell so that it is int8 by construction.
NCNN_INT8_OPTIONS = ("use_int8_inference", "use_int8_packed", "use_int8_storage", "use_int8_arithmetic")

# ncnn's post-training quantization tools: found in $NCNN_TOOLS (a folder, or its bin/) when it is set,
# else on PATH, else where the build script puts them by default (.cache/ncnn-tools in the repository).
NCNN_TOOLS_ENV = "NCNN_TOOLS"
NCNN_QUANTIZE_TOOLS = ("ncnn2table", "ncnn2int8")
NCNN_TOOLS_SCRIPT = "benchmarks/build_ncnn_quantize_tools.sh"
DEFAULT_NCNN_TOOLS = Path(__file__).resolve().parents[3] / ".cache" / "ncnn-tools"
NCNN_CALIBRATION_METHODS = ("kl", "aciq", "eq")


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence native code that prints to the process's stdout (MNN's converter and CPU banner)."""
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _pnnx_to_ncnn(model: nn.Module, example: torch.Tensor, workdir: Path, *, fp16: bool) -> tuple[Path, Path]:
    """``model`` traced (TorchScript) and converted by pnnx into ncnn's param and bin files."""
    pnnx = require_package("pnnx", "pnnx")
    workdir.mkdir(parents=True, exist_ok=True)
    stem = workdir / ("ncnn-fp16" if fp16 else "ncnn-fp32")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), (example[:1],), check_trace=False)
    traced.save(str(stem.with_suffix(".pt")))
    shape = ",".join(str(d) for d in example[:1].shape)
    outputs = {
        "ncnnparam": f"{stem}.ncnn.param",
        "ncnnbin": f"{stem}.ncnn.bin",
        "pnnxparam": f"{stem}.pnnx.param",
        "pnnxbin": f"{stem}.pnnx.bin",
    }
    command = [
        pnnx.EXEC_PATH,
        str(stem.with_suffix(".pt")),
        f"inputshape=[{shape}]f32",
        "device=cpu",
        f"fp16={int(fp16)}",
        *(f"{kind}={path}" for kind, path in outputs.items()),
        f"ncnnpy={stem}_ncnn.py",
        f"pnnxpy={stem}_pnnx.py",
        f"pnnxonnx={stem}.pnnx.onnx",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not Path(outputs["ncnnparam"]).is_file():
        raise RuntimeUnavailable(f"pnnx could not convert the model: {result.stderr.strip()[-300:]}")
    return Path(outputs["ncnnparam"]), Path(outputs["ncnnbin"])


def ncnn_runner(
    model: nn.Module, example: torch.Tensor, threads: int, workdir: Path, *, defaults: bool = False
) -> Runner:
    """ncnn on ``model`` converted by pnnx: fp32 throughout, or with ``defaults`` ncnn's and pnnx's
    defaults (fp16 weights; fp16 arithmetic where the CPU has it). ``threads`` threads."""
    ncnn = require_package("ncnn", "ncnn")
    param, weights = _pnnx_to_ncnn(model, example, workdir, fp16=defaults)
    net = ncnn.Net()
    net.opt.num_threads = threads
    if not defaults:
        for option in NCNN_REDUCED_PRECISION:
            if hasattr(net.opt, option):
                setattr(net.opt, option, False)
    return _ncnn_net_runner(ncnn, net, param, weights)


def _ncnn_net_runner(ncnn, net, param: Path, weights: Path) -> Runner:
    """``net`` (options set) loaded from ``param`` and ``weights`` (pnnx's names: ``in0``, ``out0``), as a
    runner."""
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise RuntimeUnavailable(f"ncnn could not load {param.name}")

    def run(batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in np.ascontiguousarray(batch, dtype=np.float32):  # ncnn runs one image at a time
            extractor = net.create_extractor()
            extractor.input("in0", ncnn.Mat(image))
            status, logits = extractor.extract("out0")
            if status != 0:
                raise RuntimeError(f"ncnn failed on an image (status {status})")
            rows.append(np.array(logits).reshape(-1))
        return np.stack(rows)

    run.keepalive = net  # the network lives as long as the runner
    return run


def find_ncnn_quantize_tools() -> dict[str, Path]:
    """ncnn2table and ncnn2int8 by name: in ``$NCNN_TOOLS`` (the folder or its ``bin/``) when that is set,
    else on PATH, else in :data:`DEFAULT_NCNN_TOOLS`. :class:`RuntimeUnavailable`, in one line naming the
    build script, when either is missing."""
    explicit = os.environ.get(NCNN_TOOLS_ENV)
    if explicit:
        folders = [Path(explicit), Path(explicit) / "bin"]
        where = f"${NCNN_TOOLS_ENV} ({explicit})"
    else:
        path = os.environ.get("PATH", "")
        folders = [*(Path(entry) for entry in path.split(os.pathsep) if entry)]
        folders += [DEFAULT_NCNN_TOOLS / "bin", DEFAULT_NCNN_TOOLS]
        where = f"PATH or {DEFAULT_NCNN_TOOLS}"
    search = os.pathsep.join(str(folder) for folder in folders)
    found = {name: shutil.which(name, path=search) for name in NCNN_QUANTIZE_TOOLS}
    missing = [name for name, tool in found.items() if tool is None]
    if missing:
        raise RuntimeUnavailable(
            f"ncnn's int8 tools ({', '.join(missing)}) are not in {where}: the ncnn wheel lacks them; "
            f"build them with {NCNN_TOOLS_SCRIPT} NCNN_SOURCE (or set ${NCNN_TOOLS_ENV})"
        )
    return {name: Path(tool) for name, tool in found.items()}


def write_ncnn_calibration(calibration: Sequence[np.ndarray], folder: Path) -> tuple[str, tuple[int, ...]]:
    """Every image of ``calibration`` (NCHW float batches, the model's input as it is, normalized) saved as
    a float32 CHW ``.npy`` under ``folder/calibration``, and listed, one a line, in
    ``folder/calibration.txt``, paths relative to ``folder`` (ncnn2table runs there: its list lines are
    read up to the first blank and 255 characters, and a comma would split its list argument). ncnn2table
    reads ``.npy`` files (``type=1``) unchanged, with no mean, norm or pixel conversion: it calibrates on
    exactly the float input. Returns the list file's name and the image shape (C, H, W)."""
    images = folder / "calibration"
    images.mkdir(parents=True, exist_ok=True)
    names, shapes = [], set()
    for batch in calibration:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ValueError(f"calibration batches must be NCHW, got shape {batch.shape}")
        for image in batch:
            name = f"calibration/{len(names):05d}.npy"
            np.save(folder / name, np.ascontiguousarray(image))
            names.append(name)
            shapes.add(image.shape)
    if len(shapes) != 1:
        raise ValueError(f"calibration images must share one shape, got {sorted(shapes)}")
    (folder / "calibration.txt").write_text("".join(f"{name}\n" for name in names))
    return "calibration.txt", shapes.pop()


def ncnn2table_command(
    tool: Path,
    param: str,
    weights: str,
    images: str,
    table: str,
    shape: Sequence[int],
    *,
    threads: int = 1,
    method: str = "kl",
) -> list[str]:
    """ncnn2table's command line: ``param``/``weights`` calibrated on the ``.npy`` images listed in
    ``images`` (``type=1``), each ``shape`` (C, H, W; ncnn2table takes it as [w,h,c]), by ``method``
    (``kl``: ncnn's default, ``aciq`` or ``eq``), into ``table``."""
    if method not in NCNN_CALIBRATION_METHODS:
        raise ValueError(
            f"unknown ncnn calibration method {method!r}; choose from {NCNN_CALIBRATION_METHODS}"
        )
    dims = ",".join(str(int(d)) for d in reversed(tuple(shape)))
    options = [f"shape=[{dims}]", f"thread={threads}", f"method={method}", "type=1"]
    return [str(tool), param, weights, images, table, *options]


def _run_tool(command: list[str], folder: Path, output: Path) -> None:
    """Run one of ncnn's tools in ``folder``, quiet; :class:`RuntimeUnavailable` with the end of its
    error output if it fails or leaves ``output`` missing or empty."""
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    target = folder / output
    if result.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])[-300:]
        name = Path(command[0]).name
        raise RuntimeUnavailable(f"{name} failed (exit {result.returncode}): {tail or 'no output'}")


def grouped_convolutions(param: Path) -> list[str]:
    """The layers of an ncnn param file that are grouped convolutions but not depthwise ones:
    ``ConvolutionDepthWise`` with more than one input or output channel per group."""
    names = []
    for line in param.read_text().splitlines()[2:]:
        fields = line.split()
        if len(fields) < 4 or fields[0] != "ConvolutionDepthWise":
            continue
        bottoms, tops = int(fields[2]), int(fields[3])
        values = dict(field.split("=", 1) for field in fields[4 + bottoms + tops :] if "=" in field)
        outputs, groups = int(values.get("0", 0)), int(values.get("7", 1))
        kernel_w = int(values.get("1", 0))
        kernel_h = int(values.get("11", kernel_w))
        inputs = int(values.get("6", 0)) // max(1, outputs // max(groups, 1) * kernel_w * kernel_h)
        if outputs != groups or inputs != groups:
            names.append(fields[1])
    return names


def keep_float(table: Path, layers: Sequence[str]) -> None:
    """Comment out the rows of ``layers`` (input scale, weight scales) in ncnn2table's ``table``: ncnn2int8
    then leaves them in fp32 (ncnn's mixed precision, docs/how-to-use-and-FAQ/quantized-int8-inference.md
    in its source)."""
    keys = {*layers, *(f"{layer}_param_0" for layer in layers)}
    rows = table.read_text().splitlines()
    table.write_text("".join(f"#{row}\n" if row.split(" ", 1)[0] in keys else f"{row}\n" for row in rows))


def ncnn_int8_runner(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Sequence[np.ndarray],
    workdir: Path,
    threads: int,
    *,
    method: str = "aciq",
    float_grouped: bool = True,
) -> Runner:
    """ncnn in int8 through ncnn's own post-training quantization: pnnx's fp32 conversion of ``model``,
    calibrated by ncnn2table (``method``, on the float ``calibration`` batches) and rewritten by ncnn2int8,
    run with ncnn's int8 switches on and its defaults for what stays float, ``threads`` threads.

    ``aciq``, not ncnn's default ``kl``: on trained Fashion-MNIST ShuffleNets, kl's ranges changed many
    more top-1 decisions against fp32 ncnn than aciq's (docs/reduced-precision.md). With
    ``float_grouped``, grouped convolutions that are not depthwise (ShuffleNet V1's grouped 1x1s) stay
    fp32: ncnn 1.0.20261020's x86 int8 path in its packed layout computes them wrongly on a Zen 4 (AVX-512
    VNNI; a trained V1 g3's int8 predictions were at chance); the same int8 files are right with the
    packed layout off, and on
    ncnn built from source at the SSE2 baseline."""
    ncnn = require_package("ncnn", "ncnn")
    tools = find_ncnn_quantize_tools()
    param, weights = _pnnx_to_ncnn(model, example, workdir, fp16=False)
    images, shape = write_ncnn_calibration(calibration, workdir)
    table = "ncnn-int8.table"
    command = ncnn2table_command(
        tools["ncnn2table"], param.name, weights.name, images, table, shape, threads=threads, method=method
    )
    _run_tool(command, workdir, Path(table))
    if float_grouped:
        keep_float(workdir / table, grouped_convolutions(param))
    int8_param, int8_weights = workdir / "ncnn-int8.param", workdir / "ncnn-int8.bin"
    command = [str(tools["ncnn2int8"]), param.name, weights.name, int8_param.name, int8_weights.name, table]
    _run_tool(command, workdir, Path(int8_weights.name))
    net = ncnn.Net()
    net.opt.num_threads = threads
    for option in NCNN_INT8_OPTIONS:
        if hasattr(net.opt, option):
            setattr(net.opt, option, True)
    return _ncnn_net_runner(ncnn, net, int8_param, int8_weights)


def mnn_runner(onnx_path: Path, threads: int) -> Runner:
    """MNN on the ONNX export (input ``input``, output ``output``), fp32 ("high" precision), ``threads``
    threads."""
    require_package("MNN", "mnn")
    import _tools  # MNN's native converter, shipped with the mnn wheel
    import MNN.expr as expr
    import MNN.nn as mnn_nn

    model_path = onnx_path.with_suffix(".mnn")
    with _quiet_stdout():
        _tools.mnnconvert(
            ["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(model_path),
             "--bizCode", "shufflenet"]
        )  # fmt: skip
    if not model_path.is_file():
        raise RuntimeUnavailable(f"MNN could not convert {onnx_path.name}")
    with _quiet_stdout():
        runtime = mnn_nn.create_runtime_manager(
            ({"backend": "CPU", "precision": "high", "numThread": threads},)
        )
        module = mnn_nn.load_module_from_file(str(model_path), ["input"], ["output"], runtime_manager=runtime)

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        output = module.forward(expr.const(batch, list(batch.shape), expr.NCHW))
        return np.array(expr.convert(output, expr.NCHW).read()).reshape(batch.shape[0], -1)

    run.keepalive = (runtime, module)
    return run
