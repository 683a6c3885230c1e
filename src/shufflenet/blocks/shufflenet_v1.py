"""The ShuffleNet V1 unit, Zhang et al. 2018, section 3.2 and Fig. 2 (b) and (c)."""

from __future__ import annotations

import torch
from torch import nn

from shufflenet._validation import require_divisible
from shufflenet.blocks.common import SqueezeExcite
from shufflenet.ops import ChannelShuffle


class ShuffleV1Unit(nn.Module):
    """ShuffleNet V1 unit (Fig. 2b for stride 1, Fig. 2c for stride 2).

    1x1 group conv -> BN -> ReLU -> channel shuffle -> 3x3 depthwise conv (stride) -> BN (no ReLU, section
    3.2) -> 1x1 group conv -> BN; stride 1 adds the identity, stride 2 concatenates a 3x3 average-pooled
    shortcut, and ReLU follows either. With stride 2 the residual branch outputs ``out - in`` channels so
    that the concatenation has ``out_channels``. ``first_pointwise_groups`` is 1 for the first unit of
    stage 2 (Table 1 note: too few input channels to group). ``shuffle=False`` is the Table 3 ablation and
    ``se=True`` adds squeeze-and-excitation to the residual branch (Table 5, "with SE").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        mid_channels: int,
        groups: int,
        stride: int,
        first_pointwise_groups: int | None = None,
        shuffle: bool = True,
        se: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 unit adds its input, so in_channels ({in_channels}) must equal "
                f"out_channels ({out_channels}); use stride=2 to change width"
            )
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        if branch_channels <= 0:
            raise ValueError(
                f"a stride-2 unit concatenates its input, so out_channels ({out_channels}) must exceed "
                f"in_channels ({in_channels})"
            )
        first_groups = groups if first_pointwise_groups is None else first_pointwise_groups
        require_divisible(in_channels, first_groups, "unit input channels")
        require_divisible(mid_channels, groups, "bottleneck channels")
        require_divisible(mid_channels, first_groups, "bottleneck channels")
        require_divisible(branch_channels, groups, "residual branch output channels")
        self.stride = stride
        self.pointwise1 = nn.Conv2d(in_channels, mid_channels, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu1 = nn.ReLU(inplace=True)
        # Shuffling only helps after a grouped conv; an ungrouped one already mixes every channel.
        self.shuffle = ChannelShuffle(first_groups) if shuffle and first_groups > 1 else nn.Identity()
        self.depthwise = nn.Conv2d(
            mid_channels, mid_channels, 3, stride=stride, padding=1, groups=mid_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.pointwise2 = nn.Conv2d(mid_channels, branch_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        self.se = SqueezeExcite(branch_channels) if se else nn.Identity()
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch alone (everything but the shortcut and the final ReLU)."""
        x = self.shuffle(self.relu1(self.bn1(self.pointwise1(x))))
        x = self.bn2(self.depthwise(x))
        return self.se(self.bn3(self.pointwise2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.residual(x)
        if self.stride == 2:
            return self.relu(torch.cat((self.shortcut(x), branch), dim=1))
        return self.relu(x + branch)
