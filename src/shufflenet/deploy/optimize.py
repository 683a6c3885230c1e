"""The deploy graph: ``optimize(model)`` returns an inference-only copy with identical outputs and fewer,
cheaper operations.

- Every BN is folded into the convolution before it.
- ShuffleNet V2 (paper section 3, Fig. 3): no channel shuffle runs at all. Each unit's output is kept in a
  physical channel order of our choosing; the shuffle only says which logical channel lives where, and
  that bookkeeping is folded into the weights (input columns of the next 1x1 conv, rows of the last one).
  Outputs are assembled so that the next unit's transformed half is one contiguous slice (a free view).
- ShuffleNet V2 channel padding (``channel_multiple``, default 4): ONNX Runtime's CPU NCHWc transformer
  only converts a Conv whose input has a channel count that is a multiple of 4 (MlasReorderInputNchw
  reads four channels at a time); other convs run in its plain-NCHW kernels, several times slower for the
  58-channel depthwise conv of the 1x net. So every width a conv reads is padded
  with all-zero channels (zero weights and biases; ReLU keeps them 0; the readers get zero weights for
  them): each branch's inner width to ``2 * channel_multiple`` (8 = one AVX2 NCHWc block, which the
  NCHWc kernels compute whole anyway), the next unit's transformed half to ``channel_multiple`` (a
  unit's branch emits the zero rows right next to that half, so it stays one slice, disjoint from the
  kept ones, and ONNX Runtime still fuses the unit's slices into one Split; the zeros are read there
  and never copied along), and a stage's output (read whole by the next stage's depthwise conv) to
  ``2 * channel_multiple``. OpenVINO blocks channels itself and runs the padded and plain graphs alike.
- ShuffleNet V1 (section 3.1): the shuffle commutes with the depthwise conv and its BN (per-channel
  operations), so it moves past them, to where the tensor is smallest (after the stride), and then
  either runs there explicitly or is folded into the second 1x1 group conv, which becomes a dense conv
  with permuted block-sparse weights. Which is faster depends on the machine and the runtime, so
  ``v1_shuffle="auto"`` times each per stage with the timer the caller runs the model with.
- Eager PyTorch (:mod:`shufflenet.deploy.eager`): the same graph also runs fast eagerly on CPU with
  channels_last inputs: 1x1 convs are matrix products on the NHWC pixel rows (a V2 unit's transformed
  half is a strided slice of them, no copy), V2 branches run as cached steps without module calls, the
  stem's max-pool is four strided maxima. Traced, compiled or exported, every module keeps its plain
  Conv/MaxPool graph. ``channel_multiple=1`` suits eager (the padding only helps ONNX Runtime).
- Shift units (ShiftResNet, FE-Net; Chen et al. 2019): each shift layer becomes its inference form, channels
  grouped by displacement with only the shifted groups moved (in place in eager PyTorch; Slice + Pad +
  Concat in exports). The grouping permutation is folded into the 1x1 convs on either side of the shift.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from shufflenet.blocks import ShuffleV1Unit, ShuffleV2Unit
from shufflenet.deploy.channels import contiguous_runs, inverse, is_depthwise, shuffle_source
from shufflenet.deploy.eager import nhwc_rows, row_steps, run_on_rows, use_eager_kernels
from shufflenet.deploy.fold import fold_batchnorm, fold_conv_bn
from shufflenet.deploy.timing import eager_timer
from shufflenet.models import ShuffleNetV1, ShuffleNetV2
from shufflenet.ops import SHIFT_LAYERS, SegmentShift, channel_shuffle, shift_segments

V1ShuffleForm = Literal["auto", "fold", "explicit", "gather"]
V1_FORMS = ("fold", "explicit", "gather")
Timer = Callable[[nn.Module, torch.Tensor], float]


ZERO = -1
"""A ``physical`` channel-map entry (see :func:`_deploy_v2_stage`) for an all-zero padding channel."""


def _convs(modules: Iterable[nn.Module]) -> list[nn.Conv2d]:
    return [module for module in modules if isinstance(module, nn.Conv2d)]


def _take(tensor: torch.Tensor, order: Sequence[int], dim: int) -> torch.Tensor:
    """``tensor`` indexed by ``order`` along ``dim``, with zeros where ``order`` holds ``ZERO``."""
    index = torch.as_tensor(order, dtype=torch.long)
    taken = tensor.index_select(dim, index.clamp(min=0))
    return taken.index_fill(dim, (index == ZERO).nonzero().flatten(), 0)


@torch.no_grad()
def _set_parameters(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Give ``conv`` a new weight (and bias, if given), resizing it to match: the order may add channels."""
    depthwise = is_depthwise(conv)
    conv.weight = nn.Parameter(weight)
    if bias is not None:
        conv.bias = nn.Parameter(bias)
    conv.out_channels = weight.shape[0]
    conv.groups = weight.shape[0] if depthwise else conv.groups
    conv.in_channels = weight.shape[1] * conv.groups


@torch.no_grad()
def _permute_inputs(sequence: Iterable[nn.Module], order: Sequence[int]) -> None:
    """Make ``sequence`` read input channel ``order[j]`` at position ``j`` (a permuted input; ``ZERO``: an
    all-zero channel, read with zero weights): a leading depthwise conv has its filters reordered (and
    passes the order on); a dense/grouped-1 conv has its input columns reordered."""
    convs = _convs(sequence)
    first = convs[0]
    if is_depthwise(first):
        bias = None if first.bias is None else _take(first.bias, order, 0)
        _set_parameters(first, _take(first.weight, order, 0), bias)
        first = convs[1]
    if first.groups != 1:
        raise ValueError("a permuted input needs an ungrouped (or depthwise) first conv")
    _set_parameters(first, _take(first.weight, order, 1))


@torch.no_grad()
def _permute_outputs(sequence: Iterable[nn.Module], order: Sequence[int]) -> None:
    """Make ``sequence`` emit its output channel ``order[j]`` at position ``j`` (the last conv's rows;
    ``ZERO``: a zero row and bias; only per-channel ops that keep 0 may follow it)."""
    last = _convs(sequence)[-1]
    if last.groups != 1:
        raise ValueError("a permuted output needs an ungrouped last conv")
    _set_parameters(
        last, _take(last.weight, order, 0), None if last.bias is None else _take(last.bias, order, 0)
    )


def _pad_inner_width(branch: nn.Sequential, multiple: int) -> None:
    """Pad a 1x1 -> depthwise -> 1x1 branch's inner width to a multiple of ``multiple`` with zero channels
    (zero rows in the first 1x1, zero depthwise filters, zero columns in the last 1x1)."""
    convs = _convs(branch)
    if len(convs) != 3:  # the stride-2 shortcut (depthwise -> 1x1) has no inner width of its own
        return
    width = convs[0].out_channels
    order = [*range(width), *[ZERO] * (-width % multiple)]
    _permute_outputs(convs[:1], order)
    _permute_inputs(convs[1:], order)


class DeployShuffleV2Unit(nn.Module):
    """A ShuffleNet V2 unit with no shuffle and no split op: the transformed half is one slice of the input
    (``transformed``), the output one concat of input slices and branch outputs in a planned order."""

    def __init__(
        self,
        branch1: nn.Sequential | None,
        branch2: nn.Sequential,
        transformed: tuple[int, int] | None,
        pieces_before: Sequence[tuple[int, int]],
        pieces_after: Sequence[tuple[int, int]],
    ) -> None:
        super().__init__()
        self.branch1 = branch1
        self.branch2 = branch2
        self.transformed = transformed
        self.pieces_before = list(pieces_before)
        self.pieces_after = list(pieces_after)
        self._row_steps: list | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = nhwc_rows(x)
        if rows is not None:
            return self._forward_rows(rows, x.shape)
        if self.branch1 is not None:  # stride 2: both branches read the whole input
            return torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        start, stop = self.transformed
        parts = [x[:, a:b] for a, b in self.pieces_before]
        parts.append(self.branch2(x[:, start:stop]))
        parts += [x[:, a:b] for a, b in self.pieces_after]
        return torch.cat(parts, dim=1)

    def _forward_rows(self, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The eager CPU path on NHWC pixel rows (:mod:`shufflenet.deploy.eager`): the transformed half is
        a strided slice of the rows, the 1x1 convs matrix products."""
        if self._row_steps is None:
            self._row_steps = [row_steps(branch) for branch in (self.branch1, self.branch2) if branch]
        batch, _, height, width = shape
        if self.branch1 is not None:
            first, size = run_on_rows(self._row_steps[0], rows, (batch, height, width))
            second, _ = run_on_rows(self._row_steps[1], rows, (batch, height, width))
            parts = [first, second]
        else:
            start, stop = self.transformed
            second, size = run_on_rows(self._row_steps[0], rows[:, start:stop], (batch, height, width))
            parts = [rows[:, a:b] for a, b in self.pieces_before]
            parts.append(second)
            parts += [rows[:, a:b] for a, b in self.pieces_after]
        return torch.cat(parts, dim=1).view(*size, -1).permute(0, 3, 1, 2)

    def _apply(self, fn, recurse=True):
        self._row_steps = None  # they hold views of the parameters that .to() and friends replace
        return super()._apply(fn, recurse)


def _lo_first(logical: Sequence[int], half: int, *, zeros: int = 0, reverse: bool = False) -> list[int]:
    """Rows ordered so that those landing in the next unit's kept half (logical < half) come first
    (or last with ``reverse``), each group in ascending order, with ``zeros`` ``ZERO`` rows between."""
    rows = range(len(logical))
    lo = [row for row in rows if logical[row] < half]
    hi = [row for row in rows if logical[row] >= half]
    padding = [ZERO] * zeros
    return hi + padding + lo if reverse else lo + padding + hi


def _relabel(logical: Sequence[int], rows: Sequence[int]) -> list[int]:
    """The logical channel of each emitted row (``ZERO`` stays ``ZERO``)."""
    return [ZERO if row == ZERO else logical[row] for row in rows]


def _deploy_v2_stage(
    units: Sequence[ShuffleV2Unit], physical: list[int], multiple: int = 1
) -> tuple[list[DeployShuffleV2Unit], list[int]]:
    """Rewrite one stage. ``physical[j]`` is the logical channel (the original net's) that physical channel
    j holds on entry, or ``ZERO`` for an all-zero padding channel; returns the units and the same map on
    exit. ``multiple`` > 1 pads widths as the module docstring describes (``multiple`` for the next unit's
    transformed half, twice it for inner widths and the stage's output)."""
    block = 2 * multiple if multiple > 1 else 1
    deployed = []
    for index, unit in enumerate(units):
        branch2 = fold_batchnorm(copy.deepcopy(unit.branch2))
        width1 = _convs(unit.branch1)[-1].out_channels if unit.stride == 2 else _convs(branch2)[0].in_channels
        out_channels = width1 + _convs(branch2)[-1].out_channels
        half = out_channels // 2
        after_shuffle = (
            inverse(shuffle_source(out_channels, 2)) if unit.shuffle else list(range(out_channels))
        )
        # Zero rows to emit next to the next unit's transformed half: they pad that slice, or, after the
        # stage's last unit, the whole output that the next stride-2 unit (or conv5) reads.
        zeros = -half % multiple if index + 1 < len(units) else -out_channels % block
        _pad_inner_width(branch2, block)
        if unit.stride == 2:
            branch1 = fold_batchnorm(copy.deepcopy(unit.branch1))
            _permute_inputs(branch1, physical)
            _permute_inputs(branch2, physical)
            logical1 = after_shuffle[:width1]
            logical2 = after_shuffle[width1:]
            # [b1 lo rows, zeros, b1 hi rows, b2 hi rows, b2 lo rows]: the next transformed half (with its
            # zero padding) is contiguous.
            rows1 = _lo_first(logical1, half, zeros=zeros)
            rows2 = _lo_first(logical2, half, reverse=True)
            _permute_outputs(branch1, rows1)
            _permute_outputs(branch2, rows2)
            deployed.append(DeployShuffleV2Unit(branch1, branch2, None, [], []))
            physical = _relabel(logical1, rows1) + _relabel(logical2, rows2)
            continue
        # Zero channels on entry sit next to the transformed half (the previous unit put them there): they
        # are read with it, never copied along with the kept half.
        transformed = [j for j, logical in enumerate(physical) if logical >= half or logical == ZERO]
        runs = contiguous_runs(transformed)
        if len(runs) != 1:
            raise AssertionError(f"planned layout broke: transformed half in {len(runs)} runs")
        _permute_inputs(branch2, [physical[j] - half if physical[j] != ZERO else ZERO for j in transformed])
        kept = [j for j, logical in enumerate(physical) if 0 <= logical < half]
        kept_after = {j: after_shuffle[physical[j]] for j in kept}
        before = [j for j in kept if kept_after[j] < half]
        after = [j for j in kept if kept_after[j] >= half]
        logical_b = after_shuffle[half:]
        rows = _lo_first(logical_b, half, zeros=zeros)
        _permute_outputs(branch2, rows)
        deployed.append(
            DeployShuffleV2Unit(None, branch2, runs[0], contiguous_runs(before), contiguous_runs(after))
        )
        physical = (
            [kept_after[j] for j in before] + _relabel(logical_b, rows) + [kept_after[j] for j in after]
        )
    return deployed, physical


def _optimize_shufflenet_v2(model: ShuffleNetV2, channel_multiple: int = 1) -> None:
    physical = list(range(_convs(model.conv1)[-1].out_channels))
    for piece in model.pieces[2:]:
        units, physical = _deploy_v2_stage(list(model.get_submodule(piece.name)), physical, channel_multiple)
        setattr(model, piece.name, nn.Sequential(*units))
    fold_batchnorm(model.conv5)
    _permute_inputs(model.conv5, physical)


class DeployShuffleV1Unit(nn.Module):
    """A ShuffleNet V1 unit with BN folded and the shuffle moved past the depthwise conv: run there
    (on the strided, smaller map) as reshape-transpose (``form="explicit"``) or as one channel gather with
    constant indices (``"gather"``: no shape arithmetic in an exported graph), or folded into a dense second
    1x1 (``"fold"``)."""

    def __init__(self, unit: ShuffleV1Unit, form: Literal["fold", "explicit", "gather"]) -> None:
        super().__init__()
        self.stride = unit.stride
        self.form = form
        groups = getattr(unit.shuffle, "groups", 1)  # nn.Identity where the unit does not shuffle
        self.shuffle_groups = groups if form == "explicit" else 1
        self.register_buffer("shuffle_index", None, persistent=False)
        self.pointwise1 = fold_conv_bn(unit.pointwise1, unit.bn1)
        depthwise = fold_conv_bn(unit.depthwise, unit.bn2)
        pointwise2 = fold_conv_bn(unit.pointwise2, unit.bn3)
        if groups > 1:
            # dw on shuffled channels == shuffle after a dw whose filter for channel c is the one that
            # channel c meets after the shuffle.
            order = torch.as_tensor(inverse(shuffle_source(depthwise.out_channels, groups)))
            with torch.no_grad():
                depthwise.weight.copy_(depthwise.weight[order])
                depthwise.bias.copy_(depthwise.bias[order])
            if form == "fold":
                pointwise2 = _dense_with_permuted_inputs(pointwise2, order)
            elif form == "gather":
                self.shuffle_index = torch.as_tensor(shuffle_source(depthwise.out_channels, groups))
        self.depthwise = depthwise
        self.pointwise2 = pointwise2
        self.se = copy.deepcopy(unit.se)
        self.shortcut = copy.deepcopy(unit.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.depthwise(torch.relu(self.pointwise1(x)))
        if self.shuffle_groups > 1:
            branch = channel_shuffle(branch, self.shuffle_groups)
        elif self.shuffle_index is not None:
            branch = branch.index_select(1, self.shuffle_index)
        branch = self.se(self.pointwise2(branch))
        if self.stride == 2:
            return torch.relu(torch.cat((self.shortcut(x), branch), dim=1))
        return torch.relu(x + branch)


@torch.no_grad()
def _dense_with_permuted_inputs(conv: nn.Conv2d, order: torch.Tensor) -> nn.Conv2d:
    """The grouped 1x1 ``conv`` applied to ``x[:, src]`` as one dense 1x1 conv on ``x``: the block-diagonal
    weight with column ``c`` taken from position ``order[c]`` (``order`` = inverse of ``src``)."""
    out_channels, in_per_group = conv.out_channels, conv.in_channels // conv.groups
    out_per_group = out_channels // conv.groups
    full = torch.zeros(
        out_channels, conv.in_channels, 1, 1, dtype=conv.weight.dtype, device=conv.weight.device
    )
    for group in range(conv.groups):
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        cols = slice(group * in_per_group, (group + 1) * in_per_group)
        full[rows, cols] = conv.weight[rows]
    dense = nn.Conv2d(conv.in_channels, out_channels, 1, bias=True).to(conv.weight.device, conv.weight.dtype)
    dense.weight.copy_(full[:, order])
    dense.bias.copy_(conv.bias)
    return dense


def _optimize_shufflenet_v1(
    model: ShuffleNetV1, form: V1ShuffleForm, example: torch.Tensor | None, timer: Timer
) -> dict[str, str]:
    """Replace every unit; with ``form="auto"`` pick, per stage, the fastest form as measured by
    ``timer`` on the stage's real input. Returns the choice made per stage."""
    choices = {}
    x = example
    with torch.inference_mode():
        if x is not None:
            x = model.maxpool(model.conv1(x))
    for piece in model.pieces[2:]:
        stage = model.get_submodule(piece.name)
        candidates = {
            name: nn.Sequential(*(DeployShuffleV1Unit(unit, name) for unit in stage))
            for name in (V1_FORMS if form == "auto" else (form,))
        }
        if len(candidates) > 1:
            if x is None:
                raise ValueError("v1_shuffle='auto' measures each form; pass example_input")
            timings = {name: timer(candidate, x) for name, candidate in candidates.items()}
            chosen = min(timings, key=timings.get)
        else:
            chosen = next(iter(candidates))
        choices[piece.name] = chosen
        setattr(model, piece.name, candidates[chosen])
        if x is not None:
            with torch.inference_mode():
                x = stage(x)
    return choices


def _deploy_shifts(model: nn.Module) -> None:
    """Replace every shift layer of a unit declaring ``shift_path = (producer, shift, consumer)`` (a 1x1
    conv sequence, the shift, a 1x1 conv sequence) by a :class:`SegmentShift` on contiguous channel runs:
    the producer emits the channels already grouped by displacement and the consumer reads them so."""
    for unit in list(model.modules()):
        path = getattr(unit, "shift_path", None)
        if path is None or not isinstance(getattr(unit, path[1]), SHIFT_LAYERS):
            continue
        producer, shift, consumer = (getattr(unit, name) for name in path)
        order, segments = shift_segments(*shift.displacement())
        permutation = order.tolist()
        _permute_outputs(producer, permutation)
        _permute_inputs(consumer, permutation)
        # The producer's output feeds only the shift (ReLU made it a fresh tensor): safe to write over.
        setattr(unit, path[1], SegmentShift(segments, in_place=True))


def optimize(
    model: nn.Module,
    *,
    v1_shuffle: V1ShuffleForm = "fold",
    example_input: torch.Tensor | None = None,
    timer: Timer = eager_timer,
    channel_multiple: int = 4,
) -> nn.Module:
    """An inference-only copy of ``model`` with identical outputs (up to float rounding): BN folded, and
    for ShuffleNet V2/V1 the shuffle folded away as described in this module's docstring.

    ``v1_shuffle``: ``"fold"`` (dense second 1x1, no shuffle op), ``"explicit"`` (grouped conv, shuffle
    after the depthwise conv), ``"gather"`` (the same shuffle as one constant-index gather), or ``"auto"``
    (time each per stage on ``example_input`` with ``timer``; the choices are kept in
    ``deployed.v1_shuffle_choices``).

    ``channel_multiple`` (ShuffleNet V2 only): pad every width a conv reads to a multiple of it (branch
    inner widths and stage outputs to twice it) with all-zero channels, so ONNX Runtime runs every conv
    in its NCHWc kernels, which need input channel counts that are multiples of 4 (see the module
    docstring); 1 pads nothing.
    """
    if channel_multiple < 1:
        raise ValueError(f"channel_multiple must be at least 1, got {channel_multiple}")
    deployed = copy.deepcopy(model).eval()
    if isinstance(deployed, ShuffleNetV2):
        _optimize_shufflenet_v2(deployed, channel_multiple)
    elif isinstance(deployed, ShuffleNetV1):
        deployed.v1_shuffle_choices = _optimize_shufflenet_v1(deployed, v1_shuffle, example_input, timer)
    fold_batchnorm(deployed)
    _deploy_shifts(deployed)  # after the BN fold: the permuted producer must end in its conv
    use_eager_kernels(deployed)
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)
    return deployed
