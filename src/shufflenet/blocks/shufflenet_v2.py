"""The ShuffleNet V2 unit, Ma et al. 2018, section 3 and Fig. 3 (c) and (d)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from shufflenet._validation import require_divisible
from shufflenet.ops import channel_shuffle, concat_shuffle

Layout = Literal["paper", "torchvision"]


def _depthwise(channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
    ]


def _pointwise_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 unit (Fig. 3c basic unit, Fig. 3d spatial down-sampling unit).

    Stride 1: channel split in halves; one half passes untouched (G3: less fragmentation), the other goes
    1x1 conv -> BN -> ReLU -> 3x3 depthwise -> BN -> 1x1 conv -> BN -> ReLU with equal widths (G1); concat
    (no element-wise add, G4) and channel shuffle with 2 groups. Stride 2: no split; ``branch1`` is
    depthwise (stride 2) -> BN -> 1x1 conv -> BN -> ReLU, ``branch2`` the main branch with stride 2.

    ``layout="paper"`` follows the authors' release, which the paper's FLOPs (Table 5) need: in the
    stride-2 unit ``branch1`` keeps the input width and ``branch2`` outputs ``out - in``.
    ``layout="torchvision"`` splits the output evenly between branches, matching torchvision's
    ``shufflenet_v2_x*`` key for key. The bottleneck is ``out // 2`` in both.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        layout: Layout = "paper",
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if layout not in ("paper", "torchvision"):
            raise ValueError(f"layout must be 'paper' or 'torchvision', got {layout!r}")
        require_divisible(out_channels, 2, "ShuffleNet V2 unit output channels")
        self.stride = stride
        self.shuffle = shuffle
        mid_channels = out_channels // 2
        if stride == 1:
            if in_channels != out_channels:
                raise ValueError(
                    f"a stride-1 unit splits and concatenates, so in_channels ({in_channels}) must equal "
                    f"out_channels ({out_channels}); use stride=2 to change width"
                )
            self.branch1 = nn.Sequential()
            self.branch2 = nn.Sequential(
                *_pointwise_relu(mid_channels, mid_channels),
                *_depthwise(mid_channels, 1),
                *_pointwise_relu(mid_channels, mid_channels),
            )
            return
        shortcut_channels = in_channels if layout == "paper" else mid_channels
        if out_channels <= shortcut_channels:
            raise ValueError(
                f"out_channels ({out_channels}) must exceed the shortcut branch width ({shortcut_channels})"
            )
        self.branch1 = nn.Sequential(
            *_depthwise(in_channels, stride), *_pointwise_relu(in_channels, shortcut_channels)
        )
        self.branch2 = nn.Sequential(
            *_pointwise_relu(in_channels, mid_channels),
            *_depthwise(mid_channels, stride),
            *_pointwise_relu(mid_channels, out_channels - shortcut_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            first, second = kept, self.branch2(transformed)
        else:
            first, second = self.branch1(x), self.branch2(x)
        if self.shuffle and first.shape == second.shape:
            return concat_shuffle(first, second)
        out = torch.cat((first, second), dim=1)
        return channel_shuffle(out, 2) if self.shuffle else out
