"""Shift operations: the grouped shift of ShiftNet and the Sparse Shift Layer (SSL) of Chen et al. 2019
("All You Need is a Few Shifts", Chen et al., 2019), in plain PyTorch on CPU and GPU.

Convention: shifting a channel by ``(dy, dx)`` moves its content ``dy`` rows down and ``dx`` columns
right, ``out[i, j] = x[i - dy, j - dx]``, with zeros where nothing moves in (``torch.roll`` with the
wrapped part zeroed). The SSL's learnable displacement per channel is ``(alpha, beta)``: ``alpha`` along
the width (dx), ``beta`` along the height (dy).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shufflenet._table import markdown_table
from shufflenet.ops._layout import is_channels_last

SHIFT_INITS = ("grouped", "zero")
PENALTY_NORMS = ("l1", "l2")


def integer_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift every channel of an NCHW tensor by its own integer ``(dy[c], dx[c])``, zero fill.

    One zero-pad and one gather over the flattened maps, so any mix of displacements costs the same; the
    gradient with respect to ``x`` is the inverse shift (gather's backward scatters back). A channels_last
    input gives a channels_last output.
    """
    if x.dim() != 4:
        raise ValueError(f"integer_shift expects an NCHW tensor, got {x.dim()} dimensions")
    channels = x.shape[1]
    if dy.shape != (channels,) or dx.shape != (channels,):
        raise ValueError(
            f"integer_shift needs one displacement per channel ({channels}), "
            f"got dy {tuple(dy.shape)} and dx {tuple(dx.shape)}"
        )
    return _shifted_window(x, dy, dx, margin=0)


def _shifted_window(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, margin: int) -> torch.Tensor:
    """:func:`integer_shift` computed on a window ``margin`` pixels larger on every side:
    ``out[i, j] = x[i - margin - dy, j - margin - dx]``, zero where that is outside ``x``."""
    batch, channels, height, width = x.shape
    out_height, out_width = height + 2 * margin, width + 2 * margin
    rows = torch.arange(out_height, device=x.device) - margin - dy.to(x.device, torch.long)[:, None]
    cols = torch.arange(out_width, device=x.device) - margin - dx.to(x.device, torch.long)[:, None]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    # Gather from the unpadded map (outside positions read a clamped neighbour) and zero them after: one
    # pass over the data fewer than padding first.
    source = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
    outside = ~inside
    if is_channels_last(x):
        # Gather in NHWC order so a channels_last input stays channels_last, with no layout copies.
        index = source.reshape(channels, -1).t().reshape(1, -1, channels)
        out = x.permute(0, 2, 3, 1).reshape(batch, -1, channels).gather(1, index.expand(batch, -1, -1))
        out = out.masked_fill_(outside.reshape(channels, -1).t(), 0)
        return out.view(batch, out_height, out_width, channels).permute(0, 3, 1, 2)
    index = source.reshape(1, channels, -1)
    out = x.reshape(batch, channels, -1).gather(2, index.expand(batch, -1, -1))
    out = out.masked_fill_(outside.reshape(1, channels, -1), 0)
    return out.view(batch, channels, out_height, out_width)


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    return values.view(1, -1, 1, 1)


def bilinear_shift(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The relaxed shift: each channel moved by a real ``(beta, alpha)`` with bilinear interpolation, i.e.
    the four integer shifts around the displacement weighted by their distance (Active Shift Layer).

    Differentiable in ``alpha`` and ``beta`` through the weights; the reference the SSL's
    quantization-aware gradient is defined from (Chen et al. 2019, section 3.3), and its tests' oracle.
    """
    alpha_low, beta_low = torch.floor(alpha), torch.floor(beta)
    ta, tb = _per_channel(alpha - alpha_low), _per_channel(beta - beta_low)
    a0, b0 = alpha_low.long(), beta_low.long()
    return (
        (1 - tb) * (1 - ta) * integer_shift(x, b0, a0)
        + (1 - tb) * ta * integer_shift(x, b0, a0 + 1)
        + tb * (1 - ta) * integer_shift(x, b0 + 1, a0)
        + tb * ta * integer_shift(x, b0 + 1, a0 + 1)
    )


def _neighbour_products(
    grad: torch.Tensor, x: torch.Tensor, b0: torch.Tensor, a0: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Per channel ``<grad, shift(x, (b0 + i, a0 + j))>`` for ``i, j`` in ``{0, 1}``: the four integer
    neighbours the bilinear gradient needs, summed over batch and positions.

    ``x`` shifted by ``(b0, a0)`` on a window one pixel wider than the map puts every neighbour within one
    pixel, where all nine offsets' products are a depthwise 3x3 conv's weight gradient (an optimised
    kernel): ``products[c, 0, u, v] = <grad, shift(x, (b0 + 1 - u, a0 + 1 - v))>``."""
    channels = x.shape[1]
    window = _shifted_window(x, b0, a0, margin=1)
    products = torch.nn.grad.conv2d_weight(window, (channels, 1, 3, 3), grad, groups=channels)
    flat = products.reshape(channels, 9)
    # (i, j) = (0, 0), (0, 1), (1, 0), (1, 1) sit at (u, v) = (1, 1), (1, 0), (0, 1), (0, 0).
    return flat[:, 4], flat[:, 3], flat[:, 1], flat[:, 0]


class _QuantizedShift(torch.autograd.Function):
    """Forward: the integer shift by the rounded displacement. Backward: the inverse shift for the input;
    for ``alpha``/``beta`` the gradient of :func:`bilinear_shift` at the unrounded displacement (a
    straight-through estimator: the quantization-aware shift learning of Chen et al. 2019, section 3.3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha, beta)
        return integer_shift(x, torch.round(beta), torch.round(alpha))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, alpha, beta = ctx.saved_tensors
        grad_x = grad_alpha = grad_beta = None
        if ctx.needs_input_grad[0]:
            grad_x = integer_shift(grad, -torch.round(beta), -torch.round(alpha))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            alpha_low, beta_low = torch.floor(alpha), torch.floor(beta)
            ta, tb = alpha - alpha_low, beta - beta_low
            a0, b0 = alpha_low.long(), beta_low.long()

            d00, d01, d10, d11 = _neighbour_products(grad, x, b0, a0)
            grad_alpha = ((1 - tb) * (d01 - d00) + tb * (d11 - d10)).to(alpha.dtype)
            grad_beta = ((1 - ta) * (d10 - d00) + ta * (d11 - d01)).to(beta.dtype)
        return grad_x, grad_alpha, grad_beta


def quantized_shift(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The SSL's shift (Chen et al. 2019, section 3.3): integer shift by ``round(beta), round(alpha)``
    forward, bilinear-interpolation gradients for ``alpha`` and ``beta`` backward."""
    return _QuantizedShift.apply(x, alpha, beta)


def grouped_offsets(channels: int, kernel_size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The k x k window's offsets spread over equal channel groups (ShiftNet; the SSL's initialisation).

    Channel group ``g`` of ``channels // k^2`` channels takes the offset ``(g // k - k // 2, g % k - k // 2)``
    as ``(dy, dx)``; the remainder channels stay unshifted. Returns ``(dy, dx)`` as integer tensors.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    positions = kernel_size * kernel_size
    group_size = channels // positions
    dy = torch.zeros(channels, dtype=torch.long)
    dx = torch.zeros(channels, dtype=torch.long)
    if group_size:
        group = torch.arange(group_size * positions) // group_size
        dy[: len(group)] = group // kernel_size - kernel_size // 2
        dx[: len(group)] = group % kernel_size - kernel_size // 2
    return dy, dx


def _tracing_for_export() -> bool:
    """True inside the TorchScript tracer or ONNX export: they cannot record the per-channel gather of
    :func:`integer_shift`, so shift layers hand them their exact inference form (Slice, Pad, Concat)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class _ShiftLayer(nn.Module):
    """A per-channel integer displacement (``displacement()``) applied by ``shift()``; exporters are
    handed the exact inference form instead."""

    def displacement(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _tracing_for_export():
            return SegmentShift.from_layer(self)(x)
        return self.shift(x)


class GroupedShift(_ShiftLayer):
    """ShiftNet's shift (Wu et al., 2018; Chen et al. 2019, Table 1 "GroupedShift"): fixed directions of a
    ``kernel_size`` x ``kernel_size`` window, one per channel group, no parameters."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        dy, dx = grouped_offsets(channels, kernel_size)
        self.register_buffer("dy", dy, persistent=False)
        self.register_buffer("dx", dx, persistent=False)

    def displacement(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer ``(dy, dx)`` per channel."""
        return self.dy, self.dx

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        return integer_shift(x, self.dy, self.dx)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"


class SparseShift(_ShiftLayer):
    """Sparse Shift Layer (Chen et al. 2019, section 3): a learnable displacement ``(alpha, beta)`` per
    channel.

    Forward moves each channel by the rounded displacement (no interpolation); backward trains ``alpha``
    and ``beta`` with the bilinear gradient at the unrounded position. ``init="grouped"`` starts from the
    3x3 window's nine offsets spread over channel groups (the authors' initialisation), ``"zero"`` from no
    shift. Sparsity comes from :func:`shift_penalty` added to the loss (eq. 4).
    """

    def __init__(self, channels: int, *, init: str = "grouped") -> None:
        super().__init__()
        if init not in SHIFT_INITS:
            raise ValueError(f"init must be one of {', '.join(SHIFT_INITS)}, got {init!r}")
        self.channels = channels
        if init == "grouped":
            dy, dx = grouped_offsets(channels)
        else:
            dy, dx = torch.zeros(channels), torch.zeros(channels)
        self.alpha = nn.Parameter(dx.float())
        self.beta = nn.Parameter(dy.float())

    def displacement(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer ``(dy, dx)`` per channel: the displacement the forward pass applies."""
        return torch.round(self.beta.detach()).long(), torch.round(self.alpha.detach()).long()

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        return quantized_shift(x, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"{self.channels}"


SHIFT_LAYERS = (SparseShift, GroupedShift)


@dataclass(frozen=True)
class ShiftSegment:
    """Channels ``start:stop`` all moved by ``(dy, dx)``."""

    start: int
    stop: int
    dy: int
    dx: int


def shift_segments(dy: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, list[ShiftSegment]]:
    """Group channels by displacement: a channel order (unshifted channels first, then one run per
    displacement) and the runs it makes, ``(order, segments)``; ``x[:, order]`` has contiguous runs."""
    keys = [(int(a), int(b)) for a, b in zip(dy.tolist(), dx.tolist(), strict=True)]
    # Unshifted first, then by displacement; the sort is stable so channels keep their relative order.
    order = sorted(range(len(keys)), key=lambda c: (keys[c] != (0, 0), keys[c]))
    segments: list[ShiftSegment] = []
    for position, channel in enumerate(order):
        shift = keys[channel]
        if segments and (segments[-1].dy, segments[-1].dx) == shift:
            last = segments[-1]
            segments[-1] = ShiftSegment(last.start, position + 1, last.dy, last.dx)
        else:
            segments.append(ShiftSegment(position, position + 1, *shift))
    return torch.tensor(order, dtype=torch.long), segments


class SegmentShift(nn.Module):
    """The inference form of a shift layer: integer displacements fixed, channels grouped in runs that
    share one, and only the shifted runs moved (Chen et al. 2019, Fig. 2e: unshifted maps cost nothing).

    ``order`` (optional) gathers the channels into runs first and scatters them back after; graph
    rewrites fold it into the neighbouring 1x1 convolutions instead. With ``in_place=True`` the shifted
    runs are written over the input (which must not be needed elsewhere) so unshifted channels are not
    even copied; exports always take the out-of-place form (one Pad, a Slice per run, Concat).
    """

    def __init__(
        self, segments: Sequence[ShiftSegment], order: torch.Tensor | None = None, *, in_place: bool = False
    ) -> None:
        super().__init__()
        self.segments = tuple(segments)
        self.in_place = in_place
        if order is not None and torch.equal(order, torch.arange(len(order))):
            order = None
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", None if order is None else torch.argsort(order), persistent=False)

    @classmethod
    def from_layer(cls, layer: nn.Module, *, in_place: bool = False) -> SegmentShift:
        """The inference form of a :class:`SparseShift` or :class:`GroupedShift`, equal to it exactly."""
        order, segments = shift_segments(*layer.displacement())
        return cls(segments, order, in_place=in_place)

    def shifted_channels(self) -> int:
        return sum(s.stop - s.start for s in self.segments if (s.dy, s.dx) != (0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order is not None:
            x = x.index_select(1, self.order)
        moved = [s for s in self.segments if (s.dy, s.dx) != (0, 0)]
        if not moved:
            return x if self.inverse is None else x.index_select(1, self.inverse)
        # Unshifted runs are left alone (a slice and a pad per run made them a large share of FE-Net's time
        # on OpenVINO); shifted runs are windows of one zero pad: a slice per run plus two ops per layer.
        low, high = min(s.start for s in moved), max(s.stop for s in moved)
        margin = max(max(abs(s.dy), abs(s.dx)) for s in moved)
        height, width = x.shape[-2:]
        padded = F.pad(x[:, low:high], (margin, margin, margin, margin))

        def window(s: ShiftSegment) -> torch.Tensor:
            rows, cols = margin - s.dy, margin - s.dx
            return padded[:, s.start - low : s.stop - low, rows : rows + height, cols : cols + width]

        if self.in_place and self.order is None and not _tracing_for_export():
            for s in moved:
                x[:, s.start : s.stop] = window(s)
            return x
        pieces = [window(s) if (s.dy, s.dx) != (0, 0) else x[:, s.start : s.stop] for s in self.segments]
        out = torch.cat(pieces, 1)
        return out if self.inverse is None else out.index_select(1, self.inverse)

    def extra_repr(self) -> str:
        return f"segments={len(self.segments)}, shifted={self.shifted_channels()}, in_place={self.in_place}"


def shift_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` for every shift layer of ``model`` (SSL or grouped), in forward order."""
    for name, module in model.named_modules():
        if isinstance(module, SHIFT_LAYERS):
            yield name, module


def remove_shifts(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Replace the named shift layers by identities, in place (Chen et al. 2019, Table 3: the network without
    its least important shift layers); returns ``model``."""
    known = dict(shift_layers(model))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no shift layer named {', '.join(unknown)}; this model's: {', '.join(known)}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        model.get_submodule(parent_name)._modules[child] = nn.Identity()
    return model


def shift_penalty(model: nn.Module, norm: str = "l1") -> torch.Tensor:
    """Chen et al. 2019, eq. 4: ``|alpha|_1 + |beta|_1`` summed over every SSL of ``model`` (``norm="l2"``:
    the squared L2 norms, which section 4.1 found slightly better on CIFAR). Multiply by lambda yourself."""
    if norm not in PENALTY_NORMS:
        raise ValueError(f"norm must be one of {', '.join(PENALTY_NORMS)}, got {norm!r}")
    terms = []
    for _, layer in shift_layers(model):
        if isinstance(layer, SparseShift):
            both = torch.cat([layer.alpha, layer.beta])
            terms.append(both.abs().sum() if norm == "l1" else both.square().sum())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def shift_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The SSL displacements of ``model`` (trained with their own schedule: frozen at a chosen epoch)."""
    layers = [layer for _, layer in shift_layers(model) if isinstance(layer, SparseShift)]
    return [parameter for layer in layers for parameter in layer.parameters()]


@dataclass(frozen=True)
class ShiftSparsityRow:
    """One line of Chen et al. 2019, Table 2: a shift layer's unshifted and total channels."""

    layer: str
    unshifted: int
    channels: int

    @property
    def sparsity(self) -> float:
        return self.unshifted / self.channels if self.channels else 1.0


def shift_sparsity(model: nn.Module) -> list[ShiftSparsityRow]:
    """Per shift layer, the channels the rounded displacement leaves in place (Chen et al. 2019, Table 2)."""
    rows = []
    for name, layer in shift_layers(model):
        dy, dx = layer.displacement()
        rows.append(ShiftSparsityRow(name, int(((dy == 0) & (dx == 0)).sum()), len(dy)))
    return rows


def total_sparsity(rows: Sequence[ShiftSparsityRow]) -> ShiftSparsityRow:
    """The whole network's line of Table 2: unshifted and total channels over every shift layer."""
    return ShiftSparsityRow("total", sum(r.unshifted for r in rows), sum(r.channels for r in rows))


def sparsity_table(rows: Sequence[ShiftSparsityRow]) -> str:
    """Chen et al. 2019, Table 2 as Markdown: layer, unshifts / channels, shift sparsity, and the total."""
    total = total_sparsity(rows)
    body = [
        [name, f"{row.unshifted} / {row.channels}", f"{100 * row.sparsity:.1f}%"]
        for name, row in [*((row.layer, row) for row in rows), ("**total**", total)]
    ]
    return markdown_table(["layer", "unshifts / channels", "shift sparsity"], body)
