"""The mobile inference frameworks users pick for these nets, behind the runtimes' interface (NumPy batch
in, logits out): ncnn (Tencent) through pnnx, which converts a TorchScript trace, and MNN (Alibaba) through
its ONNX converter. Both are optional (``pip install 'shufflenet[peers]'``).

ncnn is timed in two cells: ``ncnn`` forces fp32 (pnnx's fp16=0 and every fp16/bf16 storage and
arithmetic option off), ``ncnn_default`` keeps its defaults (pnnx stores the weights in fp16 and ncnn
computes in fp16 where the CPU allows). MNN runs at its "high" precision, fp32. MNN's converter is called
through its Python module's native entry, never its ``mnnconvert`` console script, which installs a
logging SDK and sends usage data out.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import warnings
from collections.abc import Callable, Iterator
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
