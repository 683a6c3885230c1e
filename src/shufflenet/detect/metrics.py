"""The COCO protocol's average precision (pycocotools' COCOeval): AP over IoU 0.50:0.95, AP50, AP75 and AP
by object size, for detections given as torchvision's detectors return them."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

# COCOeval's summary, in its order (areas: small < 32^2 <= medium < 96^2 <= large pixels).
AP_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def coco_detections(
    outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict]:
    """Detections in COCO's result format ([x, y, width, height] boxes, scores, category ids) from the
    detectors' outputs (``boxes`` x1 y1 x2 y2, ``labels`` 1..K, ``scores``) for images ``image_ids``;
    label k is ``category_ids[k - 1]``."""
    results = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = output["boxes"].detach().cpu().float()
        boxes[:, 2:] -= boxes[:, :2]
        for box, label, score in zip(
            boxes.tolist(), output["labels"].tolist(), output["scores"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label - 1]),
                    "bbox": box,
                    "score": score,
                }
            )
    return results


def detections_over(
    model: nn.Module, batches: Iterable[tuple[list[torch.Tensor], list[dict]]], category_ids: Sequence[int]
) -> list[dict]:
    """``model``'s detections (in eval mode, without gradients) on ``batches`` of (images, targets with
    ``image_id``), in COCO's result format (:func:`coco_detections`)."""
    found: list[dict] = []
    model.eval()
    with torch.no_grad():
        for images, targets in batches:
            found += coco_detections(model(images), [t["image_id"] for t in targets], category_ids)
    return found


def coco_average_precision(
    ground_truth: COCO, detections: list[dict], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """AP, AP50, AP75 and AP by size in percent of ``detections`` (COCO result format) against
    ``ground_truth`` over ``image_ids`` (default: all its images). No detection at all scores 0."""
    if not detections:
        return dict.fromkeys(AP_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the table
        found = ground_truth.loadRes(detections)
        evaluation = COCOeval(ground_truth, found, "bbox")
        if image_ids is not None:
            evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCOeval reports -1 where no ground truth of that size exists.
    return {
        name: round(100 * max(float(value), 0.0), 2)
        for name, value in zip(AP_NAMES, evaluation.stats, strict=False)
    }
