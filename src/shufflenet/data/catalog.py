"""The datasets this package knows by name, and what a model needs to know about each: classes, input size
and normalization. A leaf: datasets, transforms and the CLI all read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, input size and normalization."""

    num_classes: int | None  # None: given by the folder's class directories
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(10, 28, 1, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": DatasetInfo(None, 224, 3, IMAGENET_MEAN, IMAGENET_STD),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :data:`DATASETS` entry for ``name``, with a ValueError listing the choices if unknown."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
