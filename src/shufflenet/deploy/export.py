"""Verified export: the deploy graph written as ONNX, OpenVINO IR or a torch.export program, then run from
the written file and compared with the eager model on random and real inputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shufflenet._system import torch_threads
from shufflenet.deploy.engine import BFLOAT16_MISSING, Engine, Plan, load_library, plan_engine
from shufflenet.deploy.errors import require_package
from shufflenet.deploy.optimize import optimize
from shufflenet.deploy.quantize import operation_errors
from shufflenet.deploy.runtimes import export_onnx, openvino_runner, ort_runner, quantize_onnx_int8
from shufflenet.deploy.timing import median_seconds

FORMATS = ("onnx", "openvino", "pt2", "engine")
Format = Literal["onnx", "openvino", "pt2", "engine"]
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "pt2": ".pt2", "engine": ".plan"}
FP32_TOLERANCE = 1e-4
EXPORT_PRECISIONS = ("fp32", "bf16", "int8")


class ExportError(RuntimeError):
    """An export that could not be written or did not verify; the message says why."""


@dataclass
class ExportReport:
    """What was written and how it compares with the eager model."""

    path: Path
    format: str
    precision: str
    max_abs_diff_random: float
    max_abs_diff_real: float | None
    latency_ms: float
    eager_latency_ms: float
    tolerance: float | None
    extra_files: list[Path] = field(default_factory=list)
    accuracy: dict[str, float] | None = None
    layer_errors: list[tuple[int, str, float]] = field(default_factory=list)
    """An int8 engine plan's operations with their int8 error (rms error over rms value) on real inputs."""

    @property
    def passed(self) -> bool:
        if self.tolerance is None:  # reduced precision: judged by accuracy, not by a tolerance
            return True
        diffs = [self.max_abs_diff_random] + (
            [self.max_abs_diff_real] if self.max_abs_diff_real is not None else []
        )
        return max(diffs) <= self.tolerance

    def summary(self) -> str:
        lines = [
            f"wrote {self.path}" + "".join(f" + {extra.name}" for extra in self.extra_files),
            f"max |exported - eager|: random inputs {self.max_abs_diff_random:.2e}"
            + ("" if self.max_abs_diff_real is None else f", real inputs {self.max_abs_diff_real:.2e}")
            + ("" if self.tolerance is None else f" (tolerance {self.tolerance:g})"),
            f"latency (batch 1, median): exported {self.latency_ms:.2f} ms, "
            f"eager {self.eager_latency_ms:.2f} ms",
        ]
        if self.accuracy:
            lines.append(
                "accuracy: " + ", ".join(f"{key} {value:.2f}%" for key, value in self.accuracy.items())
            )
        if self.layer_errors:
            worst = sorted(self.layer_errors, key=lambda row: -row[2])[:3]
            lines.append(
                f"int8 error per operation (rms error / rms, {len(self.layer_errors)} operations): logits "
                f"{self.layer_errors[-1][2]:.3f}; worst "
                + ", ".join(f"#{index} {what} {error:.3f}" for index, what, error in worst)
            )
        if self.tolerance is None and self.accuracy:
            change = self.accuracy["exported top-1"] - self.accuracy["eager top-1"]
            lines.append(f"{self.precision}: judged by accuracy, change {change:+.2f} points")
        elif self.tolerance is None:
            lines.append(f"{self.precision}: no labelled data given (--calib), so only the differences above")
        else:
            lines.append(
                "verified" if self.passed else "NOT verified: the exported model disagrees with eager"
            )
        return "\n".join(lines)


def _atomic_move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    shutil.move(str(source), staging)
    os.replace(staging, target)


def _load_runner(path: Path, fmt: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    if fmt == "engine":
        return Engine(load_library(), Plan.load(path), threads=threads)
    if fmt == "onnx":
        return ort_runner(path, threads)
    if fmt == "openvino":
        return openvino_runner(path, threads)
    program = torch.export.load(str(path)).module()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(torch.from_numpy(batch)).numpy()

    return run


def _write_plan(
    model: nn.Module,
    input_size: tuple[int, int],
    folder: Path,
    precision: str,
    calibration: Sequence[np.ndarray],
    real_inputs: torch.Tensor | None,
    metadata: dict | None,
) -> tuple[list[Path], list[tuple[int, str, float]]]:
    """The engine's plan of ``model`` in ``precision`` for this CPU's build, in ``folder`` (and ``metadata``
    as JSON beside it); int8 adds each operation's int8 error on ``real_inputs``."""
    int8 = precision == "int8"
    library = load_library()
    if precision == "bf16" and not library.shufflenet_engine_bf16():
        raise ExportError(BFLOAT16_MISSING)
    plan = plan_engine(
        model,
        input_size,
        lanes=library.shufflenet_engine_lanes(),
        precision=precision,
        calibration=calibration if int8 else None,
    )
    path = folder / "model.plan"
    plan.save(path)
    files = [path]
    if metadata is not None:
        files.append(folder / "model.json")
        files[-1].write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    errors: list[tuple[int, str, float]] = []
    if int8 and real_inputs is not None and plan.quantized is not None:
        errors = operation_errors(plan.quantized, real_inputs.float())
    return files, errors


def _write(graph: nn.Module, example: torch.Tensor, fmt: str, folder: Path) -> list[Path]:
    """Write ``graph`` in ``fmt`` inside ``folder``; returns the written files (main one first)."""
    if fmt == "pt2":
        path = folder / "model.pt2"
        # torch.export specializes dimensions of size 1, so trace with a batch of 2 to keep it dynamic.
        program = torch.export.export(
            graph, (example.repeat(2, 1, 1, 1),), dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},)
        )
        torch.export.save(program, str(path))
        return [path]
    onnx_path = export_onnx(graph, folder / "model.onnx", example)
    if fmt == "onnx":
        return [onnx_path]
    ov = require_package("openvino", "openvino")
    xml = folder / "model.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


def export_model(
    model: nn.Module,
    output: str | Path,
    fmt: Format = "onnx",
    *,
    input_size: tuple[int, int] = (224, 224),
    real_inputs: torch.Tensor | None = None,
    optimize_graph: bool = True,
    precision: str = "fp32",
    calibration: Sequence[np.ndarray] = (),
    accuracy_data: Dataset | None = None,
    threads: int = 1,
    latency_repeats: int = 30,
    tolerance: float = FP32_TOLERANCE,
    metadata: dict | None = None,
) -> ExportReport:
    """Export ``model``'s deploy graph (:func:`optimize`; the plain model with ``optimize_graph=False``)
    to ``output`` in ``fmt``, then load the written artifact and compare it with eager ``model`` on random
    inputs and on ``real_inputs`` when given. fp32 exports must agree within ``tolerance``; reduced
    ``precision`` is reported, not bound by it: ``int8`` (ONNX/OpenVINO: ONNX Runtime static quantization
    on ``calibration`` batches), ``bf16`` (the engine only); ``accuracy_data`` (a labelled dataset) adds
    the top-1 accuracy of eager and exported models. ``engine``: the C engine's plan for this CPU's build
    (:meth:`Plan.save`; ``int8``: the engine's own quantization, calibrated on ``calibration``, with each
    operation's int8 error on ``real_inputs`` in the report; ``bf16``: bfloat16 dot products, on CPUs
    with AVX512_BF16), with ``metadata`` (e.g. the input contract) beside it as ``NAME.plan.json``.
    Files appear only once written completely and verified (staged in a temporary folder, then renamed); a
    failed verification raises :class:`ExportError` and leaves any existing file untouched."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(EXPORT_PRECISIONS)}")
    int8 = precision == "int8"
    if int8 and fmt == "pt2":
        raise ValueError("--int8 applies to onnx, openvino and engine exports")
    if precision == "bf16" and fmt != "engine":
        raise ValueError("bf16 applies to engine exports (--format engine)")
    if int8 and not calibration:
        raise ValueError("int8 export needs calibration batches (--calib DATASET)")
    output = Path(output)
    if output.suffix != SUFFIX[fmt]:
        output = output.with_suffix(SUFFIX[fmt])
    model = model.eval()
    with torch_threads(threads):  # the caller's thread count comes back afterwards
        in_chans = getattr(model, "in_chans", 3)
        generator = torch.Generator().manual_seed(0)
        example = torch.randn(1, in_chans, *input_size, generator=generator)
        graph = optimize(model) if optimize_graph else model
        with tempfile.TemporaryDirectory() as workdir:
            folder = Path(workdir)
            try:
                if fmt == "engine":
                    files, layer_errors = _write_plan(
                        model, input_size, folder, precision, calibration, real_inputs, metadata
                    )
                else:
                    files = _write(graph, example, "onnx" if int8 else fmt, folder)
                if int8 and fmt != "engine":
                    files = [quantize_onnx_int8(files[0], calibration, folder)]
                    if fmt == "openvino":
                        ov = require_package("openvino", "openvino")
                        xml = folder / "model.int8.xml"
                        ov.save_model(ov.convert_model(str(files[0])), str(xml), compress_to_fp16=False)
                        files = [xml, xml.with_suffix(".bin")]
            except ExportError:
                raise
            except (
                Exception
            ) as error:  # the exporters raise many types; the user needs the reason in one line
                raise ExportError(
                    f"{type(model).__name__} could not be exported to {fmt}: {error}"
                ) from error
            random_batch = torch.randn(4, in_chans, *input_size, generator=generator)
            try:
                run = _load_runner(files[0], fmt, threads)
                max_random = _max_diff(model, run, random_batch)
                max_real = _max_diff(model, run, real_inputs) if real_inputs is not None else None
            except Exception as error:
                raise ExportError(
                    f"the {fmt} file was written but could not be run for verification: {error}"
                ) from error
            one = example.numpy()
            latency = median_seconds(lambda: run(one), warmup=5, repeats=latency_repeats)[0]
            with torch.inference_mode():
                eager = median_seconds(lambda: model(example), warmup=3, repeats=latency_repeats)[0]
            accuracy = None
            if accuracy_data is not None:
                accuracy = {
                    "eager top-1": top1_accuracy(
                        lambda batch: model(torch.from_numpy(batch)).numpy(), accuracy_data
                    ),
                    "exported top-1": top1_accuracy(run, accuracy_data),
                }
            worst = max(max_random, max_real or 0.0)
            if precision == "fp32" and worst > tolerance:
                # An export that disagrees with its model must not replace a good file of the same name.
                raise ExportError(
                    f"the {fmt} export differs from the eager model by {worst:.2e} "
                    f"(tolerance {tolerance:g}); nothing written to {output}"
                )
            # The engine's JSON goes beside its plan as NAME.plan.json: NAME.json may be the sidecar of the
            # weights it came from.
            targets = [output] + [
                output.with_name(output.name + ".json")
                if fmt == "engine"
                else output.with_suffix(extra.suffix)
                for extra in files[1:]
            ]
            for source, target in zip(files, targets, strict=True):
                _atomic_move(source, target)
        return ExportReport(
            path=output,
            format=fmt,
            precision=precision,
            max_abs_diff_random=max_random,
            max_abs_diff_real=max_real,
            latency_ms=1000 * latency,
            eager_latency_ms=1000 * eager,
            tolerance=tolerance if precision == "fp32" else None,
            extra_files=targets[1:],
            accuracy=accuracy,
            layer_errors=layer_errors if fmt == "engine" else [],
        )


def top1_accuracy(run: Callable[[np.ndarray], np.ndarray], dataset: Dataset, batch_size: int = 100) -> float:
    """Top-1 accuracy (%) of a NumPy-in, NumPy-out model over a dataset of (image tensor, label)."""
    correct = total = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for images, labels in loader:
            predictions = run(images.float().numpy()).argmax(1)
            correct += int((predictions == labels.numpy()).sum())
            total += len(labels)
    return 100 * correct / max(total, 1)


def adapt_images(images: torch.Tensor, in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """Real images made to fit a model's input: resized (bilinear) to ``size`` and their channels repeated
    or averaged to ``in_chans`` (e.g. Fashion-MNIST digits as 3 x 224 x 224 ImageNet-style inputs)."""
    images = images.float()
    if images.shape[1] != in_chans:
        images = images.mean(1, keepdim=True).expand(-1, in_chans, -1, -1)
    if tuple(images.shape[-2:]) != tuple(size):
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images.contiguous()


def _max_diff(model: nn.Module, run: Callable[[np.ndarray], np.ndarray], batch: torch.Tensor) -> float:
    worst = 0.0
    with torch.inference_mode():
        for index in range(len(batch)):  # batch 1 at a time: the export is verified at its deploy shape
            image = batch[index : index + 1].float()
            expected = model(image).numpy()
            worst = max(worst, float(np.abs(run(image.numpy()) - expected).max()))
    return worst
