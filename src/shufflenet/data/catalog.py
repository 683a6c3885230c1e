"""The datasets this package knows by name, and what a model needs to know about each: classes, input size
and normalization; and the input contract a trained model carries. A leaf: datasets, transforms, training
and the CLI all read it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, input size and normalization."""

    num_classes: int | None  # None: given by the folder's class directories
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    title: str = ""  # how people write its name (its normalization's, for imagefolder)


# Below this many pixels a side, images train as the small-image datasets do: decoded once into memory,
# batched pad-and-crop + flip, and a stride-1 stem (at 32 px the standard stem leaves 1x1 maps).
SMALL_IMAGES = 64


def is_small(size: int) -> bool:
    """Whether images of ``size`` px train on the small-image path."""
    return size < SMALL_IMAGES


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(10, 28, 1, (0.2860,), (0.3530,), "Fashion-MNIST"),
    "cifar10": DatasetInfo(10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR-10"),
    "cifar100": DatasetInfo(100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR-100"),
    "imagefolder": DatasetInfo(None, 224, 3, IMAGENET_MEAN, IMAGENET_STD, "ImageNet"),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :data:`DATASETS` entry for ``name``, with a ValueError listing the choices if unknown."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


@dataclass(frozen=True)
class InputContract:
    """What a trained model expects as input: written into its ``model.json`` and read back by
    ``evaluate`` and ``export`` so they feed it what it was trained on."""

    dataset: str
    image_size: tuple[int, int]  # (H, W)
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()  # empty: not recorded (a checkpoint.pt)
    source: str = ""  # the file it was read from; not written

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        image_size: int | None = None,
        channels: int | None = None,
        class_names: Sequence[str] = (),
    ) -> InputContract:
        """The contract of a model trained on ``dataset`` at ``image_size`` (default: the dataset's own)."""
        info = dataset_info(dataset)
        size = image_size or info.image_size
        names = tuple(str(name) for name in class_names)
        return cls(dataset, (size, size), channels or info.channels, info.mean, info.std, names)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept under ``"input"`` in ``model.json``."""
        return {
            "dataset": self.dataset,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> InputContract:
        """The inverse of :meth:`to_dict`; a missing or bad field raises ValueError naming ``source``."""
        try:
            height, width = (int(v) for v in data["image_size"])
            return cls(
                str(data["dataset"]),
                (height, width),
                int(data["channels"]),
                tuple(float(v) for v in data["mean"]),
                tuple(float(v) for v in data["std"]),
                tuple(str(v) for v in data.get("class_names", ())),
                source,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f'{source or "the input contract"} has a malformed "input" entry ({error!r}); re-export it'
            ) from None

    def describe(self) -> str:
        """One line, e.g. ``input 28x28, 1 channel, Fashion-MNIST normalization from runs/x/model.json``."""
        info = DATASETS.get(self.dataset)
        title = info.title if info is not None else self.dataset
        if info is None or (tuple(self.mean), tuple(self.std)) != (tuple(info.mean), tuple(info.std)):
            title = f"measured (mean {_rounded(self.mean)}, std {_rounded(self.std)})"
        channels = f"{self.channels} channel{'' if self.channels == 1 else 's'}"
        where = f" from {self.source}" if self.source else ""
        return f"input {self.image_size[0]}x{self.image_size[1]}, {channels}, {title} normalization{where}"


def _rounded(values: Sequence[float]) -> str:
    return "/".join(f"{value:.3f}" for value in values)
