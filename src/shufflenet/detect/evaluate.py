"""A trained detector back from its run: COCO AP on a COCO-format split, and predictions drawn on images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from shufflenet._system import atomic_write
from shufflenet.detect.coco import CocoDetectionSet, collate_detection
from shufflenet.detect.metrics import coco_average_precision, detections_over
from shufflenet.detect.model import build_detector
from shufflenet.detect.train import DetectConfig
from shufflenet.train.checkpoint import load_checkpoint
from shufflenet.train.run_dir import CHECKPOINT_NAME


def load_detector(checkpoint: str | Path) -> tuple[nn.Module, DetectConfig, list[str]]:
    """(detector in eval mode, its run's settings, its class names) from a detection run's checkpoint
    (the file, or the run directory holding it)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    state = load_checkpoint(path)
    saved = state.get("config", {})
    if "detector" not in saved:
        raise ValueError(
            f"{path} is not a detection run's checkpoint; `shufflenet evaluate` takes classifiers"
        )
    config = DetectConfig(**saved)
    classes = list(state.get("class_names") or [])
    num_classes = state["model_args_resolved"]["num_classes"]
    # The trained weights are in the checkpoint, not in the backbone's file; the trunk is built with the
    # arguments it was built with (those of the classifier in backbone_weights, if any), the input
    # normalized as in training.
    args = config.detector_args()
    if "backbone_args" in state:
        args = {key: value for key, value in args.items() if key not in config.model_args}
        args |= state["backbone_args"]
    normalization = state.get("normalization") or {}
    model = build_detector(
        config.model,
        num_classes,
        **(args | {"weights": None}),
        image_mean=normalization.get("mean"),
        image_std=normalization.get("std"),
    )
    # Detectors saved before the backbone dropped its unused classifier still hold its weights.
    unused_head = f"backbone.body.model.{model.backbone.body.model.classifier_name}."
    model.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith(unused_head)})
    return model.eval(), config, classes or [str(i) for i in range(1, num_classes + 1)]


def evaluate_detector(
    model: nn.Module, dataset: CocoDetectionSet, *, batch_size: int = 8, limit: int | None = None
) -> dict[str, float]:
    """COCO AP (%) of ``model`` on ``dataset`` (its first ``limit`` images if given)."""
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, list(indices)), batch_size=batch_size, collate_fn=collate_detection
    )
    found = detections_over(model, loader, dataset.category_ids)
    return coco_average_precision(dataset.coco, found, [dataset.ids[i] for i in indices])


def predict(
    model: nn.Module, images: Sequence[str | Path], *, threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Each image's detections above ``threshold``: boxes (x1, y1, x2, y2 pixels), labels 1..K, scores."""
    model.eval()
    results = []
    with torch.no_grad():
        for path in images:
            with Image.open(path) as file:
                picture = F.to_dtype(F.pil_to_tensor(file.convert("RGB")), torch.float32, scale=True)
            (output,) = model([picture])
            keep = output["scores"] >= threshold
            results.append({key: value[keep] for key, value in output.items()})
    return results


def draw_predictions(
    images: Sequence[str | Path], predictions: Sequence[dict], classes: Sequence[str], path: str | Path
) -> Path:
    """A PNG of ``images`` side by side with their predicted boxes, class names and scores."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows), dpi=100, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, found in zip(axes.flat, images, predictions, strict=False):
        with Image.open(image) as file:
            ax.imshow(file.convert("RGB"))
        for box, label, score in zip(
            found["boxes"].tolist(), found["labels"].tolist(), found["scores"].tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=1.5))
            name = classes[label - 1] if 0 < label <= len(classes) else str(label)
            ax.text(
                x1, y1, f"{name} {score:.2f}", color="black", fontsize=7, backgroundcolor="lime", va="bottom"
            )
        ax.set_title(Path(image).name, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    return path
