"""Loaders whose every batch is a function of (seed, epoch, position): the same on 1 process or N, and the
same after a resume from the middle of an epoch.

Two things make that hold. The training order is one permutation per epoch (seeded ``seed + epoch``) that
the ranks share out batch by batch, so with a global batch B, rank r of W gets samples ``r, r + W, ...`` of
each block of B: the union over ranks is exactly the single-process batch. And augmentation draws its
randomness from a generator seeded per (seed, epoch, sample), not from a worker's running RNG, so skipping
the first k batches of an epoch, or spreading them over other workers, changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from shufflenet.data.datasets import collate_skip_none


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-spread 64-bit number for (seed, epoch, index): splitmix64's finalizer, pure integer
    arithmetic, so it needs no RNG state and is the same in every process."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) % 2**64
    return value ^ (value >> 31)


class AugmentedDataset(Dataset):
    """``base`` (yielding ``(image, label)`` or None for a skipped bad image) with ``transform`` applied.

    Indexed by ``(epoch, index)`` (what :class:`TrainSampler` yields), the transform's random draws come
    from a seed of (seed, epoch, index), so they do not depend on the worker or on what ran before. A plain
    integer index applies the transform without reseeding (evaluation transforms are not random).
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], Any], *, seed: int = 0) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.skip_bad_images = getattr(base, "skip_bad_images", False)

    def __len__(self) -> int:
        return len(self.base)

    def _get(self, index: int) -> Any:
        sample = self.base[index]
        if sample is None:
            return None
        image, label = sample
        return self.transform(image), label

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, int):
            return self._get(key)
        epoch, index = key
        # Save and restore the CPU generator by hand: torch.random.fork_rng is far slower, once per sample.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(sample_seed(self.seed, epoch, index))
        try:
            return self._get(index)
        finally:
            generator.set_state(state)

    def to_device(self, batch: Any, device: torch.device, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A collated batch -> (images, labels) on ``device`` (the transforms already ran per sample)."""
        images, targets = batch
        return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


class TrainSampler(Sampler[tuple[int, int]]):
    """Rank ``rank``'s share of epoch ``epoch``: ``(epoch, index)`` pairs from the epoch's permutation,
    starting after ``skip_batches`` batches; incomplete global batches at the end are dropped."""

    def __init__(
        self,
        dataset_size: int,
        *,
        global_batch: int,
        epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip_batches: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"batch size {global_batch} does not split over {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        self.steps = steps_per_epoch(dataset_size, global_batch)
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(dataset_size, generator=generator)[: self.steps * global_batch]
        self.local_batch = global_batch // world_size
        self.indices = order[rank::world_size][skip_batches * self.local_batch :].tolist()
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in self.indices)


def steps_per_epoch(dataset_size: int, global_batch: int) -> int:
    """Optimizer steps in one epoch (incomplete final batches are dropped); at least one."""
    if global_batch > dataset_size:
        raise ValueError(
            f"batch size {global_batch} is larger than the dataset ({dataset_size} samples); "
            "use a smaller --batch-size"
        )
    return dataset_size // global_batch


def build_train_loader(dataset: Dataset, *, num_workers: int = 0, **sampler_args: Any) -> DataLoader:
    """The loader for one training epoch of this rank: ``sampler_args`` are :class:`TrainSampler`'s
    (``global_batch``, ``epoch``, ``seed``, ``rank``, ``world_size``, ``skip_batches``); batches hold
    ``global_batch / world_size`` samples."""
    sampler = TrainSampler(len(dataset), **sampler_args)
    return _loader(dataset, sampler, sampler.local_batch, num_workers, drop_last=True)


def build_eval_loader(
    dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0
) -> DataLoader:
    """In-order evaluation over this rank's shard (every ``world_size``-th sample, no padding, so the
    all-reduced counts cover each sample exactly once)."""
    return _loader(dataset, list(range(rank, len(dataset), world_size)), batch_size, num_workers, False)


def _loader(dataset: Dataset, sampler, batch_size: int, num_workers: int, drop_last: bool) -> DataLoader:
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        # A dataset may say how its samples batch (detection: lists of images and targets).
        collate_fn=getattr(dataset, "collate", None)
        or (collate_skip_none if getattr(dataset, "skip_bad_images", False) else None),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        # Its own generator: drawing worker seeds from the global RNG would shift the training RNG stream
        # (dropout) depending on when a loader is made, which breaks exact resume.
        generator=torch.Generator().manual_seed(0),
    )
