"""Evaluation: loss, top-1/top-5 error and the confusion matrix over a loader, summed over all ranks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from shufflenet.data import (
    AugmentedDataset,
    InputContract,
    build_dataset,
    build_eval_loader,
    dataset_info,
)
from shufflenet.data.transforms import trained_transforms
from shufflenet.registry import create_model
from shufflenet.train.checkpoint import load_checkpoint, load_exported, load_input_contract
from shufflenet.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    cleanup_distributed,
    init_distributed,
)
from shufflenet.train.metrics import ConfusionMatrix, plot_confusion_matrix, topk_correct


@dataclass
class EvalResult:
    """Evaluation figures; errors are percentages."""

    loss: float
    top1_err: float
    top5_err: float
    samples: int
    confusion: ConfusionMatrix = field(repr=False)

    def per_class_accuracy(self) -> list[float]:
        return self.confusion.per_class_accuracy()


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 or fp16); a no-op elsewhere or with ``amp="none"``."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: Iterable[Any],
    ctx: DistributedContext,
    num_classes: int,
    *,
    amp: str = "none",
    prepare: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> EvalResult:
    """Single-crop evaluation of ``model`` over this rank's shard of ``loader``, reduced over ranks.
    ``prepare`` turns a loader batch into (images, labels) on the device (default: move it there)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss sum, top-5 correct
    samples = torch.zeros((), dtype=torch.float64, device=ctx.device)
    confusion = ConfusionMatrix(num_classes, device=ctx.device)
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable and skipped
            continue
        if prepare is not None:
            images, targets = prepare(batch)
        else:
            images, targets = (t.to(ctx.device, non_blocking=True) for t in batch)
        with autocast_for(ctx.device, amp):
            logits = model(images)
        logits = logits.float()
        totals[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        totals[1] += topk_correct(logits, targets, (5,))[5]
        samples += targets.numel()
        confusion.update(logits, targets)  # its diagonal is the top-1 count
    totals = all_reduce_sum(totals, ctx)
    count = all_reduce_sum(samples, ctx).item()
    confusion.matrix = all_reduce_sum(confusion.matrix, ctx)
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation set is empty; check --data-dir and the dataset's val split")
    loss, top5 = (totals / count).tolist()
    top1 = confusion.matrix.trace().item() / count
    return EvalResult(loss, 100 * (1 - top1), 100 * (1 - top5), int(count), confusion)


def load_for_evaluation(
    checkpoint: str | Path, model_name: str | None = None, model_args: dict[str, Any] | None = None
) -> tuple[nn.Module, str, dict[str, Any]]:
    """A model with trained weights from a training checkpoint (``.pt``, which records its model) or an
    exported ``.safetensors`` file (whose JSON sidecar does). ``model_name`` must agree when given."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if path.suffix == ".safetensors":
        model = load_exported(path)
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        name, args = meta["model"], meta["args"]
    else:
        state = load_checkpoint(path)
        config = state.get("config", {})
        name = config.get("model")
        args = dict(state.get("model_args_resolved", {}))
        if name is None:
            if model_name is None:
                raise ValueError(f"{path} does not record its model; pass --model NAME")
            name, args = model_name, dict(model_args or {})
        model = create_model(name, **args)
        model.load_state_dict(state["model"])
    if model_name is not None and model_name != name:
        raise ValueError(f"{path} holds a {name}, not {model_name}; drop --model or pass --model {name}")
    return model, name, args


def resolve_input(
    contract: InputContract | None, dataset: str | None, image_size: int | None
) -> tuple[str, int | None, list[str]]:
    """The dataset and image size to evaluate at, from the model's input contract unless given, and the
    notes to show the user. An explicit size that contradicts the contract raises ValueError."""
    if contract is None:
        if dataset is None:
            raise ValueError("the checkpoint does not record its dataset; pass --dataset NAME")
        return dataset, image_size, []
    notes = [contract.describe()]
    height, width = contract.image_size
    if image_size is not None and (image_size, image_size) != (height, width):
        raise ValueError(
            f"--image-size {image_size} contradicts the {height}x{width} input the model was trained at "
            f"({contract.source}); drop --image-size"
        )
    if height != width:
        raise ValueError(f"{contract.source} records a {height}x{width} input; evaluation crops are square")
    if dataset is not None and dataset != contract.dataset:
        channels = dataset_info(dataset).channels
        if channels != contract.channels:
            raise ValueError(
                f"the model takes {contract.channels}-channel input but {dataset} images have {channels} "
                f"channels; evaluate on {contract.dataset}"
            )
        notes.append(f"note: evaluating on {dataset}, but the model was trained on {contract.dataset}")
    return dataset or contract.dataset, height, notes


EVAL_RUNTIMES = ("torch", "engine")


class EngineClassifier(nn.Module):
    """The C engine behind a module's call (a CPU batch of images in, logits out), for the evaluation
    loop."""

    def __init__(self, engine: Any, num_classes: int) -> None:
        super().__init__()
        self.engine = engine
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.engine(images.cpu().numpy()))


def engine_classifier(
    model: nn.Module,
    dataset: str,
    size: int,
    contract: InputContract | None,
    *,
    precision: str = "fp32",
    data_dir: str | Path | None = None,
    calib_samples: int = 256,
) -> EngineClassifier:
    """``model`` planned for the engine at ``size`` x ``size`` in ``precision``; int8 measures its ranges
    on ``calib_samples`` train images of ``dataset`` (as the model was trained to see them)."""
    from shufflenet.deploy.calibration import calibration_batches
    from shufflenet.deploy.engine import build_engine

    calibration = None
    if precision == "int8":
        calibration = calibration_batches(
            dataset,
            size,
            contract,
            data_dir=None if data_dir is None else str(data_dir),
            samples=calib_samples,
        )
    engine = build_engine(model.eval(), (size, size), precision=precision, calibration=calibration)
    return EngineClassifier(engine, model.num_classes)


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | None = None,
    *,
    runtime: str = "torch",
    precision: str = "fp32",
    calib_samples: int = 256,
    data_dir: str | Path | None = None,
    model_name: str | None = None,
    batch_size: int = 256,
    image_size: int | None = None,
    device: str | None = None,
    num_workers: int = 0,
    output: str | Path | None = None,
    skip_bad_images: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate trained weights on ``dataset``'s val split with the single-crop protocol (imagefolder:
    resize 256, center crop): top-1/top-5 error, per-class accuracy and a confusion-matrix PNG (written to
    ``output``, default the run directory: ``checkpoint`` itself if a folder, else the folder holding it).

    ``dataset`` and ``image_size`` default to those the model was trained with (its input contract);
    ``log`` receives one line saying so. Runs distributed under torchrun. ``runtime="engine"`` runs the
    network on the C engine (CPU) in ``precision`` (``"int8"``: calibrated on ``calib_samples`` train
    images; ``"bf16"``: bfloat16 dot products, on CPUs with AVX512_BF16) instead of PyTorch."""
    if runtime not in EVAL_RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: use one of {', '.join(EVAL_RUNTIMES)}")
    if precision != "fp32" and runtime != "engine":
        raise ValueError(f"{precision} runs on the engine: add --runtime engine")
    if runtime == "engine" and device is not None and device != "cpu":
        raise ValueError("the engine runs on the CPU: drop --device or use --runtime torch")
    ctx = init_distributed("cpu" if runtime == "engine" else device)
    try:
        contract = load_input_contract(checkpoint)
        dataset, image_size, notes = resolve_input(contract, dataset, image_size)
        if log is not None and ctx.is_main:
            for note in notes:
                log(note)
        model, name, _ = load_for_evaluation(checkpoint, model_name)
        model = model.to(ctx.device)
        base = build_dataset(
            dataset, "val", data_dir, transform=torch.nn.Identity(), skip_bad_images=skip_bad_images
        )
        names = list(getattr(base, "classes", [])) or [str(i) for i in range(model.num_classes)]
        if len(names) != model.num_classes:
            raise ValueError(
                f"{name} has {model.num_classes} classes but {dataset} has {len(names)}; "
                "evaluate on the dataset the model was trained for"
            )
        size = image_size or dataset_info(dataset).image_size
        if runtime == "engine":
            model = engine_classifier(
                model,
                dataset,
                size,
                contract,
                precision=precision,
                data_dir=data_dir,
                calib_samples=calib_samples,
            )
        data = AugmentedDataset(base, trained_transforms(dataset, size, contract))
        loader = build_eval_loader(
            data, batch_size=batch_size, rank=ctx.rank, world_size=ctx.world_size, num_workers=num_workers
        )
        batches = tqdm(loader, desc="evaluate", unit="batch", disable=not (progress and ctx.is_main))
        result = evaluate_model(model, batches, ctx, model.num_classes)
        path = Path(checkpoint)
        folder = Path(output) if output else path if path.is_dir() else path.parent
        summary = {
            "model": name,
            "runtime": runtime,
            "precision": precision,
            "checkpoint": str(checkpoint),
            "dataset": dataset,
            "input_size": [size, size],
            "samples": result.samples,
            "loss": result.loss,
            "top1_err": result.top1_err,
            "top5_err": result.top5_err,
            "per_class_accuracy": dict(zip(names, result.per_class_accuracy(), strict=True)),
            "skipped_images": list(getattr(base, "bad_images", [])),
        }
        if ctx.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            summary["confusion_matrix_png"] = str(
                plot_confusion_matrix(result.confusion.matrix.cpu(), names, folder / "confusion_matrix.png")
            )
        return summary
    finally:
        cleanup_distributed(ctx)
