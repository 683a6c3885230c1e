"""The structures ShuffleNet is compared with at equal complexity, Zhang et al. 2018, section 4.2 and Table 4.

Each replaces the ShuffleNet unit in stages 2-4 of the same skeleton. The fourth peer, "Xception-like"
(ShuffleNet with g = 1 and no shuffle), is :class:`~shufflenet.blocks.ShuffleV1Unit` with ``groups=1``.
"""

from __future__ import annotations

import torch
from torch import nn

from shufflenet._validation import require_divisible
from shufflenet.blocks.common import ConvBNAct


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")


class VGGUnit(nn.Sequential):
    """The "VGG-like" peer (Zhang et al. 2018, section 4.2): two 3x3 convs, each followed by BN and ReLU, with
    no shortcut; the first conv carries the stride."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        _check_stride(stride)
        super().__init__(
            ConvBNAct(in_channels, out_channels, kernel_size=3, stride=stride),
            ConvBNAct(out_channels, out_channels, kernel_size=3),
        )
        self.stride = stride


class ResNetUnit(nn.Module):
    """The "ResNet" peer (Zhang et al. 2018, section 4.2; He et al. 2016's bottleneck): 1x1 -> 3x3 -> 1x1,
    BN after each conv and ReLU after the first two, added to the shortcut, then ReLU.

    The shortcut is the identity where shape allows; otherwise (stride 2 or a change of width) it is a
    strided 1x1 conv + BN, He et al.'s option B. The 3x3 conv carries the stride, as the depthwise conv
    does in the ShuffleNet unit it replaces (Zhang et al. 2018, Fig. 2c). ``cardinality > 1`` groups the
    3x3 conv, which makes it the ResNeXt peer (:class:`ResNeXtUnit`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, mid_channels: int, stride: int, cardinality: int = 1
    ) -> None:
        super().__init__()
        _check_stride(stride)
        require_divisible(mid_channels, cardinality, "bottleneck channels")
        self.stride = stride
        self.reduce = ConvBNAct(in_channels, mid_channels)
        self.conv = ConvBNAct(mid_channels, mid_channels, kernel_size=3, stride=stride, groups=cardinality)
        self.expand = ConvBNAct(mid_channels, out_channels, activation=None)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            ConvBNAct(in_channels, out_channels, stride=stride, activation=None)
            if needs_projection
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.expand(self.conv(self.reduce(x))) + self.shortcut(x))


class ResNeXtUnit(ResNetUnit):
    """The "ResNeXt" peer (Zhang et al. 2018, section 4.2): the ResNet bottleneck with its 3x3 conv grouped,
    cardinality 16 (the paper pairs it with a 1:2 bottleneck ratio, "1:4 similar")."""

    def __init__(
        self, in_channels: int, out_channels: int, *, mid_channels: int, stride: int, cardinality: int = 16
    ) -> None:
        super().__init__(
            in_channels, out_channels, mid_channels=mid_channels, stride=stride, cardinality=cardinality
        )
