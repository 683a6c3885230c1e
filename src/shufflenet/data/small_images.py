"""Fast path for the small-image datasets (Fashion-MNIST, CIFAR): pad-and-crop + flip done on whole batches.

Through ``torchvision.transforms.v2`` every 28x28 sample pays per-call overheads (ToImage, RandomCrop,
ToDtype + Normalize) that add up to about a third of the training time of a small ShuffleNet on a CPU.
torchvision's batch transforms draw one crop per batch, not per sample, so the per-sample crop is done here:
each sample's offsets and flip come from a hash of (seed, epoch, index) (no RNG state at all, so resume and
any number of workers give the same batches), and the crop is one gather over the padded batch, on the
training device.

Random erasing (Zhong et al., "Random Erasing Data Augmentation", 2017; torchvision's ``RandomErasing``
defaults: p 0.5, area 2-40% of the image, aspect ratio 0.3-3.3, erased to 0 after normalization) is drawn
the same way, as one rectangle per sample, and applied as one mask over the batch. It is the augmentation
that lifts small nets past 95% on Fashion-MNIST in long runs (that paper, Table 1).

A small image folder of one's own takes the same path: :func:`decode_image_folder` decodes it once into a
uint8 tensor (1,440 images of 32x32 RGB are 4.4 MB), which spares every epoch the per-sample PIL decoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from shufflenet.data.datasets import spread_sample
from shufflenet.data.loaders import sample_seed


class DecodedImages(Dataset):
    """Images held as one uint8 tensor ``data`` (N, H, W, C, as torchvision's CIFAR holds them) with their
    ``targets`` and ``classes``: what :class:`SmallImageDataset` reads."""

    def __init__(self, data: torch.Tensor, targets: list[int], classes: Sequence[str]) -> None:
        self.data, self.targets, self.classes = data, targets, list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], self.targets[index]


def decode_images(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> one uint8 tensor (N, size, size, 3), each converted to RGB and resized where needed."""
    out = torch.empty(len(images), size, size, 3, dtype=torch.uint8)
    for i, image in enumerate(images):
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = torch.from_numpy(np.array(image))
    return out


def decode_image_folder(folder: Any, size: int) -> DecodedImages:
    """Every image of an ImageFolder-like ``folder`` (``samples``, ``classes``, ``loader``) decoded once at
    ``size`` x ``size``. Images its loader returns as None (unreadable, skipped) are left out."""
    kept, targets = [], []
    for path, target in folder.samples:
        image = folder.loader(path)
        if image is not None:
            kept.append(decode_images([image], size)[0])
            targets.append(target)
    data = torch.stack(kept) if kept else torch.empty(0, size, size, 3, dtype=torch.uint8)
    return DecodedImages(data, targets, folder.classes)


def measure_normalization(folder: Any, limit: int = 200) -> dict[str, tuple[float, ...]]:
    """Per-channel ``mean`` and ``std`` (on the [0, 1] scale, as ``Normalize`` takes them) of the RGB pixels
    of up to ``limit`` images spread over an ImageFolder-like ``folder``, each at its own size."""
    total, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for path, _ in spread_sample(folder.samples, limit):
        image = folder.loader(path)
        if image is None:  # unreadable, skipped
            continue
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).reshape(-1, 3).double().div_(255)
        total += pixels.sum(0)
        squares += pixels.square().sum(0)
        count += len(pixels)
    if not count:
        raise ValueError(f"no readable image among {min(limit, len(folder.samples))} looked at")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-6).sqrt()
    rounded = [tuple(round(v, 4) for v in values.tolist()) for values in (mean, std)]
    return {"mean": rounded[0], "std": rounded[1]}


class SmallImageDataset(Dataset):
    """A torchvision Fashion-MNIST/CIFAR dataset, or :class:`DecodedImages`, held as one uint8 tensor
    (N, C, H, W); items are ``(image uint8, label, (dy, dx, flip, top, left, bottom, right))``: the crop
    offsets, the flip and the erased rectangle (empty when ``top == bottom``) drawn from (seed, epoch,
    index) when indexed by ``(epoch, index)``, and centred with nothing erased (no augmentation) when
    indexed by an int."""

    def __init__(
        self,
        base: Dataset,
        *,
        padding: int,
        flip: bool = True,
        erase: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        data = base.data[:limit] if limit else base.data
        images = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
        if images.dim() == 3:  # Fashion-MNIST: N, H, W
            images = images.unsqueeze(1)
        elif images.shape[-1] in (1, 3):  # CIFAR: N, H, W, C
            images = images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.targets = torch.as_tensor(base.targets, dtype=torch.int64)[: len(self.images)]
        self.classes = list(getattr(base, "classes", []))
        self.padding = padding
        self.flip = flip
        self.erase = erase
        self.seed = seed

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, torch.Tensor]:
        if isinstance(key, int):
            centred = [self.padding, self.padding, 0, 0, 0, 0, 0]
            return self.images[key], int(self.targets[key]), torch.tensor(centred)
        epoch, index = key
        bits = sample_seed(self.seed, epoch, index)
        span = 2 * self.padding + 1
        flip = (bits >> 40) & 1 if self.flip else 0
        rectangle = self._erased_rectangle(epoch, index) if self.erase else (0, 0, 0, 0)
        params = torch.tensor([bits % span, (bits // span) % span, flip, *rectangle])
        return self.images[index], int(self.targets[index]), params

    def _erased_rectangle(self, epoch: int, index: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the rectangle to erase, or an empty one (probability 1/2)."""
        bits = sample_seed(self.seed + 0x5EED, epoch, index)
        uniforms = [((bits >> shift) & 0xFFFF) / 0x10000 for shift in (0, 16, 32, 48)]
        if uniforms[0] >= 0.5:
            return (0, 0, 0, 0)
        height, width = self.images.shape[-2:]
        area = height * width * (0.02 + 0.38 * uniforms[1])
        aspect = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * uniforms[2])
        box_h = min(height, max(1, round(math.sqrt(area * aspect))))
        box_w = min(width, max(1, round(math.sqrt(area / aspect))))
        top = int(uniforms[3] * (height - box_h + 1))
        # ``left`` reads bits 8-23, sharing bit 15 with the erase decision (worth under 0.06 px of ``left``)
        # and bits 16-23 with the area's lowest byte (worth under 0.2% of the image's area), so position and
        # size are independent in effect. Kept so the recorded runs (benchmarks/results/fm-full-*) replay
        # draw for draw.
        left = int(((bits >> 8) & 0xFFFF) / 0x10000 * (width - box_w + 1))
        return (top, left, top + box_h, left + box_w)

    def to_device(
        self,
        batch: Sequence[torch.Tensor],
        device: torch.device,
        *,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A collated batch -> (normalized float images, labels) on ``device``, augmented as drawn."""
        images, targets, params = batch
        images = augment_batch(
            images.to(device, non_blocking=True),
            params.to(device, non_blocking=True),
            padding=self.padding,
            mean=mean,
            std=std,
        )
        return images, targets.to(device, non_blocking=True)


def augment_batch(
    images: torch.Tensor,
    params: torch.Tensor,
    *,
    padding: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop each sample at its (dy, dx), flip where asked, scale to [0, 1],
    normalize and zero each sample's erased rectangle: the batched equivalent of RandomCrop(padding) +
    RandomHorizontalFlip + ToDtype + Normalize + RandomErasing. ``params`` rows are
    (dy, dx, flip[, top, left, bottom, right])."""
    batch, _, height, width = images.shape
    x = images.float().div_(255)
    if padding or bool(params[:, 2].any()):
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        rows = params[:, 0:1] + torch.arange(height, device=x.device)  # (B, H)
        cols = params[:, 1:2] + torch.arange(width, device=x.device)  # (B, W)
        flip = params[:, 2:3].bool()
        cols = torch.where(flip, cols.flip(1), cols)
        x = x[torch.arange(batch, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)  # advanced indexing put channels last
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    if params.shape[1] > 3 and bool((params[:, 5] > params[:, 3]).any()):
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        inside_rows = (rows >= params[:, 3:4]) & (rows < params[:, 5:6])  # (B, H)
        inside_cols = (cols >= params[:, 4:5]) & (cols < params[:, 6:7])  # (B, W)
        erased = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        x = x.masked_fill(erased, 0.0)
    return x.contiguous()
