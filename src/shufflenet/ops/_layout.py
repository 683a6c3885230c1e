"""Memory-layout test shared by the operators that keep a channels_last input channels_last."""

from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is laid out NHWC and not also plain NCHW-contiguous (1x1 maps and single channels
    are both, and take the NCHW path)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
