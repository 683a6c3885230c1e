"""Post-training int8 quantization of a lowered program, and the integer interpreter that says what the
engine's int8 kernels compute (they are tested against it bit for bit).

Maps are affine uint8 per channel: channel c of a map holds q = round(x / scale[c]) + zero[c], q in 0..255,
its scale and zero point measured on calibration images. Per-channel map parameters cost the kernels
nothing (a conv folds its input scales into its weights and its input zero points into its bias) and keep
the papers' cheap operations cheap: a shuffle, split or concatenation moves channels along with their
parameters, so it stays addressing, and a copy, a max pool or a shift keeps its input's parameters and
moves bytes. Weights are symmetric int8 per output channel.

A conv's output channel n: ``acc = bias[n] + sum (q_in - zero_in) * weight[n]`` in int32, then in float32
``t = float(acc) * multiplier[n]`` (``+ float(q_res - zero_res) * residual_multiplier[n]``), clamped to
``[low[n], high[n]]`` (the activation and the uint8 range, in steps of the output's scale from its zero
point), rounded half to even, plus ``zero[n]``. The network's last conv (the classifier) writes
``float(acc) * multiplier[n]``: the logits in real units. Average pools and the global average scale a sum
of ``q - zero`` the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from shufflenet.deploy.lower import (
    Conv,
    Copy,
    GlobalAverage,
    Pool,
    Read,
    Shift,
    SqueezeExcite,
    Write,
    run_program,
    shift_channels,
)

if TYPE_CHECKING:
    from shufflenet.deploy.lower import Activation, Program

QMAX = 255
WEIGHT_MAX = 127
BIAS_LIMIT = 2**30  # |bias| + the largest sum of products stays inside int32


class QuantizationError(ValueError):
    """The program holds an operation int8 does not cover; the message names it."""


@dataclass(frozen=True)
class ChannelParams:
    """Per-channel affine parameters of a map: real = scale * (q - zero)."""

    scale: np.ndarray  # float32 (C,)
    zero: np.ndarray  # int32 (C,)

    def take(self, channels: Iterable[int]) -> ChannelParams:
        index = np.asarray(list(channels), np.int64)
        return ChannelParams(self.scale[index], self.zero[index])


@dataclass(frozen=True)
class Requantize:
    """How an operation's int32 sums become output bytes (or logits): see the module docstring."""

    multiplier: np.ndarray  # float32 (N,)
    low: np.ndarray  # float32 (N,)
    high: np.ndarray  # float32 (N,)
    zero: np.ndarray  # int32 (N,): 0 for real-valued output
    residual_multiplier: np.ndarray | None = None  # float32 (N,)


@dataclass(frozen=True)
class QuantizedConv:
    weight: np.ndarray  # int8, the conv's weight shape, input scales folded in
    bias: np.ndarray  # int32 (N,)
    requantize: Requantize
    real_output: bool  # the classifier: logits in real units, not bytes


@dataclass(frozen=True)
class QuantizedSqueeze:
    """A squeeze-excite in integers: the channel means on the input's grid (``pool``), the two small convs
    to uint8 hidden values and to uint8 gate logits (one grid for every channel), the sigmoid of each logit
    byte (``gate_table``), then each output t = float(q - zero_in) * (gate * multiplier[c]) (+ the
    residual), requantized as a conv's (``scale``)."""

    pool: Requantize
    reduce: QuantizedConv
    expand: QuantizedConv
    hidden: ChannelParams
    logits: ChannelParams
    gate_table: np.ndarray  # float32 (256,)
    scale: Requantize


@dataclass
class QuantizedProgram:
    """A program with every map's channel parameters and every operation's integer parameters
    (``operations[i]``: a :class:`QuantizedConv`, a :class:`Requantize` for average pools and the global
    average, None for operations that move bytes)."""

    program: Program
    maps: list[ChannelParams]
    operations: list[QuantizedConv | QuantizedSqueeze | Requantize | None]


@dataclass
class Ranges:
    """What calibration measured: each map's per-channel (minimum, maximum), and for each squeeze-excite
    (by operation index) the ranges of its hidden values (per channel) and of its gate logits (one)."""

    maps: list[tuple[np.ndarray, np.ndarray]]
    squeeze: dict[int, tuple[np.ndarray, np.ndarray, float, float]]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.maps[index]


@torch.no_grad()
def calibrate(program: Program, images: Iterable[torch.Tensor | np.ndarray]) -> Ranges:
    """(per-channel minimum, maximum) of every map of ``program`` over ``images`` (NCHW batches), run in
    float32 by :func:`~shufflenet.deploy.lower.run_program`."""
    ranges = [
        (np.full(m.channels, np.inf, np.float64), np.full(m.channels, -np.inf, np.float64))
        for m in program.maps
    ]

    squeeze: dict[int, tuple[np.ndarray, np.ndarray, float, float]] = {}

    def observe(target: Write, value: torch.Tensor) -> None:
        low, high = ranges[target.map]
        span = slice(target.offset, target.offset + value.shape[1])
        low[span] = np.minimum(low[span], value.amin((0, 2, 3)).double().numpy())
        high[span] = np.maximum(high[span], value.amax((0, 2, 3)).double().numpy())

    def observe_squeeze(index: int, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        low, high = hidden.amin(0).double().numpy(), hidden.amax(0).double().numpy()
        if index in squeeze:
            seen_low, seen_high, logit_low, logit_high = squeeze[index]
            low, high = np.minimum(low, seen_low), np.maximum(high, seen_high)
        else:
            logit_low, logit_high = np.inf, -np.inf
        logit_low, logit_high = min(logit_low, float(logits.min())), max(logit_high, float(logits.max()))
        squeeze[index] = (low, high, logit_low, logit_high)

    seen = False
    for batch in images:
        batch = torch.as_tensor(batch).float()
        observe(Write(0), batch)
        run_program(program, batch, observe, observe_squeeze)
        seen = True
    if not seen:
        raise ValueError("calibration needs at least one batch of images")
    return Ranges(ranges, squeeze)


def _params_from_range(low: np.ndarray, high: np.ndarray) -> ChannelParams:
    """The uint8 grid over each channel's range stretched to hold 0 exactly."""
    low = np.minimum(np.where(np.isfinite(low), low, 0.0), 0.0)
    high = np.maximum(np.where(np.isfinite(high), high, 0.0), 0.0)
    scale = (high - low) / QMAX
    scale[scale == 0] = 1.0
    scale = scale.astype(np.float32)
    zero = np.clip(np.rint(-low / scale), 0, QMAX).astype(np.int32)
    return ChannelParams(scale, zero)


def _bounds(out: ChannelParams, activation: Activation) -> tuple[np.ndarray, np.ndarray]:
    """The clamp of ``t`` (steps of the output scale from its zero point) for the activation and 0..255."""
    low = (-out.zero).astype(np.float64)
    high = (QMAX - out.zero).astype(np.float64)
    if activation in ("relu", "relu6"):
        low = np.maximum(low, 0.0)
    if activation == "relu6":
        high = np.minimum(high, 6.0 / out.scale.astype(np.float64))
    return low.astype(np.float32), high.astype(np.float32)


def _quantize_conv(
    op: Conv, source: ChannelParams, out: ChannelParams | None, residual: ChannelParams | None
) -> QuantizedConv:
    """Fold the input scales into the weights, quantize them per output channel; ``out`` None: the
    classifier, writing logits."""
    n, per_group = op.weight.shape[:2]
    group_of = np.arange(n) // (n // op.groups)
    in_scale = source.scale.astype(np.float64).reshape(op.groups, per_group)[group_of]
    folded = op.weight.astype(np.float64) * in_scale[:, :, None, None]
    weight_scale = np.abs(folded).reshape(n, -1).max(1) / WEIGHT_MAX
    weight_scale[weight_scale == 0] = 1.0
    weight = np.clip(np.rint(folded / weight_scale[:, None, None, None]), -WEIGHT_MAX, WEIGHT_MAX)
    bias = np.clip(np.rint(op.bias.astype(np.float64) / weight_scale), -BIAS_LIMIT, BIAS_LIMIT)
    if out is None:
        low = np.full(n, -np.inf if op.activation == "none" else 0.0, np.float32)
        high = np.full(n, np.inf if op.activation != "relu6" else 6.0, np.float32)
        requantize = Requantize(weight_scale.astype(np.float32), low, high, np.zeros(n, np.int32))
    else:
        low, high = _bounds(out, op.activation)
        out_scale = out.scale.astype(np.float64)
        requantize = Requantize(
            (weight_scale / out_scale).astype(np.float32),
            low,
            high,
            out.zero,
            None if residual is None else (residual.scale / out_scale).astype(np.float32),
        )
    return QuantizedConv(weight.astype(np.int8), bias.astype(np.int32), requantize, out is None)


def _scaled_sum(source: ChannelParams, out: ChannelParams, count: int, activation: Activation) -> Requantize:
    """Requantization of a sum of ``count`` values (an average pool's window, the global average)."""
    low, high = _bounds(out, activation)
    multiplier = (source.scale.astype(np.float64) / (count * out.scale.astype(np.float64))).astype(np.float32)
    return Requantize(multiplier, low, high, out.zero)


def _quantize_squeeze(
    op: SqueezeExcite,
    source: ChannelParams,
    out: ChannelParams,
    residual: ChannelParams | None,
    pixels: int,
    ranges: tuple[np.ndarray, np.ndarray, float, float],
) -> QuantizedSqueeze:
    """The integer squeeze-excite (:class:`QuantizedSqueeze`): the means keep the input's grid."""
    hidden_low, hidden_high, logit_low, logit_high = ranges
    hidden = _params_from_range(hidden_low, hidden_high)
    one = _params_from_range(np.array([logit_low]), np.array([logit_high]))
    channels = source.scale.size
    logits = ChannelParams(np.repeat(one.scale, channels), np.repeat(one.zero, channels))

    def conv(weight: np.ndarray, bias: np.ndarray, activation: Activation) -> Conv:
        return Conv(Read(0, ()), Write(0), weight[:, :, None, None], bias, activation=activation)

    reduce = _quantize_conv(conv(op.reduce_weight, op.reduce_bias, "relu"), source, hidden, None)
    expand = _quantize_conv(conv(op.expand_weight, op.expand_bias, "none"), hidden, logits, None)
    steps = one.scale.astype(np.float64)[0] * (np.arange(QMAX + 1) - one.zero[0])
    table = (1.0 / (1.0 + np.exp(-steps))).astype(np.float32)
    low, high = _bounds(out, op.activation)
    out_scale = out.scale.astype(np.float64)
    scale = Requantize(
        (source.scale / out_scale).astype(np.float32),
        low,
        high,
        out.zero,
        None if residual is None else (residual.scale / out_scale).astype(np.float32),
    )
    return QuantizedSqueeze(
        _scaled_sum(source, source, pixels, "none"), reduce, expand, hidden, logits, table, scale
    )


def quantize(program: Program, ranges: Ranges) -> QuantizedProgram:
    """``program`` in int8 with the map ranges of :func:`calibrate`. Raises :class:`QuantizationError` for
    operations int8 does not cover."""
    if program.output is None:
        raise QuantizationError("the program has no output")
    scales = [np.ones(m.channels, np.float32) for m in program.maps]
    zeros = [np.zeros(m.channels, np.int32) for m in program.maps]

    def params(read: Read) -> ChannelParams:
        return ChannelParams(scales[read.map], zeros[read.map]).take(read.channels)

    def place(target: Write, value: ChannelParams) -> None:
        span = slice(target.offset, target.offset + value.scale.size)
        scales[target.map][span], zeros[target.map][span] = value.scale, value.zero

    place(Write(0), _params_from_range(*ranges[0]))
    integers: list[QuantizedConv | QuantizedSqueeze | Requantize | None] = []
    for index, op in enumerate(program.operations):
        source = params(op.source)
        width = len(op.source.channels) if not isinstance(op, Conv) else op.weight.shape[0]
        low, high = ranges[op.target.map]
        measured = _params_from_range(
            low[op.target.offset : op.target.offset + width],
            high[op.target.offset : op.target.offset + width],
        )
        if isinstance(op, Conv):
            logits = op.target.map == program.output.map
            residual = None if op.residual is None else params(op.residual)
            integers.append(_quantize_conv(op, source, None if logits else measured, residual))
            out = measured
        elif isinstance(op, (Copy, Shift)) or (isinstance(op, Pool) and op.kind == "max"):
            if isinstance(op, Pool) and op.activation == "relu6":
                raise QuantizationError("int8 does not cover ReLU6 after a max pool")
            integers.append(None)
            out = source  # bytes move, parameters with them
        elif isinstance(op, Pool):
            integers.append(_scaled_sum(source, measured, op.kernel * op.kernel, op.activation))
            out = measured
        elif isinstance(op, GlobalAverage):
            height, width_ = program.size(op.source)
            integers.append(_scaled_sum(source, measured, height * width_, "none"))
            out = measured
        elif isinstance(op, SqueezeExcite):
            residual = None if op.residual is None else params(op.residual)
            height, width_ = program.size(op.source)
            integers.append(
                _quantize_squeeze(op, source, measured, residual, height * width_, ranges.squeeze[index])
            )
            out = measured
        else:
            raise QuantizationError(f"int8 does not cover {type(op).__name__} operations yet")
        place(op.target, out)
    maps = [ChannelParams(s, z) for s, z in zip(scales, zeros, strict=True)]
    return QuantizedProgram(program, maps, integers)


def quantize_image(batch: np.ndarray, params: ChannelParams) -> np.ndarray:
    """NCHW float32 images as uint8 with the input map's parameters (float32 arithmetic, as the engine)."""
    inverse = (1.0 / params.scale.astype(np.float64)).astype(np.float32)[None, :, None, None]
    zero = params.zero[None, :, None, None]
    t = np.asarray(batch, np.float32) * inverse
    t = np.minimum(np.maximum(t, (-zero).astype(np.float32)), (QMAX - zero).astype(np.float32))
    return (np.rint(t).astype(np.int32) + zero).astype(np.uint8)


def _finish(t: np.ndarray, requantize: Requantize, real: bool) -> np.ndarray:
    """Clamp, round and offset float32 ``t`` (N, C, H, W) per channel (see the module docstring)."""
    low = requantize.low[None, :, None, None]
    high = requantize.high[None, :, None, None]
    t = np.minimum(np.maximum(t, low), high)
    if real:
        return t
    return np.rint(t).astype(np.int32) + requantize.zero[None, :, None, None]


def _dense_int8(centred: np.ndarray, conv: QuantizedConv) -> np.ndarray:
    """A squeeze-excite's small conv on (N, K) centred integers: uint8 outputs (N, N_out)."""
    weight = conv.weight[:, :, 0, 0].astype(np.float64)
    acc = centred.astype(np.float64) @ weight.T + conv.bias.astype(np.float64)
    t = acc.astype(np.float32)[:, :, None, None] * _per_channel(conv.requantize.multiplier)
    return _finish(t, conv.requantize, False)[:, :, 0, 0]


def integer_real(integer: QuantizedConv | Requantize | None) -> bool:
    """Whether an operation's output is in real units (the logits)."""
    return isinstance(integer, QuantizedConv) and integer.real_output


def _requantized_sum(total: torch.Tensor, requantize: Requantize) -> np.ndarray:
    """Bytes of exact integer sums (N, C, H, W) of ``q - zero`` (a pool's window, a global average)."""
    return _finish(total.numpy().astype(np.float32) * _per_channel(requantize.multiplier), requantize, False)


def _per_channel(values: np.ndarray) -> np.ndarray:
    return values[None, :, None, None]


@torch.no_grad()
def run_quantized(
    quantized: QuantizedProgram,
    batch: np.ndarray,
    observe: Callable[[int, Write, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Run ``quantized`` on NCHW float32 images in integer arithmetic: the reference the engine's int8
    kernels match bit for bit. Returns the logits (N x classes, float32). ``observe``, if given, sees each
    operation's index, target and output in real units (per-layer error)."""
    program = quantized.program
    maps: dict[int, torch.Tensor] = {}  # uint8 values held exactly in float64
    maps[0] = torch.from_numpy(quantize_image(batch, quantized.maps[0]).astype(np.float64))

    def read(source: Read) -> torch.Tensor:
        return maps[source.map].index_select(1, torch.tensor(source.channels, dtype=torch.long))

    def centred(source: Read) -> torch.Tensor:
        zero = quantized.maps[source.map].take(source.channels).zero
        return read(source) - torch.from_numpy(_per_channel(zero).astype(np.float64))

    def write(target: Write, value: np.ndarray | torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=torch.float64)
        if target.map not in maps:
            feature = program.maps[target.map]
            maps[target.map] = value.new_zeros(
                value.shape[0], feature.channels, feature.height, feature.width
            )
        maps[target.map][:, target.offset : target.offset + value.shape[1]] = value

    for index, (op, integer) in enumerate(zip(program.operations, quantized.operations, strict=True)):
        out: np.ndarray | torch.Tensor
        if isinstance(op, Conv):
            assert isinstance(integer, QuantizedConv)
            weight = torch.from_numpy(integer.weight.astype(np.float64))
            acc = F.conv2d(centred(op.source), weight, None, op.stride, op.padding, groups=op.groups)
            acc = acc + torch.from_numpy(_per_channel(integer.bias).astype(np.float64))
            t = acc.numpy().astype(np.float32) * _per_channel(integer.requantize.multiplier)
            if op.residual is not None:
                residual = centred(op.residual).numpy().astype(np.float32)
                t = t + residual * _per_channel(integer.requantize.residual_multiplier)
            out = _finish(t, integer.requantize, integer.real_output)
        elif isinstance(op, Pool) and op.kind == "max":
            out = F.max_pool2d(read(op.source), op.kernel, op.stride, op.padding)
            if op.activation != "none":
                zero = quantized.maps[op.source.map].take(op.source.channels).zero
                floor = torch.from_numpy(_per_channel(zero).astype(np.float64))
                out = torch.maximum(out, floor)
        elif isinstance(op, Pool):
            x = centred(op.source)
            ones = torch.ones(x.shape[1], 1, op.kernel, op.kernel, dtype=torch.float64)
            total = F.conv2d(x, ones, None, op.stride, op.padding, groups=x.shape[1])
            out = _requantized_sum(total, integer)
        elif isinstance(op, GlobalAverage):
            out = _requantized_sum(centred(op.source).sum((2, 3), keepdim=True), integer)
        elif isinstance(op, Shift):  # zero fill in centred values: each channel's zero point
            zero = quantized.maps[op.source.map].take(op.source.channels).zero
            moved = shift_channels(centred(op.source), op.dy, op.dx)
            out = moved + torch.from_numpy(_per_channel(zero).astype(np.float64))
        elif isinstance(op, Copy):
            out = read(op.source)
        elif isinstance(op, SqueezeExcite):
            assert isinstance(integer, QuantizedSqueeze)
            x = centred(op.source)
            pooled = _requantized_sum(x.sum((2, 3), keepdim=True), integer.pool)
            hidden = _dense_int8(pooled[:, :, 0, 0] - integer.pool.zero, integer.reduce)
            logits = _dense_int8(hidden - integer.hidden.zero, integer.expand)
            factor = integer.gate_table[logits] * integer.scale.multiplier[None, :]
            t = x.numpy().astype(np.float32) * factor[:, :, None, None]
            if op.residual is not None:
                residual = centred(op.residual).numpy().astype(np.float32)
                t = t + residual * _per_channel(integer.scale.residual_multiplier)
            out = _finish(t, integer.scale, False)
        else:
            raise QuantizationError(f"int8 does not cover {type(op).__name__} operations yet")
        write(op.target, out)
        if observe is not None:
            value = maps[op.target.map][:, op.target.offset : op.target.offset + out.shape[1]].numpy()
            params = quantized.maps[op.target.map].take(
                range(op.target.offset, op.target.offset + out.shape[1])
            )
            observe(
                index,
                op.target,
                value.astype(np.float32) if integer_real(integer) else dequantize(value, params),
            )
    result = read(program.output).numpy().astype(np.float32)
    return result.reshape(result.shape[0], -1)


def _describe(op: Conv | Pool | Shift | Copy | GlobalAverage) -> str:
    if isinstance(op, Conv):
        size = "x".join(str(k) for k in op.weight.shape[2:])
        return f"{op.kind} {size} conv {op.weight.shape[1] * op.groups}->{op.weight.shape[0]}"
    return type(op).__name__.lower()


def operation_errors(quantized: QuantizedProgram, images: torch.Tensor) -> list[tuple[int, str, float]]:
    """(operation index, what it is, its int8 output's rms error over its float32 output's rms) for every
    operation of ``quantized``, run on ``images`` (NCHW) both ways: where int8 loses accuracy."""
    program = quantized.program
    exact: dict[int, np.ndarray] = {}
    run_program(program, images, lambda target, value: exact.setdefault(len(exact), value.numpy()))
    rows: list[tuple[int, str, float]] = []

    def compare(index: int, target: Write, value: np.ndarray) -> None:
        reference = exact[index]
        scale = float(np.sqrt((reference.astype(np.float64) ** 2).mean())) or 1.0
        error = float(np.sqrt(((value - reference).astype(np.float64) ** 2).mean())) / scale
        rows.append((index, _describe(program.operations[index]), error))

    run_quantized(quantized, images.numpy(), compare)
    return rows


def dequantize(values: np.ndarray, params: ChannelParams) -> np.ndarray:
    """Real values of uint8 ``values`` (N, C, ...) with per-channel ``params``."""
    shape = (1, -1) + (1,) * (values.ndim - 2)
    return params.scale.reshape(shape) * (values.astype(np.float32) - params.zero.reshape(shape))


def quantize_model_program(program: Program, images: Iterable[torch.Tensor | np.ndarray]) -> QuantizedProgram:
    """Calibrate ``program`` on ``images`` and quantize it."""
    return quantize(program, calibrate(program, images))
