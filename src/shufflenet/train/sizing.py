"""Sizing a run to its data and its machine, before any training process starts.

An image folder of one's own is looked at first (:func:`adapt_to_data`): the ImageNet defaults (224 px
random resized crops) turn a set of 32 px images into 49x the pixels to train on, and with a small-input
stem into many gigabytes of activations per process. Then the training memory is estimated
(:func:`check_memory`) and a run that cannot fit is refused, rather than left to the kernel's
out-of-memory killer.
"""

from __future__ import annotations

import dataclasses
import os
import resource
from pathlib import Path

import torch

from shufflenet.data import dataset_info
from shufflenet.data.catalog import SMALL_IMAGES, is_small
from shufflenet.data.datasets import ImageSurvey, open_dataset, survey_images
from shufflenet.registry import check_model_args, create_model
from shufflenet.train.config import TrainConfig

GB = 1e9


def training_size(survey: ImageSurvey) -> int:
    """The square training size for images of the surveyed typical size: the shorter side, on a multiple of
    4 below 64 px and of 16 above (the nets' strides divide it evenly), and at most the ImageNet 224."""
    side = min(survey.height, survey.width)
    if is_small(side):
        return max(8, round(side / 4) * 4)
    return min(224, max(SMALL_IMAGES, round(side / 16) * 16))


def _accepts_small_input(model: str) -> bool:
    try:
        check_model_args(model, {"small_input": True})
    except ValueError:
        return False
    return True


def adapt_to_data(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """For ``imagefolder`` without an ``image_size``: ``config`` set to train at the images' typical size,
    with the small-input stem below 64 px (when the model has one and ``model_args`` does not say), and the
    one line that says so. Other datasets, or a size the user chose, come back unchanged with no line."""
    if config.dataset != "imagefolder" or config.image_size is not None:
        return config, None
    train = open_dataset("imagefolder", "train", config.data_dir, transform=lambda image: image)
    val_count = len(open_dataset("imagefolder", "val", config.data_dir, transform=lambda image: image))
    survey = survey_images([path for path, _ in train.samples])
    size = training_size(survey)
    small = is_small(size)
    model_args = dict(config.model_args)
    stem = ""
    if "small_input" not in model_args and _accepts_small_input(config.model):
        model_args["small_input"] = small
        stem = " and the small-input stem" if small else " and the standard stem"
    how = " with the small-image pipeline" if small else " (random resized crops)"
    message = (
        f"imagefolder: {len(train):,} train / {val_count:,} val images of {len(train.classes)} classes, "
        f"typically {survey.width}x{survey.height} {survey.mode}: training at {size}x{size}{how}{stem}; "
        "--set image_size=... to override"
    )
    if model_args.get("small_input") and not small:
        message += (
            f"\nnote: model_args.small_input=true keeps full-resolution maps at {size}x{size}, 16x the "
            "activations of the standard stem; --set model_args.small_input=false unless that is meant"
        )
    return dataclasses.replace(config, image_size=size, model_args=model_args), message


# --- memory ---------------------------------------------------------------------------------------------


def available_memory() -> int:
    """Bytes the kernel can still give out without swapping (/proc/meminfo MemAvailable); 0 if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _resident_memory() -> int:
    """This process's resident memory now (bytes): what a fresh training process starts from, roughly."""
    try:
        with open("/proc/self/statm", encoding="ascii") as file:
            return int(file.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def activation_bytes_per_sample(
    model: torch.nn.Module, channels: int, image_size: int, channels_last: bool
) -> int:
    """Bytes autograd keeps per sample for the backward pass of ``model`` (train mode), measured by
    recording the tensors one forward pass on a batch of 2 saves (each storage once, the weights left out)."""
    batch = 2
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    images = torch.zeros(batch, channels, image_size, image_size)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    return sum(saved.values()) // batch


def estimate_memory(config: TrainConfig, processes: int, num_classes: int) -> int:
    """Estimated peak bytes of one of ``processes`` training processes: this process's baseline (torch
    loaded), weights with gradients and optimizer state, and the activations of its share of the batch."""
    size = config.image_size or dataset_info(config.dataset).image_size
    channels = dataset_info(config.dataset).channels
    model = create_model(config.model, num_classes=num_classes, in_chans=channels, **config.model_args)
    with torch.enable_grad():
        per_sample = activation_bytes_per_sample(model, channels, size, config.channels_last)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    local_batch = max(1, config.batch_size // processes)
    # Backward holds the gradients of the layer in hand beside what is saved, and the allocator keeps freed
    # blocks: 1.3x the saved tensors came within 10% of the peak RSS measured for ShuffleNet V2 and
    # MobileNet V2 at batches 8-64 and 32-224 px.
    return _resident_memory() + 4 * weights + int(1.3 * per_sample * local_batch)


def check_memory(config: TrainConfig, processes: int, num_classes: int) -> tuple[int, int]:
    """(estimated bytes per process, available bytes per process) for a CPU run; a ValueError naming both
    and the fixes when the estimate does not fit. (0, 0) where nothing is checked: CUDA, or no /proc."""
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    available = available_memory()
    if not device.startswith("cpu") or not available:
        return 0, 0
    estimate = estimate_memory(config, processes, num_classes)
    share = available // processes
    if estimate > share:
        size = config.image_size or dataset_info(config.dataset).image_size
        each, to_each = (f" in each of {processes} processes", " to each") if processes > 1 else ("", "")
        fewer = ", or fewer processes (--set cpu_processes=1)" if processes > 1 else ""
        raise ValueError(
            f"training would need about {estimate / GB:.1f} GB{each} (batch {config.batch_size // processes} "
            f"of {size}x{size} images on {config.model}) but {share / GB:.1f} GB is available{to_each}; "
            f"use a smaller --batch-size or --set image_size=...{fewer}"
        )
    return estimate, share


def memory_note(estimate: int, share: int) -> str:
    """The estimate and what was available, for a message about a process the kernel killed."""
    if not estimate:
        return ""
    return f"estimated {estimate / GB:.1f} GB per process, {share / GB:.1f} GB available"


def world_size() -> int:
    """The processes of a torchrun job (WORLD_SIZE), 1 outside one."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def class_count(config: TrainConfig) -> int:
    """The dataset's number of classes; for an image folder, its class folders under train/."""
    known = dataset_info(config.dataset).num_classes
    if known:
        return known
    root = Path(config.data_dir or "").expanduser() / "train"
    return sum(1 for entry in os.scandir(root) if entry.is_dir()) if root.is_dir() else 1000
