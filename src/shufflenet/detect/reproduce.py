"""Detection tables reproduced (ShuffleNet's Table 7, Zhang et al. 2018, section 4.4): each cell a detection
run (:func:`shufflenet.detect.train.train_detector`) on the offline Fashion-MNIST set or on COCO, scored by
COCO mAP, through the same runner, reuse and report as the classification tables
(:mod:`shufflenet.train.reproduce`)."""

from __future__ import annotations

from typing import Any

from shufflenet.detect.synthetic import CanvasSpec
from shufflenet.detect.train import OFFLINE_SET, DetectConfig, train_detector
from shufflenet.train.reproduce import Budget, Task

# COCO's images are mostly 640x480: the paper's shorter sides of 300 and 600 are about 0.63x and 1.25x of an
# image's own. On the offline set's square canvases the same ratios give its two resolutions.
COCO_SHORTER_SIDE = 480
# py-faster-rcnn's default longer-side cap (1000 for a shorter side of 600), kept in proportion at 300.
LONGER_SIDE_RATIO = 5 / 3


def _longer_side(min_size: int, dataset: str) -> int:
    """The longer-side cap for shorter side ``min_size``: the offline set's canvases are square."""
    return min_size if dataset == OFFLINE_SET else round(min_size * LONGER_SIDE_RATIO)


def resolution(paper_min_size: int, dataset: str) -> tuple[int, int]:
    """(min_size, max_size) for a cell the paper ran with shorter side ``paper_min_size``: the paper's on
    COCO, the same fraction of the image's own size on the offline set's canvases."""
    side = paper_min_size
    if dataset == OFFLINE_SET:
        side = round(CanvasSpec().size * paper_min_size / COCO_SHORTER_SIDE)
    return side, _longer_side(side, dataset)


def _at_resolution(settings: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A cell's paper resolution made the data's; a ``min_size`` the user set is taken as it is, its
    ``max_size`` (unless set too) in the same proportion as the paper's."""
    dataset = settings["dataset"]
    if "min_size" in overrides:
        min_size = overrides["min_size"]
    elif "min_size" in settings:
        min_size = resolution(settings["min_size"], dataset)[0]
    else:
        return settings
    max_size = overrides.get("max_size", _longer_side(min_size, dataset))
    return {**settings, "min_size": min_size, "max_size": max_size}


DETECTION = Task(
    recipe="detect-fashion-quick",
    config_class=DetectConfig,
    train=train_detector,
    dataset=OFFLINE_SET,
    datasets=(OFFLINE_SET, "coco"),
    budget=Budget(images=None, epochs=6),  # the quick recipe's length
    adapt=_at_resolution,
)
