"""Channel shuffle, ShuffleNet V1 section 3.1 (Fig. 1c)."""

from __future__ import annotations

import torch
from torch import nn

from shufflenet._validation import require_divisible


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Shuffle channels across ``groups`` (ShuffleNet V1 section 3.1).

    The channel axis of size ``g * n`` is reshaped to ``(g, n)``, transposed to ``(n, g)`` and flattened
    back, so that a following group convolution sees channels from every group. Equal to
    ``torch.nn.functional.channel_shuffle``. A channels_last input gives a channels_last output: the
    single copy is made in NHWC order instead of silently converting the layout.
    """
    if x.dim() != 4:
        raise ValueError(f"channel_shuffle expects an NCHW tensor, got {x.dim()} dimensions")
    batch, channels, height, width = x.shape
    require_divisible(channels, groups, "channel_shuffle: channels")
    if groups == 1:
        return x
    per_group = channels // groups
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1)
        shuffled = nhwc.reshape(batch, height, width, groups, per_group).transpose(3, 4)
        return shuffled.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    shuffled = x.reshape(batch, groups, per_group, height, width).transpose(1, 2)
    return shuffled.reshape(batch, channels, height, width)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`, so profilers and graph rewrites can see it."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
