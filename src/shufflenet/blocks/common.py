"""Building pieces shared by the unit modules: conv + BN + activation, squeeze-and-excitation, rounding."""

from __future__ import annotations

from torch import nn

from shufflenet._validation import require_divisible


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (halves round up), never below ``min_value``
    (default ``divisor``) and never more than 10% below ``value``.

    This is the width rule of the MobileNet V2 reference code; ShuffleNet V1 uses it with ``divisor = 4g``
    so that the bottleneck (a quarter of the output) splits into ``g`` groups.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation, indexed 0/1/2 like torchvision's layers so
    state_dicts line up key for key."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        require_divisible(in_channels, groups, "input channels")
        require_divisible(out_channels, groups, "output channels")
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.stride = stride


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.), as in Zhang et al. 2018, Table 5's "with SE" row: global pool,
    1x1 reduce by ``reduction``, ReLU, 1x1 expand, sigmoid gate."""

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.expand(self.act(self.reduce(scale))))
        return x * scale
