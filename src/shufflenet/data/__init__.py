"""Data layer: datasets by name, their transforms, and reproducible (optionally distributed) loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from shufflenet.data.catalog import DATASETS, DatasetInfo, InputContract, dataset_info
from shufflenet.data.datasets import (
    ImageSurvey,
    SkippingImageFolder,
    Split,
    collate_skip_none,
    default_cache_dir,
    open_dataset,
    survey_images,
)
from shufflenet.data.loaders import (
    AugmentedDataset,
    TrainSampler,
    build_eval_loader,
    build_train_loader,
    steps_per_epoch,
)
from shufflenet.data.small_images import (
    DecodedImages,
    SmallImageDataset,
    augment_batch,
    decode_image_folder,
    measure_normalization,
)
from shufflenet.data.transforms import build_transforms

__all__ = [
    "DATASETS",
    "AugmentedDataset",
    "DatasetInfo",
    "DecodedImages",
    "ImageSurvey",
    "InputContract",
    "SkippingImageFolder",
    "SmallImageDataset",
    "TrainSampler",
    "augment_batch",
    "build_dataset",
    "build_eval_loader",
    "build_train_loader",
    "build_transforms",
    "collate_skip_none",
    "dataset_info",
    "decode_image_folder",
    "default_cache_dir",
    "measure_normalization",
    "steps_per_epoch",
    "survey_images",
]


# Here rather than in datasets.py: the default transform comes from transforms.py, which reads the catalog
# that datasets.py also reads; neither of those two imports the other.
def build_dataset(
    name: str,
    split: Split,
    data_dir: str | Path | None = None,
    *,
    transform: Callable[[Any], Any] | None = None,
    download: bool = True,
    skip_bad_images: bool = False,
) -> Dataset:
    """The ``split`` of dataset ``name`` yielding ``(image, label)``; ``"val"`` is the test set for
    Fashion-MNIST and CIFAR.

    ``transform=None`` applies the standard :func:`build_transforms` for the dataset and split; pass
    ``torchvision.transforms.v2.Identity()`` to get PIL images. ``download`` lets torchvision fetch
    Fashion-MNIST/CIFAR when no local copy is found. ``skip_bad_images`` (imagefolder only) turns unreadable
    images into ``None`` samples for :func:`collate_skip_none` instead of raising.
    """
    if transform is None:
        transform = build_transforms(name, split)
    return open_dataset(
        name, split, data_dir, transform=transform, download=download, skip_bad_images=skip_bad_images
    )
