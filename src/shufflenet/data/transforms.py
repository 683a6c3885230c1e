"""Train and eval preprocessing per dataset, built from ``torchvision.transforms.v2``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms import v2

from shufflenet._validation import require_positive
from shufflenet.data.catalog import InputContract, dataset_info, is_small


def build_transforms(
    name: str,
    split: Literal["train", "val"],
    *,
    image_size: int | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    resize_only: bool = False,
) -> v2.Transform:
    """PIL image -> normalized float tensor, for dataset ``name``'s ``split``.

    imagefolder (ImageNet protocol): train is ``RandomResizedCrop(224, scale=(0.25, 1.0))`` plus a
    horizontal flip. ShuffleNet V1 (section 4) uses "slightly less aggressive scale augmentation" than
    Inception's ``(0.08, 1.0)``, since small networks underfit rather than overfit, but gives no number.
    0.25 sits between Inception's 0.08 and the 0.49 tensorpack's ShuffleNet example uses for its narrowest
    models. Eval is a single ``Resize(256)`` + ``CenterCrop(224)``; both sizes scale with ``image_size``
    at the 256/224 ratio.

    Small images (fashion-mnist 28 px, cifar 32 px): train is ``RandomCrop(size, padding=size // 8)``
    (4 px for CIFAR, the usual setting; 3 px for Fashion-MNIST, the same fraction) plus a horizontal
    flip, which also suits Fashion-MNIST's mostly left-right symmetric clothes; eval does no
    augmentation. An ``image_size`` other than the native one resizes first.

    Both end with conversion to float in [0, 1] and normalization by the dataset's mean/std, or by
    ``normalization`` = (mean, std) measured on the user's own images. ``resize_only`` (eval) resizes to
    ``image_size`` squared and crops nothing: how small images of one's own are trained (decoded at that
    size, see :mod:`shufflenet.data.small_images`), so they are evaluated the same way.
    """
    info = dataset_info(name)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    size = info.image_size if image_size is None else image_size
    require_positive(size, "image_size")
    train = split == "train"

    # Geometry on uint8 tensors (after ToImage) is faster than on PIL images or floats.
    steps: list[v2.Transform] = [v2.ToImage()]
    if resize_only and not train:
        steps.append(v2.Resize((size, size)))
    elif name == "imagefolder":
        if train:
            steps += [v2.RandomResizedCrop(size, scale=(0.25, 1.0)), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size)]
    else:
        if size != info.image_size:
            steps.append(v2.Resize(size))
        if train:
            steps += [v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip()]
    mean, std = normalization or (info.mean, info.std)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def trained_transforms(dataset: str, image_size: int, contract: InputContract | None) -> v2.Transform:
    """The eval transform that shows a model ``dataset``'s images as it saw them in training: normalized
    with the mean/std its ``contract`` records when it was trained on ``dataset`` (measured on one's own
    images), and small images of one's own resized whole, as the small-image pipeline decodes them, rather
    than resized and center-cropped."""
    trained_on_it = contract is not None and contract.dataset == dataset
    return build_transforms(
        dataset,
        "val",
        image_size=image_size,
        normalization=(contract.mean, contract.std) if trained_on_it else None,
        resize_only=dataset == "imagefolder" and is_small(image_size),
    )
