"""The deploy graph's eager form: modules that keep ``nn.Conv2d``/``nn.MaxPool2d`` parameters and export
graphs but run faster in PyTorch eager on CPU with channels_last tensors.

PyTorch sends a 1x1 convolution on CPU through its generic slow-conv path (an input copy when the input is
a channel slice, several dispatch layers, then a GEMM). On a channels_last tensor the same conv is one
matrix product of the NHWC pixel rows with the weight matrix, and a channel slice of such a tensor is
still a plain strided matrix, so the split of a ShuffleNet V2 unit costs nothing either. The stem's 3x3
stride-2 max-pool is four element-wise maxima of strided views instead of PyTorch's pool with indices.

While tracing, compiling or exporting, and for inputs this fast path does not cover, every module falls
back to its parent's ``forward``, so exported graphs keep their standard Conv/MaxPool nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def plain_eager(x: torch.Tensor) -> bool:
    """True when ``x`` is a real CPU tensor run eagerly (no tracer, compiler or exporter watching)."""
    return (
        type(x) is torch.Tensor
        and x.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
    )


def nhwc_rows(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` (N, C, H, W) as an (N*H*W, C) matrix view when it runs eagerly on CPU (:func:`plain_eager`)
    and its memory is NHWC with unit channel stride (a channels_last tensor or a channel slice of one);
    None otherwise: the caller then takes the plain module path."""
    if not plain_eager(x) or x.dim() != 4 or x.stride(1) != 1:
        return None
    try:
        return x.permute(0, 2, 3, 1).view(-1, x.shape[1])
    except RuntimeError:  # pixels not evenly spaced (e.g. a spatial crop): view() cannot merge them
        return None


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def _weight_matrix(conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv's weight as the (in, out) matrix that multiplies pixel rows (a view, no copy)."""
    return conv.weight.view(conv.out_channels, conv.in_channels).t()


def _affine(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return rows @ weight if bias is None else torch.addmm(bias, rows, weight)


def pointwise_rows(rows: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv on NHWC pixel rows (any row stride): one matrix product plus bias."""
    return _affine(rows, _weight_matrix(conv), conv.bias)


# One conv of a branch, prepared for :func:`run_on_rows`: (weight, bias, conv arguments, relu after).
# 1x1 convs carry the transposed weight matrix and no conv arguments; the others carry
# (stride, padding, dilation, groups) for F.conv2d.
RowStep = tuple[torch.Tensor, torch.Tensor | None, tuple | None, bool]


def row_steps(sequence: Iterable[nn.Module]) -> list[RowStep]:
    """``sequence`` (convs, each optionally followed by a ReLU) as steps for :func:`run_on_rows`. The
    steps hold views of the parameters: rebuild them after ``.to()`` or after replacing a parameter."""
    steps: list[RowStep] = []
    for module in sequence:
        if isinstance(module, nn.ReLU) and steps and not steps[-1][3]:
            steps[-1] = (*steps[-1][:3], True)
        elif isinstance(module, nn.Conv2d) and _is_pointwise(module):
            steps.append((_weight_matrix(module), module.bias, None, False))
        elif isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            arguments = (module.stride, module.padding, module.dilation, module.groups)
            steps.append((module.weight, module.bias, arguments, False))
        else:
            raise TypeError(f"row steps are convs each followed by at most one ReLU, not {module}")
    return steps


def run_on_rows(
    steps: Sequence[RowStep], rows: torch.Tensor, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Run ``steps`` on the NHWC pixel rows of a (batch, height, width) map; returns the output rows and
    their map's shape. 1x1 convs are matrix products (the rows may be a strided channel slice), other
    convs ``F.conv2d`` on the channels_last view; each ReLU runs in place on its conv's fresh output."""
    batch, height, width = shape
    for weight, bias, arguments, relu in steps:
        if arguments is None:
            rows = _affine(rows, weight, bias)
        else:
            out = F.conv2d(rows.view(batch, height, width, -1).permute(0, 3, 1, 2), weight, bias, *arguments)
            height, width = out.shape[-2:]
            rows = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
        if relu:
            rows.relu_()
    return rows, (batch, height, width)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped convolution computed in eager as one ``addmm`` on the NHWC pixel rows
    (output channels_last); otherwise exactly ``nn.Conv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = nhwc_rows(x)
        if rows is None:
            return super().forward(x)
        out = pointwise_rows(rows, self)
        batch, _, height, width = x.shape
        return out.view(batch, height, width, self.out_channels).permute(0, 3, 1, 2)

    @classmethod
    def covers(cls, conv: nn.Module) -> bool:
        """Whether ``conv`` is a plain 1x1 convolution this class can stand in for."""
        return type(conv) is nn.Conv2d and _is_pointwise(conv)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


class StridedMaxPool2d(nn.MaxPool2d):
    """3x3, stride-2, padding-1 max-pool (the ShuffleNet stem's) done in eager, for even heights and widths
    of a channels_last input, as row maxima then column maxima of strided views; otherwise
    ``nn.MaxPool2d``. Output rows ``i`` take input rows ``2i - 1, 2i, 2i + 1``: the max of the even/odd row
    pair ``2i, 2i + 1``, then with odd row ``2i - 1`` for ``i > 0``, which is what padding with -inf gives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (plain_eager(x) and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        batch, channels, height, width = x.shape
        if height % 2 or width % 2:
            return super().forward(x)
        pairs = x.permute(0, 2, 3, 1).reshape(batch, height // 2, 2, width, channels)
        odd_rows = pairs[:, :, 1]
        rows = torch.maximum(pairs[:, :, 0], odd_rows)
        torch.maximum(rows[:, 1:], odd_rows[:, :-1], out=rows[:, 1:])
        pairs = rows.view(batch, height // 2, width // 2, 2, channels)
        odd_cols = pairs[:, :, :, 1]
        out = torch.maximum(pairs[:, :, :, 0], odd_cols)
        torch.maximum(out[:, :, 1:], odd_cols[:, :, :-1], out=out[:, :, 1:])
        return out.permute(0, 3, 1, 2)

    @classmethod
    def covers(cls, pool: nn.Module) -> bool:
        """Whether ``pool`` is the plain 3x3/2 max-pool with padding 1 this class computes."""
        return (
            type(pool) is nn.MaxPool2d
            and _pair(pool.kernel_size) == (3, 3)
            and _pair(pool.stride) == (2, 2)
            and _pair(pool.padding) == (1, 1)
            and _pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode
            and not pool.return_indices
        )


def use_eager_kernels(module: nn.Module) -> nn.Module:
    """Give, in place, every plain 1x1 conv in ``module`` the :class:`PointwiseConv2d` forward and every
    3x3/2 max-pool the :class:`StridedMaxPool2d` one (same parameters and state-dict keys); returns
    ``module``."""
    for child in module.modules():
        # Subclasses that add no state: switching the class keeps every parameter, buffer and hook.
        if PointwiseConv2d.covers(child):
            child.__class__ = PointwiseConv2d
        elif StridedMaxPool2d.covers(child):
            child.__class__ = StridedMaxPool2d
    return module
