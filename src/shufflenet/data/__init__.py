"""Data layer: datasets by name, their transforms, and reproducible (optionally distributed) loaders."""

from shufflenet.data.datasets import (
    DATASETS,
    DatasetInfo,
    SkippingImageFolder,
    build_dataset,
    collate_skip_none,
    dataset_info,
    default_cache_dir,
)
from shufflenet.data.loaders import (
    AugmentedDataset,
    TrainSampler,
    build_eval_loader,
    build_train_loader,
    steps_per_epoch,
)
from shufflenet.data.small_images import SmallImageDataset, augment_batch
from shufflenet.data.transforms import build_transforms

__all__ = [
    "DATASETS",
    "AugmentedDataset",
    "DatasetInfo",
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
    "default_cache_dir",
    "steps_per_epoch",
]
