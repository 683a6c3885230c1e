"""The deploy graph: ``optimize(model)`` returns an inference-only module with identical outputs and fewer,
cheaper operations, built from the project's one lowering (:func:`shufflenet.deploy.lower.lower`), the
channel layout pass (:mod:`shufflenet.deploy.layout`) and the module that runs a laid-out program
(:mod:`shufflenet.deploy.graph`). All channel bookkeeping lives in the lowering and the layout:

- Every BN is folded into the convolution before it (the lowering).
- ShuffleNet V2 (Ma et al. 2018, section 3, Fig. 3): no channel shuffle runs at all. Each map is kept in a
  physical channel order chosen by the layout; the shuffle and the split only say which logical channel
  lives where, folded into the weights (input columns of the next 1x1 conv, rows of the last one). Outputs
  are assembled so that the next unit's transformed half is one contiguous slice (a free view).
- ShuffleNet V2 channel padding (``channel_multiple``, default 4): ONNX Runtime's CPU NCHWc transformer
  only converts a Conv whose input has a channel count that is a multiple of 4 (MlasReorderInputNchw
  reads four channels at a time); other convs run in its plain-NCHW kernels, several times slower for the
  58-channel depthwise conv of the 1x net. So every width a conv reads is padded with all-zero channels
  (:func:`shufflenet.deploy.layout.pad_channels`: zero rows and biases, ReLU keeps them 0, the readers
  get zero weights for them): depthwise inputs (a branch's inner width, a stage's output) to
  ``2 * channel_multiple`` (8 = one AVX2 NCHWc block, which the NCHWc kernels compute whole anyway), the
  next unit's transformed half to ``channel_multiple``. The branch emits those zeros next to that half,
  so it stays one slice, disjoint from the kept ones, and ONNX Runtime still fuses the unit's slices into
  one Split; the zeros are read there and never copied along. OpenVINO blocks channels itself and runs
  the padded and plain graphs alike.
- ShuffleNet V1 (Zhang et al. 2018, section 3.1): the shuffle is the order the depthwise conv reads, which
  the layout carries past it (a per-channel operation), to where the tensor is smallest (after the
  stride); there the second 1x1 group conv reads a permuted map, run as a shuffle (``"explicit"``), a
  constant-index gather (``"gather"``) or folded into it as a dense conv with permuted block-sparse
  weights (``"fold"``). Which is faster depends on the machine and the runtime, so ``v1_shuffle="auto"``
  times each per stage with the timer the caller runs the model with.
- Eager PyTorch (:mod:`shufflenet.deploy.eager`): the graph also runs fast eagerly on CPU with
  channels_last inputs: 1x1 convs are matrix products on the NHWC pixel rows (a V2 unit's transformed
  half is a strided slice of them, no copy), the stem's max-pool is four strided maxima. Traced, compiled
  or exported, every module keeps its plain Conv/MaxPool graph. ``channel_multiple=1`` suits eager (the
  padding only helps ONNX Runtime).
- Shift units (ShiftResNet, FE-Net; Chen et al. 2019, section 3): each shift layer becomes its inference
  form, channels grouped by displacement with only the shifted groups moved (in place in eager PyTorch;
  Slice + Pad + Concat in exports). The layout groups them by permuting the 1x1 convs on either side.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from shufflenet.deploy.graph import DeployGraph, ProgramSegment, segment_bounds
from shufflenet.deploy.layout import fold_permuted_reads, is_grouped, lay_out, pad_channels
from shufflenet.deploy.lower import Program, Read, lower
from shufflenet.deploy.timing import eager_timer
from shufflenet.models import ShuffleNetV2

V1ShuffleForm = Literal["auto", "fold", "explicit", "gather"]
V1_FORMS = ("fold", "explicit", "gather")
Timer = Callable[[nn.Module, torch.Tensor], float]

LOWERING_SIZE = (224, 224)
"""The input size programs are lowered at without an example input (the graph runs at any size)."""


def _permuted_grouped_reads(program: Program, operations: range) -> bool:
    """Whether a grouped conv among ``operations`` reads its input out of order (a V1 shuffle)."""
    return any(
        is_grouped(program.operations[i])
        and program.operations[i].source.channels != tuple(sorted(program.operations[i].source.channels))
        for i in operations
    )


def _segment(
    program: Program, folded: Program, bounds: tuple[str, range, int, Read], form: str
) -> ProgramSegment:
    """One piece of the graph; with ``form`` "fold" its permuted grouped reads folded into dense convs."""
    _, operations, source, output = bounds
    permuted = "explicit" if form == "explicit" else "gather"
    chosen = folded if form == "fold" else program
    return ProgramSegment(chosen, operations, source, output, permuted, form)


def optimize(
    model: nn.Module,
    *,
    v1_shuffle: V1ShuffleForm = "fold",
    example_input: torch.Tensor | None = None,
    timer: Timer = eager_timer,
    channel_multiple: int = 4,
) -> nn.Module:
    """An inference-only module computing ``model`` (any registered family) with identical outputs (up to
    float rounding): BN folded, shuffles and splits folded into the channel layout, as described in this
    module's docstring. It takes any input size the model takes.

    ``v1_shuffle``: ``"fold"`` (dense second 1x1, no shuffle op), ``"explicit"`` (grouped conv, shuffle
    after the depthwise conv), ``"gather"`` (the same shuffle as one constant-index gather), or ``"auto"``
    (time each per stage on ``example_input`` with ``timer``; the choices are kept in
    ``deployed.v1_shuffle_choices``).

    ``channel_multiple`` (ShuffleNet V2 only): pad every width a conv reads to a multiple of it (depthwise
    inputs to twice it) with all-zero channels, so ONNX Runtime runs every conv in its NCHWc kernels, which
    need input channel counts that are multiples of 4 (see the module docstring); 1 pads nothing.
    """
    if channel_multiple < 1:
        raise ValueError(f"channel_multiple must be at least 1, got {channel_multiple}")
    if v1_shuffle not in (*V1_FORMS, "auto"):
        raise ValueError(f"v1_shuffle must be one of auto, {', '.join(V1_FORMS)}; got {v1_shuffle!r}")
    source = copy.deepcopy(model).eval() if model.training else model
    size = LOWERING_SIZE if example_input is None else tuple(example_input.shape[-2:])
    program = lower(source, size)
    if isinstance(model, ShuffleNetV2):
        program, _ = pad_channels(program, channel_multiple)
    program = lay_out(program)
    folded = fold_permuted_reads(program)
    pieces = segment_bounds(program)
    permuted = any(_permuted_grouped_reads(program, bounds[1]) for bounds in pieces)
    if v1_shuffle == "auto" and example_input is None and permuted:
        raise ValueError("v1_shuffle='auto' measures each form; pass example_input")
    segments = []
    choices = {}
    x = example_input
    for bounds in pieces:
        name = bounds[0]
        if not _permuted_grouped_reads(program, bounds[1]):
            segment = _segment(program, folded, bounds, "")
        elif v1_shuffle != "auto":
            segment = _segment(program, folded, bounds, v1_shuffle)
            choices[name] = v1_shuffle
        else:
            candidates = {form: _segment(program, folded, bounds, form) for form in V1_FORMS}
            timings = {form: timer(candidate, x) for form, candidate in candidates.items()}
            choices[name] = min(timings, key=timings.get)
            segment = candidates[choices[name]]
        if x is not None:
            with torch.inference_mode():
                x = segment(x)
        segments.append((name, segment))
    deployed = DeployGraph(program, segments)
    deployed.v1_shuffle_choices = choices
    return deployed
