"""MobileNet units: depthwise-separable convolution (Howard et al. 2017, Fig. 3) and the inverted residual
with a linear bottleneck (Sandler et al. 2018, Table 1 and Fig. 4d)."""

from __future__ import annotations

import torch
from torch import nn

from shufflenet.blocks.common import ConvBNAct


class DepthwiseSeparable(nn.Sequential):
    """Howard et al. 2017, Fig. 3 right: 3x3 depthwise conv -> BN -> ReLU -> 1x1 conv -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels),
            ConvBNAct(in_channels, out_channels),
        )
        self.stride = stride


class InvertedResidual(nn.Module):
    """MobileNet V2 bottleneck (Table 1): 1x1 expand by ``expansion`` -> BN -> ReLU6 -> 3x3 depthwise
    (stride) -> BN -> ReLU6 -> 1x1 linear projection -> BN, plus the identity when stride is 1 and the width
    is unchanged. The expansion conv is omitted for ``expansion == 1``, as in the reference code. Layers
    live in ``conv`` indexed as in torchvision's ``InvertedResidual`` so weights load key for key."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expansion: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_channels * expansion)
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(in_channels, hidden, activation=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, kernel_size=3, stride=stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.stride = stride
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out
