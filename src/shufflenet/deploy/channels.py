"""Channel-permutation helpers shared by the deploy graph (:mod:`shufflenet.deploy.optimize`) and the C
engine's planner (:mod:`shufflenet.deploy.engine`): where a channel shuffle takes each channel from, and
the conv shapes both treat specially."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def shuffle_source(channels: int, groups: int) -> list[int]:
    """``src`` with ``channel_shuffle(x, groups)[:, k] == x[:, src[k]]``."""
    per_group = channels // groups
    return [(k % groups) * per_group + k // groups for k in range(channels)]


def inverse(permutation: Sequence[int]) -> list[int]:
    """The permutation that undoes ``permutation``: ``inverse(p)[p[i]] == i``."""
    result = [0] * len(permutation)
    for position, value in enumerate(permutation):
        result[value] = position
    return result


def contiguous_runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending positions grouped into ``(start, stop)`` runs of consecutive values."""
    runs: list[list[int]] = []
    for position in positions:
        if runs and runs[-1][1] == position:
            runs[-1][1] += 1
        else:
            runs.append([position, position + 1])
    return [(start, stop) for start, stop in runs]


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A depthwise conv: one group per channel, as many outputs as inputs."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
