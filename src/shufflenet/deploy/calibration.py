"""Real images for an export: the inputs its verification runs on, int8 calibration batches and the split
its accuracy is measured on, all taken from one dataset of the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from shufflenet.data import build_dataset, dataset_info
from shufflenet.data.catalog import InputContract
from shufflenet.data.transforms import trained_transforms

VERIFY_IMAGES = 8


@dataclass
class ExportData:
    """What ``export_model`` takes from a dataset: the input size, a few real inputs to verify on, the
    calibration batches (one image each) and the split accuracy is measured on."""

    input_size: tuple[int, int]
    real_inputs: torch.Tensor
    calibration: list[np.ndarray] = field(default_factory=list)
    accuracy_data: Dataset | None = None


def export_data(
    dataset: str,
    in_chans: int,
    *,
    data_dir: str | None = None,
    input_size: tuple[int, int] | None = None,
    calib_samples: int = 256,
    accuracy_samples: int = 0,
    contract: InputContract | None = None,
) -> ExportData:
    """Real images of ``dataset`` for exporting a model that takes ``in_chans`` channels: calibration from
    the train split, evenly spaced so every class is seen; verification inputs and accuracy from val. All
    go through the val transforms: calibration wants the images the model will see, not augmented ones.

    ``input_size`` defaults to the dataset's own. A model whose input ``contract`` says it was trained on
    ``dataset`` at ``input_size`` gets the images as in training (resized to it, its recorded mean/std).
    Otherwise a model that cannot take the dataset's images raises ValueError (a model trained elsewhere),
    because verifying it on resized images would hide that."""
    info = dataset_info(dataset)
    size = (info.image_size, info.image_size)
    trained_on_it = contract is not None and contract.dataset == dataset
    if trained_on_it and input_size is not None and input_size[0] == input_size[1]:
        size = (input_size[0], input_size[1])
    transform = trained_transforms(dataset, size[0], contract)
    train_set = build_dataset(dataset, "train", data_dir, transform=transform)
    accuracy_data: Dataset = build_dataset(dataset, "val", data_dir, transform=transform)
    if accuracy_samples:
        accuracy_data = Subset(accuracy_data, range(min(accuracy_samples, len(accuracy_data))))
    real_inputs = torch.stack([accuracy_data[index][0] for index in range(VERIFY_IMAGES)])
    if real_inputs.shape[1] != in_chans or (input_size is not None and tuple(input_size) != size):
        height, width = input_size or size
        raise ValueError(
            f"{dataset} images are {tuple(real_inputs.shape[1:])} but the model takes {in_chans} channels at "
            f"{height}x{width}; export a model trained on {dataset} (e.g. a run's model.safetensors) or "
            "drop --calib"
        )
    return ExportData(
        input_size=size,
        real_inputs=real_inputs,
        calibration=[image[None] for image in _evenly_spaced(train_set, calib_samples)],
        accuracy_data=accuracy_data,
    )


def _evenly_spaced(data: Dataset, count: int) -> list[np.ndarray]:
    """``count`` images of ``data`` spread over it (a sorted dataset still gives every class)."""
    step = max(1, len(data) // count)
    return [data[index][0].numpy() for index in range(0, min(len(data), step * count), step)]


def calibration_batches(
    dataset: str,
    size: int,
    contract: InputContract | None,
    *,
    data_dir: str | None = None,
    samples: int = 256,
    batch: int = 32,
) -> list[np.ndarray]:
    """``samples`` images of ``dataset``'s train split at ``size`` (through the transforms the model was
    trained with, see ``export_data``), evenly spaced, in NCHW batches of ``batch``: what int8 measures
    its ranges on."""
    train_set = build_dataset(
        dataset, "train", data_dir, transform=trained_transforms(dataset, size, contract)
    )
    images = _evenly_spaced(train_set, samples)
    return [np.stack(images[start : start + batch]) for start in range(0, len(images), batch)]
