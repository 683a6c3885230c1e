"""Shift-based units: ShiftNet's conv-shift-conv (CSC) residual unit and FE-Net's inverted bottlenecks and
FE-Block (Chen et al. 2019, "All You Need is a Few Shifts", Fig. 3, Fig. 4 and eq. 8)."""

from __future__ import annotations

import torch
from torch import nn

from shufflenet.blocks.common import ConvBNAct, SqueezeExcite
from shufflenet.ops import GroupedShift, SparseShift

SHIFT_KINDS = ("ssl", "grouped", "none")
SPATIAL_OPS = ("ssl", "dw")
POOL_POSITIONS = ("after", "before")
# What a unit's expansion t multiplies: its input width (Chen et al. 2019, Table 2; MobileNet V2) or its
# output width (the ShiftNet and FE-Net releases).
EXPANSION_BASES = ("in", "out")
# Squeeze-and-excitation on the expanded channels squeezes them to a quarter (Howard et al. 2019,
# MobileNet V3, section 5.3), the placement FE-Net's SE variant follows (see InvertedBottleneck).
SE_REDUCTION = 4


def make_shift(kind: str, channels: int, ssl_init: str = "grouped") -> nn.Module:
    """The spatial step of a shift unit: ``"ssl"`` a Sparse Shift Layer (initialised as ``ssl_init``),
    ``"grouped"`` ShiftNet's fixed shift, ``"none"`` an identity (Chen et al. 2019, Table 1 "1x1 only")."""
    if kind == "ssl":
        return SparseShift(channels, init=ssl_init)
    if kind == "grouped":
        return GroupedShift(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"shift must be one of {', '.join(SHIFT_KINDS)}, got {kind!r}")


def _require_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")


class CSCUnit(nn.Module):
    """ShiftResNet's conv-shift-conv residual unit (Wu et al., 2018; Chen et al. 2019, section 4.1): 1x1
    expand to ``hidden`` channels -> BN -> ReLU -> shift -> 1x1 reduce (stride) -> BN, plus the shortcut
    (identity, or 1x1 conv with the stride + BN where the shape changes), then ReLU.

    ``hidden`` is ``expansion`` times the unit's ``"out"`` width (default, the ShiftNet release) or its
    ``"in"`` width (Chen et al. 2019, Table 2); the two differ only in a stage's first unit.

    The stride sits on the second 1x1 conv, after the shift, as in the ShiftResNet release: a strided first
    1x1 would drop three quarters of the positions before the shift could move any of them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        expansion: int = 6,
        shift: str = "ssl",
        ssl_init: str = "grouped",
        expand_from: str = "out",
    ) -> None:
        super().__init__()
        _require_stride(stride)
        hidden = expansion * _expansion_base(in_channels, out_channels, expand_from)
        self.expand = ConvBNAct(in_channels, hidden)
        self.shift = make_shift(shift, hidden, ssl_init)
        self.reduce = ConvBNAct(hidden, out_channels, stride=stride, activation=None)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = ConvBNAct(in_channels, out_channels, stride=stride, activation=None)
        self.act = nn.ReLU(inplace=True)
        self.stride, self.hidden = stride, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.reduce(self.shift(self.expand(x))) + self.shortcut(x))


class InvertedBottleneck(nn.Module):
    """FE-Net's basic unit (Chen et al. 2019, Fig. 4): 1x1 expand to ``expansion * out_channels`` -> BN ->
    ReLU -> spatial op -> 1x1 project -> BN, linear at the end as in MobileNet V2.

    ``spatial``: ``"ssl"`` (IB-SSL, Fig. 4a; the SSL alone gives the receptive field), ``"dw"`` (a 3x3
    depthwise conv + BN in the SSL's place: FE-Net (DW) of Table 6). ``residual=True`` adds the identity
    (Fig. 4b; no ReLU after the add). The expansion is relative to the output width, as in the authors'
    release; ``expand_from="in"`` takes it relative to the input (the two differ only where the width
    changes).

    ``se=True`` adds squeeze-and-excitation on the expanded channels after the spatial op, before the
    projection, squeezing them to a quarter, as MobileNet V3 (Howard et al. 2019, section 5.3) places it
    in the same unit; Chen et al. 2019, Fig. 7 reports FE-Net with SE without saying where it sits.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expansion: int,
        spatial: str = "ssl",
        residual: bool = False,
        expand_from: str = "out",
        ssl_init: str = "grouped",
        se: bool = False,
    ) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError(f"a residual unit keeps its width, got {in_channels} -> {out_channels}")
        mid = expansion * _expansion_base(in_channels, out_channels, expand_from)
        self.expand = ConvBNAct(in_channels, mid)
        if spatial == "ssl":
            self.spatial: nn.Module = SparseShift(mid, init=ssl_init)
        elif spatial == "dw":
            self.spatial = ConvBNAct(mid, mid, kernel_size=3, groups=mid, activation=None)
        else:
            raise ValueError(f"spatial must be one of {', '.join(SPATIAL_OPS)}, got {spatial!r}")
        self.se = SqueezeExcite(mid, reduction=SE_REDUCTION) if se else nn.Identity()
        self.project = ConvBNAct(mid, out_channels, activation=None)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.spatial(self.expand(x))))
        return x + out if self.residual else out


class PoolBottleneck(nn.Module):
    """IB-Pool (Chen et al. 2019, Fig. 4c), FE-Net's down-sampling unit: an inverted bottleneck whose spatial
    op is a 2x2 average pool with stride 2.

    ``pool="after"``: 1x1 expand at the input resolution -> BN -> ReLU -> pool -> 1x1 project -> BN, as
    the authors released it. ``pool="before"``: pool first, so the expansion runs at the pooled resolution
    (a quarter of the multiply-adds; the reading that reproduces the paper's MAdds, see
    :mod:`shufflenet.models.fenet`). Both are linear at the end and have the same parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expansion: int,
        pool: str = "after",
        expand_from: str = "out",
    ) -> None:
        super().__init__()
        if pool not in POOL_POSITIONS:
            raise ValueError(f"pool must be one of {', '.join(POOL_POSITIONS)}, got {pool!r}")
        mid = expansion * _expansion_base(in_channels, out_channels, expand_from)
        self.pool_first = pool == "before"
        self.expand = ConvBNAct(in_channels, mid)
        self.pool = nn.AvgPool2d(2, stride=2)
        self.project = ConvBNAct(mid, out_channels, activation=None)
        self.stride = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_first:
            return self.project(self.expand(self.pool(x)))
        return self.project(self.pool(self.expand(x)))


def _expansion_base(in_channels: int, out_channels: int, expand_from: str) -> int:
    if expand_from == "out":
        return out_channels
    if expand_from == "in":
        return in_channels
    raise ValueError(
        f"expand_from must be 'in' (the expansion times the unit's input width) or 'out' (times its "
        f"output width), got {expand_from!r}"
    )


def transition_unit(
    in_channels: int,
    out_channels: int,
    *,
    stride: int,
    expansion: int,
    spatial: str = "ssl",
    pool: str = "after",
    expand_from: str = "out",
    ssl_init: str = "grouped",
    se: bool = False,
) -> nn.Module:
    """FE-Net's unit that may change the width: IB-Pool for ``stride=2`` (Fig. 4c), else IB-SSL (Fig. 4a;
    IB-DW with ``spatial="dw"``). The last unit of every FE-Block and the two units after the stem.
    ``se`` applies to IB-SSL only: IB-Pool has no spatial op for SE to follow."""
    _require_stride(stride)
    if stride == 2:
        return PoolBottleneck(
            in_channels, out_channels, expansion=expansion, pool=pool, expand_from=expand_from
        )
    return InvertedBottleneck(
        in_channels,
        out_channels,
        expansion=expansion,
        spatial=spatial,
        expand_from=expand_from,
        ssl_init=ssl_init,
        se=se,
    )


def fe_block_split(channels: int, units: int) -> list[int]:
    """Channel parts of an FE-Block's input (Chen et al. 2019, Fig. 3): ``G = C / 2^(n-1)`` and the parts
    ``[2^(n-2) G, ..., 2G, G, G]``; unit ``l`` (``l < n``) transforms the last ``2^(l-1) G`` channels."""
    if units < 2:
        raise ValueError(f"an FE-Block needs at least 2 units, got {units}")
    parts = 2 ** (units - 1)
    if channels % parts:
        below = channels // parts * parts
        nearest = f"{below} or {below + parts}" if below else str(parts)
        raise ValueError(
            f"an FE-Block of {units} units splits its input into {parts} equal parts, but {channels} "
            f"channels are not divisible by {parts}; nearest valid: {nearest}"
        )
    group = channels // parts
    return [group * 2**k for k in range(units - 2, -1, -1)] + [group]


class FEBlock(nn.Module):
    """Fully-Exploited computational Block (Chen et al. 2019, Fig. 3, eq. 8): progressive mixing of feature
    maps.

    The input's ``C`` channels split as :func:`fe_block_split`. Unit 1, a residual IB-SSL, transforms the
    last ``G``; the part before it is concatenated in front (``[untouched, transformed]``) and unit 2
    transforms those ``2G``; after ``n - 1`` residual units every channel has been mixed in, and unit
    ``n`` maps all ``C`` to ``out_channels``: IB-Pool for ``stride=2``, IB-SSL for ``stride=1``. So each
    unit computes on only the maps not yet refined, while the rest flow on unchanged. ``se`` adds
    squeeze-and-excitation to its IB-SSL units (:class:`InvertedBottleneck`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        units: int,
        expansion: int = 6,
        stride: int = 1,
        spatial: str = "ssl",
        pool: str = "after",
        expand_from: str = "out",
        ssl_init: str = "grouped",
        se: bool = False,
    ) -> None:
        super().__init__()
        _require_stride(stride)
        self.split_sizes = fe_block_split(in_channels, units)
        group = self.split_sizes[-1]
        layers: list[nn.Module] = [
            InvertedBottleneck(
                group * 2**k,
                group * 2**k,
                expansion=expansion,
                spatial=spatial,
                residual=True,
                ssl_init=ssl_init,
                se=se,
            )
            for k in range(units - 1)
        ]
        layers.append(
            transition_unit(
                in_channels,
                out_channels,
                stride=stride,
                expansion=expansion,
                spatial=spatial,
                pool=pool,
                expand_from=expand_from,
                ssl_init=ssl_init,
                se=se,
            )
        )
        self.units = nn.ModuleList(layers)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.split_sizes, dim=1)
        mixed = parts[-1]
        # parts[-2], parts[-3], ... join in one per residual unit; the last unit sees all C channels. Eq. 8
        # writes f(I1) || I2; the order is only a channel permutation, which the next 1x1 conv absorbs, and
        # putting the untouched part in front mirrors the split, whose trailing parts are taken first.
        for index, unit in enumerate(self.units[:-1]):
            mixed = torch.cat([parts[-2 - index], unit(mixed)], dim=1)
        return self.units[-1](mixed)
