"""Channel-index helpers shared by the lowering (:mod:`shufflenet.deploy.lower`) and the deploy graph
(:mod:`shufflenet.deploy.graph`): where a channel shuffle takes each channel from, and channel runs."""

from __future__ import annotations

from collections.abc import Sequence


def shuffle_source(channels: int, groups: int) -> list[int]:
    """``src`` with ``channel_shuffle(x, groups)[:, k] == x[:, src[k]]`` (Zhang et al. 2018, section 3.1)."""
    per_group = channels // groups
    return [(k % groups) * per_group + k // groups for k in range(channels)]


def contiguous_runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Positions, in the order given, grouped into ``(start, stop)`` runs of consecutive values."""
    runs: list[list[int]] = []
    for position in positions:
        if runs and runs[-1][1] == position:
            runs[-1][1] += 1
        else:
            runs.append([position, position + 1])
    return [(start, stop) for start, stop in runs]
