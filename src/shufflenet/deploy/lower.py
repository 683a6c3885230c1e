"""One lowering for deployment: a model in eval mode becomes a short list of typed operations on feature maps,
with every BN folded into the convolution before it, which every backend consumes.

What the papers make cheap becomes addressing, decided once here rather than in each backend:

- a channel shuffle (Zhang et al. 2018, section 3.1) and ShuffleNet V2's channel split (Ma et al. 2018,
  section 3) are the order in which the next operations read a map's channels (:class:`Read`);
- a concatenation is where the branches write (:class:`Write`: a map and a channel offset), so a branch's
  last operation writes straight into its part of the joined map, and a part passed on untouched is a
  :class:`Copy` of channel runs;
- a residual add and the activation after it are the epilogue of the operation that ends the branch;
- a shift layer (Chen et al. 2019, section 3) is a per-channel displacement (:class:`Shift`), which a backend
  can implement as reading at an offset with zero fill: unshifted channels cost nothing.

The operations: :class:`Conv` (1x1, grouped, depthwise or dense k x k, bias, activation, residual),
:class:`Pool` (max or average), :class:`Shift`, :class:`SqueezeExcite`, :class:`Copy` and
:class:`GlobalAverage`; the classifier is a 1x1 :class:`Conv` on the pooled 1x1 map. :func:`run_program`
runs a program in PyTorch: the reference every backend is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shufflenet import blocks
from shufflenet.blocks import (
    CSCUnit,
    DepthwiseSeparable,
    FEBlock,
    InvertedBottleneck,
    InvertedResidual,
    PoolBottleneck,
    ResNetUnit,
    ShuffleV1Unit,
    ShuffleV2Unit,
)
from shufflenet.deploy.channels import shuffle_source
from shufflenet.deploy.fold import fold_conv_bn
from shufflenet.models._base import ClassifierNet
from shufflenet.ops import ChannelShuffle, GroupedShift, SparseShift

Activation = Literal["none", "relu", "relu6"]
ACTIVATIONS: dict[type[nn.Module], Activation] = {nn.ReLU: "relu", nn.ReLU6: "relu6"}


class LoweringError(ValueError):
    """The model holds a layer or an arrangement the lowering does not know; the message names it."""


@dataclass(frozen=True)
class FeatureMap:
    """A feature map of the program: ``channels`` x ``height`` x ``width`` per image."""

    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class Read:
    """Channels of map ``map``, in the order an operation reads them: its k-th input channel is the map's
    channel ``channels[k]``. A shuffle or a split is a different order or subset, not an operation."""

    map: int
    channels: tuple[int, ...]


@dataclass(frozen=True)
class Write:
    """Where an operation puts its output: map ``map`` from channel ``offset`` on."""

    map: int
    offset: int = 0


@dataclass(eq=False)
class Conv:
    """A convolution with BN folded in: ``weight`` is (out, in / groups, kh, kw), ``bias`` (out,). Then
    ``residual`` (same shape as the output) is added and ``activation`` applied, in that order."""

    source: Read
    target: Write
    weight: np.ndarray
    bias: np.ndarray
    groups: int = 1
    stride: int = 1
    padding: int = 0
    activation: Activation = "none"
    residual: Read | None = None

    @property
    def kind(self) -> Literal["pointwise", "depthwise", "conv"]:
        out_channels, per_group = self.weight.shape[:2]
        if per_group == 1 and self.groups == out_channels and self.groups > 1:
            return "depthwise"
        return "pointwise" if self.weight.shape[2:] == (1, 1) and self.stride == 1 else "conv"


@dataclass(eq=False)
class Pool:
    """Max or average pooling per channel (average counts the zero padding, as PyTorch's default)."""

    source: Read
    target: Write
    kind: Literal["max", "average"]
    kernel: int
    stride: int
    padding: int = 0
    activation: Activation = "none"


@dataclass(eq=False)
class Shift:
    """Channel k moved by (``dy[k]``, ``dx[k]``) pixels: out[y, x] = in[y - dy, x - dx], zero outside."""

    source: Read
    target: Write
    dy: tuple[int, ...]
    dx: tuple[int, ...]


@dataclass(eq=False)
class SqueezeExcite:
    """Squeeze-and-excitation: the map times sigmoid(expand(relu(reduce(its channel means)))), then
    ``residual`` added and ``activation`` applied."""

    source: Read
    target: Write
    reduce_weight: np.ndarray
    reduce_bias: np.ndarray
    expand_weight: np.ndarray
    expand_bias: np.ndarray
    activation: Activation = "none"
    residual: Read | None = None


@dataclass(eq=False)
class Copy:
    """The channels read, written unchanged (a part of a concatenation that passes through)."""

    source: Read
    target: Write


@dataclass(eq=False)
class GlobalAverage:
    """The mean over all pixels of each channel, into a 1 x 1 map."""

    source: Read
    target: Write


Operation = Conv | Pool | Shift | SqueezeExcite | Copy | GlobalAverage


def reads_of(operation: Operation) -> list[Read]:
    """The reads of ``operation``: its source, then its residual if it has one."""
    residual = getattr(operation, "residual", None)
    return [operation.source] if residual is None else [operation.source, residual]


@dataclass
class Program:
    """A lowered network: map 0 is the input image; ``output`` is what the last operation leaves."""

    maps: list[FeatureMap] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    output: Read | None = None
    pieces: list[tuple[str, int]] = field(default_factory=list)
    """``(name, first operation)`` for each trunk piece, the head conv and the classifier ("head"), in
    order: where a backend that runs the program piece by piece may cut it."""

    def new_map(self, channels: int, height: int, width: int) -> int:
        self.maps.append(FeatureMap(channels, height, width))
        return len(self.maps) - 1

    def whole(self, index: int) -> Read:
        return Read(index, tuple(range(self.maps[index].channels)))

    def size(self, read: Read) -> tuple[int, int]:
        feature = self.maps[read.map]
        return feature.height, feature.width


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _target(program: Program, target: Write | None, channels: int, height: int, width: int) -> Write:
    """``target``, checked against the output's shape, or a fresh map for it."""
    if target is None:
        return Write(program.new_map(channels, height, width))
    feature = program.maps[target.map]
    if (feature.height, feature.width) != (height, width) or target.offset + channels > feature.channels:
        raise LoweringError(
            f"an output of {channels} x {height} x {width} does not fit {feature} at {target}"
        )
    return target


def _written(target: Write, channels: int) -> Read:
    return Read(target.map, tuple(range(target.offset, target.offset + channels)))


def _activation(module: nn.Module | None) -> Activation:
    if module is None or isinstance(module, nn.Identity):
        return "none"
    if type(module) not in ACTIVATIONS:
        raise LoweringError(f"the lowering knows ReLU and ReLU6, not {type(module).__name__}")
    return ACTIVATIONS[type(module)]


class _Lowering:
    """Walks the model's modules, emitting operations into ``program``."""

    def __init__(self, program: Program) -> None:
        self.program = program

    def emit(self, operation: Operation) -> None:
        self.program.operations.append(operation)

    # -- layers ----------------------------------------------------------------------------------------

    def conv(
        self,
        x: Read,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        activation: Activation,
        *,
        target: Write | None = None,
        residual: Read | None = None,
    ) -> Read:
        if conv.kernel_size[0] != conv.kernel_size[1] or len(set(conv.stride)) != 1:
            raise LoweringError(f"the lowering takes square kernels and strides, not {conv}")
        if not isinstance(conv.padding, tuple) or len(set(conv.padding)) != 1 or conv.dilation != (1, 1):
            raise LoweringError(f"the lowering takes equal integer padding and no dilation, not {conv}")
        if len(x.channels) != conv.in_channels:
            raise LoweringError(f"{conv} reads {conv.in_channels} channels, given {len(x.channels)}")
        folded = fold_conv_bn(conv, bn) if bn is not None else conv
        weight = folded.weight.detach().float().numpy().copy()
        bias = (
            folded.bias.detach().float().numpy().copy()
            if folded.bias is not None
            else np.zeros(conv.out_channels, np.float32)
        )
        kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        height, width = (_output_size(s, kernel, stride, padding) for s in self.program.size(x))
        out = _target(self.program, target, conv.out_channels, height, width)
        self.emit(Conv(x, out, weight, bias, conv.groups, stride, padding, activation, residual))
        return _written(out, conv.out_channels)

    def pool(
        self, x: Read, module: nn.Module, *, target: Write | None = None, activation: Activation = "none"
    ):
        kind = "max" if isinstance(module, nn.MaxPool2d) else "average"
        kernel, stride, padding = (
            value if isinstance(value, int) else value[0]
            for value in (module.kernel_size, module.stride, module.padding)
        )
        if isinstance(module, nn.MaxPool2d) and (module.dilation != 1 or module.ceil_mode):
            raise LoweringError(f"the lowering takes plain max pooling, not {module}")
        if isinstance(module, nn.AvgPool2d) and (module.ceil_mode or not module.count_include_pad):
            raise LoweringError(f"the lowering takes average pooling that counts the padding, not {module}")
        height, width = (_output_size(s, kernel, stride, padding) for s in self.program.size(x))
        out = _target(self.program, target, len(x.channels), height, width)
        self.emit(Pool(x, out, kind, kernel, stride, padding, activation))
        return _written(out, len(x.channels))

    def shift(self, x: Read, module: GroupedShift | SparseShift, *, target: Write | None = None) -> Read:
        dy, dx = module.displacement()
        out = _target(self.program, target, len(x.channels), *self.program.size(x))
        self.emit(Shift(x, out, tuple(int(v) for v in dy), tuple(int(v) for v in dx)))
        return _written(out, len(x.channels))

    def squeeze_excite(
        self,
        x: Read,
        module: blocks.SqueezeExcite,
        *,
        target: Write | None = None,
        activation: Activation = "none",
        residual: Read | None = None,
    ) -> Read:
        def parameters(conv: nn.Conv2d) -> tuple[np.ndarray, np.ndarray]:
            return conv.weight.detach().float().numpy()[:, :, 0, 0].copy(), conv.bias.detach().float().numpy()

        out = _target(self.program, target, len(x.channels), *self.program.size(x))
        self.emit(
            SqueezeExcite(
                x, out, *parameters(module.reduce), *parameters(module.expand), activation, residual
            )
        )
        return _written(out, len(x.channels))

    def copy(self, x: Read, target: Write) -> Read:
        out = _target(self.program, target, len(x.channels), *self.program.size(x))
        self.emit(Copy(x, out))
        return _written(out, len(x.channels))

    # -- module walking --------------------------------------------------------------------------------

    def sequence(
        self,
        x: Read,
        modules: Sequence[nn.Module],
        *,
        target: Write | None = None,
        residual: Read | None = None,
        final_activation: Activation | None = None,
    ) -> Read:
        """Conv [BN] [activation] runs fused, other modules lowered one by one; ``target``, ``residual`` and
        ``final_activation`` (replacing the last conv's own) apply to the last operation."""
        steps: list[tuple[Callable[..., Read], bool]] = []
        index = 0
        modules = [m for m in modules if not isinstance(m, (nn.Identity, nn.Dropout))]
        while index < len(modules):
            module = modules[index]
            if isinstance(module, nn.Conv2d):
                bn = modules[index + 1] if index + 1 < len(modules) else None
                bn = bn if isinstance(bn, nn.BatchNorm2d) else None
                index += 2 if bn is not None else 1
                act = modules[index] if index < len(modules) and type(modules[index]) in ACTIVATIONS else None
                index += act is not None
                steps.append((self._conv_step(module, bn, _activation(act)), True))
                continue
            if isinstance(module, nn.Sequential) and not type(module).__dict__.get("forward"):
                # A plain container (ConvBNAct, a V2 branch, a stage): its children in line.
                modules[index : index + 1] = [
                    m for m in module if not isinstance(m, (nn.Identity, nn.Dropout))
                ]
                continue
            steps.append((self._module_step(module), False))
            index += 1
        for position, (step, is_conv) in enumerate(steps):
            last = position == len(steps) - 1
            if not last:
                x = step(x)
            elif is_conv:
                x = step(x, target=target, residual=residual, final_activation=final_activation)
            else:
                if residual is not None or final_activation is not None:
                    raise LoweringError("a residual or activation after a unit that is not a conv")
                x = step(x, target=target)
        if not steps and target is not None:
            x = self.copy(x, target)
        return x

    def _conv_step(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, activation: Activation):
        def step(x: Read, *, target=None, residual=None, final_activation=None) -> Read:
            act = activation if final_activation is None else final_activation
            return self.conv(x, conv, bn, act, target=target, residual=residual)

        return step

    def _module_step(self, module: nn.Module):
        def step(x: Read, *, target: Write | None = None) -> Read:
            return self.module(x, module, target=target)

        return step

    def module(self, x: Read, module: nn.Module, *, target: Write | None = None) -> Read:
        """Lower one module reading ``x``; its output goes to ``target`` (or a fresh map)."""
        for kind, lower in UNIT_LOWERINGS.items():
            if isinstance(module, kind):
                return lower(self, x, module, target)
        raise LoweringError(f"the lowering does not know {type(module).__name__} layers")


# -- one function per unit family -------------------------------------------------------------------------


def _shuffle(lowering: _Lowering, x: Read, module: ChannelShuffle, target: Write | None) -> Read:
    order = shuffle_source(len(x.channels), module.groups)
    shuffled = Read(x.map, tuple(x.channels[k] for k in order))
    return lowering.copy(shuffled, target) if target is not None else shuffled


def _identity(lowering: _Lowering, x: Read, module: nn.Module, target: Write | None) -> Read:
    return lowering.copy(x, target) if target is not None else x


def _pool(lowering: _Lowering, x: Read, module: nn.Module, target: Write | None) -> Read:
    return lowering.pool(x, module, target=target)


def _shift(lowering: _Lowering, x: Read, module: GroupedShift | SparseShift, target: Write | None) -> Read:
    return lowering.shift(x, module, target=target)


def _squeeze_excite(lowering: _Lowering, x: Read, module: blocks.SqueezeExcite, target: Write | None) -> Read:
    return lowering.squeeze_excite(x, module, target=target)


def _sequential(lowering: _Lowering, x: Read, module: nn.Sequential, target: Write | None) -> Read:
    return lowering.sequence(x, list(module), target=target)


def _shufflenet_v1(lowering: _Lowering, x: Read, unit: ShuffleV1Unit, target: Write | None) -> Read:
    """Zhang et al. 2018, Fig. 2b/c: the shuffle is the order the depthwise conv reads; the stride-1 add
    and ReLU end the second group conv (or SE); at stride 2 both halves of the concatenation write into
    one map, the pooled shortcut first."""
    mid = lowering.sequence(x, [unit.pointwise1, unit.bn1, unit.relu1, unit.shuffle])
    mid = lowering.conv(mid, unit.depthwise, unit.bn2, "none")
    has_se = isinstance(unit.se, blocks.SqueezeExcite)
    if unit.stride == 1:
        if not has_se:
            return lowering.conv(mid, unit.pointwise2, unit.bn3, "relu", target=target, residual=x)
        branch = lowering.conv(mid, unit.pointwise2, unit.bn3, "none")
        return lowering.squeeze_excite(branch, unit.se, target=target, activation="relu", residual=x)
    height, width = lowering.program.size(mid)
    channels = len(x.channels) + unit.pointwise2.out_channels
    out = _target(lowering.program, target, channels, height, width)
    lowering.pool(x, unit.shortcut, target=out, activation="relu")
    branch_target = Write(out.map, out.offset + len(x.channels))
    if has_se:
        branch = lowering.conv(mid, unit.pointwise2, unit.bn3, "none")
        lowering.squeeze_excite(branch, unit.se, target=branch_target, activation="relu")
    else:
        lowering.conv(mid, unit.pointwise2, unit.bn3, "relu", target=branch_target)
    return _written(out, channels)


def _shufflenet_v2(lowering: _Lowering, x: Read, unit: ShuffleV2Unit, target: Write | None) -> Read:
    """Ma et al. 2018, Fig. 3c/d: the split is two reads of the input, the concatenation two writes into
    one map (the kept half a copy), the shuffle the order the next unit reads."""
    if unit.stride == 1:
        half = len(x.channels) // 2
        kept, transformed = Read(x.map, x.channels[:half]), Read(x.map, x.channels[half:])
        branches = [(None, kept), (unit.branch2, transformed)]
    else:
        branches = [(unit.branch1, x), (unit.branch2, x)]
    widths = [
        len(read.channels)
        if branch is None
        else [m for m in branch if isinstance(m, nn.Conv2d)][-1].out_channels
        for branch, read in branches
    ]
    height, width = lowering.program.size(x)
    if unit.stride != 1:
        height, width = (_output_size(s, 3, unit.stride, 1) for s in (height, width))
    out = _target(lowering.program, target, sum(widths), height, width)
    offset = out.offset
    for (branch, read), channels in zip(branches, widths, strict=True):
        part = Write(out.map, offset)
        if branch is None:
            lowering.copy(read, part)
        else:
            lowering.sequence(read, list(branch), target=part)
        offset += channels
    joined = _written(out, sum(widths))
    if not unit.shuffle:
        return joined
    return Read(joined.map, tuple(joined.channels[k] for k in shuffle_source(len(joined.channels), 2)))


def _inverted_residual(lowering: _Lowering, x: Read, unit: InvertedResidual, target: Write | None) -> Read:
    """Sandler et al. 2018, Table 1: the identity is added at the end of the linear projection."""
    return lowering.sequence(x, list(unit.conv), target=target, residual=x if unit.use_residual else None)


def _bottleneck_with_shortcut(
    lowering: _Lowering, x: Read, path: Sequence[nn.Module], shortcut: nn.Module, target: Write | None
) -> Read:
    """relu(path(x) + shortcut(x)): the shortcut (identity or a projection) first, the add and the ReLU
    ending the path's last conv (ShiftResNet's CSC unit; the ResNet and ResNeXt peers)."""
    residual = x if isinstance(shortcut, nn.Identity) else lowering.sequence(x, list(shortcut))
    return lowering.sequence(x, path, target=target, residual=residual, final_activation="relu")


def _csc(lowering: _Lowering, x: Read, unit: CSCUnit, target: Write | None) -> Read:
    return _bottleneck_with_shortcut(
        lowering, x, [unit.expand, unit.shift, unit.reduce], unit.shortcut, target
    )


def _resnet(lowering: _Lowering, x: Read, unit: ResNetUnit, target: Write | None) -> Read:
    return _bottleneck_with_shortcut(
        lowering, x, [unit.reduce, unit.conv, unit.expand], unit.shortcut, target
    )


def _inverted_bottleneck(
    lowering: _Lowering, x: Read, unit: InvertedBottleneck, target: Write | None
) -> Read:
    """Chen et al. 2019, Fig. 4a/b: expand, shift (or depthwise), optional SE, linear projection (+ x)."""
    path = [unit.expand, unit.spatial, unit.se, unit.project]
    return lowering.sequence(x, path, target=target, residual=x if unit.residual else None)


def _pool_bottleneck(lowering: _Lowering, x: Read, unit: PoolBottleneck, target: Write | None) -> Read:
    """Chen et al. 2019, Fig. 4c: the 2x2 average pool before or after the expansion."""
    path = (
        [unit.pool, unit.expand, unit.project] if unit.pool_first else [unit.expand, unit.pool, unit.project]
    )
    return lowering.sequence(x, path, target=target)


def _fe_block(lowering: _Lowering, x: Read, block: FEBlock, target: Write | None) -> Read:
    """Chen et al. 2019, Fig. 3 and eq. 8: each residual unit writes its output behind the part that joins
    it untouched (a copy), so the progressive concatenations are writes into one map per step."""
    parts, start = [], 0
    for size in block.split_sizes:
        parts.append(Read(x.map, x.channels[start : start + size]))
        start += size
    mixed = parts[-1]
    height, width = lowering.program.size(x)
    for index, unit in enumerate(block.units[:-1]):
        untouched = parts[-2 - index]
        channels = len(untouched.channels) + len(mixed.channels)
        joined = Write(lowering.program.new_map(channels, height, width))
        lowering.copy(untouched, joined)
        lowering.module(mixed, unit, target=Write(joined.map, len(untouched.channels)))
        mixed = lowering.program.whole(joined.map)
    return lowering.module(mixed, block.units[-1], target=target)


UNIT_LOWERINGS: dict[type[nn.Module], Callable[[_Lowering, Read, nn.Module, Write | None], Read]] = {
    ShuffleV1Unit: _shufflenet_v1,
    ShuffleV2Unit: _shufflenet_v2,
    InvertedResidual: _inverted_residual,
    CSCUnit: _csc,
    ResNetUnit: _resnet,
    InvertedBottleneck: _inverted_bottleneck,
    PoolBottleneck: _pool_bottleneck,
    FEBlock: _fe_block,
    ChannelShuffle: _shuffle,
    nn.Identity: _identity,
    nn.Dropout: _identity,
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    GroupedShift: _shift,
    SparseShift: _shift,
    blocks.SqueezeExcite: _squeeze_excite,
    DepthwiseSeparable: _sequential,
    nn.Sequential: _sequential,
    nn.ModuleList: _sequential,
}


@torch.no_grad()
def lower(model: nn.Module, input_size: tuple[int, int]) -> Program:
    """The operations of ``model`` (any registered family, in eval mode) for ``input_size`` = (H, W)
    images, BN folded. Raises ValueError for a model in training mode and :class:`LoweringError` for
    layers the lowering does not know."""
    if not isinstance(model, ClassifierNet):
        raise LoweringError(f"the lowering takes this library's models, not {type(model).__name__}")
    if model.training:
        raise ValueError(
            "the lowering folds BN from its running statistics, as in eval mode; call model.eval()"
        )
    height, width = input_size
    model.check_input(torch.empty(1, model.in_chans, height, width))
    program = Program()
    lowering = _Lowering(program)
    x = program.whole(program.new_map(model.in_chans, height, width))
    for piece, module in zip(model.pieces, model.trunk_modules(), strict=True):
        program.pieces.append((piece.name, len(program.operations)))
        x = lowering.module(x, module)
    if model.head_conv_name is not None:
        program.pieces.append((model.head_conv_name, len(program.operations)))
        x = lowering.module(x, model.get_submodule(model.head_conv_name))
    program.pieces.append(("head", len(program.operations)))
    pooled = Write(program.new_map(len(x.channels), 1, 1))
    lowering.emit(GlobalAverage(x, pooled))
    x = _written(pooled, len(x.channels))
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):
        linear = nn.Conv2d(classifier.in_features, classifier.out_features, 1)
        linear.weight.copy_(classifier.weight[:, :, None, None])
        linear.bias.copy_(classifier.bias)
        x = lowering.conv(x, linear, None, "none")
    program.output = x
    return program


# -- the reference interpreter --------------------------------------------------------------------------


def _act(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "relu6":
        return F.relu6(x)
    return x


def shift_channels(x: torch.Tensor, dy: Sequence[int], dx: Sequence[int]) -> torch.Tensor:
    """Channel k of NCHW ``x`` moved by (``dy[k]``, ``dx[k]``) pixels, zeros where nothing moved in
    (:class:`Shift`)."""
    height, width = x.shape[-2:]
    out = torch.zeros_like(x)
    for k, (down, right) in enumerate(zip(dy, dx, strict=True)):
        if abs(down) >= height or abs(right) >= width:
            continue  # moved wholly out of the map: zeros
        rows = slice(max(down, 0), height + min(down, 0))
        cols = slice(max(right, 0), width + min(right, 0))
        source_rows = slice(max(-down, 0), height + min(-down, 0))
        source_cols = slice(max(-right, 0), width + min(-right, 0))
        out[:, k, rows, cols] = x[:, k, source_rows, source_cols]
    return out


@torch.no_grad()
def run_program(
    program: Program,
    batch: torch.Tensor,
    observe: Callable[[Write, torch.Tensor], None] | None = None,
    observe_squeeze: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    *,
    bfloat16: bool = False,
) -> torch.Tensor:
    """Run ``program`` on an NCHW float32 ``batch`` in PyTorch, operation by operation: the reference
    that backends are checked against. Returns the output map (N x C for a classifier). ``observe``, if
    given, sees every operation's output and where it goes (calibration records the ranges);
    ``observe_squeeze`` a squeeze-excite's index, hidden values and gate logits. With ``bfloat16``, as
    the engine's bf16 plans: every conv but a depthwise one, and the squeeze-excite's two layers, multiply
    inputs and weights rounded to bfloat16 (nearest even), summing in float32."""
    maps: dict[int, torch.Tensor] = {0: batch.float()}

    def operand(value: torch.Tensor, rounded: bool = True) -> torch.Tensor:
        return value.bfloat16().float() if bfloat16 and rounded else value

    def read(source: Read) -> torch.Tensor:
        return maps[source.map].index_select(1, torch.tensor(source.channels, dtype=torch.long))

    def write(target: Write, value: torch.Tensor) -> None:
        if target.map not in maps:
            feature = program.maps[target.map]
            maps[target.map] = value.new_zeros(
                value.shape[0], feature.channels, feature.height, feature.width
            )
        maps[target.map][:, target.offset : target.offset + value.shape[1]] = value

    def epilogue(value: torch.Tensor, residual: Read | None, activation: Activation) -> torch.Tensor:
        return _act(value if residual is None else value + read(residual), activation)

    for index, op in enumerate(program.operations):
        x = read(op.source)
        if isinstance(op, Conv):
            weight, bias = torch.from_numpy(op.weight), torch.from_numpy(op.bias)
            dense = op.kind != "depthwise"
            out = F.conv2d(
                operand(x, dense),
                operand(weight, dense),
                bias,
                stride=op.stride,
                padding=op.padding,
                groups=op.groups,
            )
            out = epilogue(out, op.residual, op.activation)
        elif isinstance(op, Pool):
            if op.kind == "max":
                out = F.max_pool2d(x, op.kernel, op.stride, op.padding)
            else:
                out = F.avg_pool2d(x, op.kernel, op.stride, op.padding)
            out = _act(out, op.activation)
        elif isinstance(op, Shift):
            out = shift_channels(x, op.dy, op.dx)
        elif isinstance(op, SqueezeExcite):
            squeezed = x.mean((2, 3))
            hidden = F.relu(
                operand(squeezed) @ operand(torch.from_numpy(op.reduce_weight)).T
                + torch.from_numpy(op.reduce_bias)
            )
            logits = operand(hidden) @ operand(torch.from_numpy(op.expand_weight)).T + torch.from_numpy(
                op.expand_bias
            )
            if observe_squeeze is not None:
                observe_squeeze(index, hidden, logits)
            gate = torch.sigmoid(logits)
            out = epilogue(x * gate[:, :, None, None], op.residual, op.activation)
        elif isinstance(op, Copy):
            out = x
        else:
            out = x.mean((2, 3), keepdim=True)
        if observe is not None:
            observe(op.target, out)
        write(op.target, out)
    result = read(program.output)
    return result.flatten(1) if result.shape[-2:] == (1, 1) else result
