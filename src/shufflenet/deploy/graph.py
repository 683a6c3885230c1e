"""A laid-out program (:mod:`shufflenet.deploy.layout`) as a traceable ``nn.Module``: the deploy graph.

Each operation is a plain module (``nn.Conv2d`` with BN already folded, pooling, :class:`SegmentShift`)
and each read is what its channels make it: the whole map, a slice (a free view), or, for a grouped conv
that reads a permuted map, a channel shuffle or a gather. A map written by several operations is the
concatenation of their outputs; a copied part is a slice of its source. Nothing depends on the spatial
size the program was lowered at, so the module takes any input size the model takes, and it exports to
ONNX with a dynamic batch. In eager PyTorch its 1x1 convs and the stem's max-pool take the channels_last
fast path of :mod:`shufflenet.deploy.eager`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from shufflenet import blocks
from shufflenet.deploy.channels import contiguous_runs, shuffle_source
from shufflenet.deploy.eager import use_eager_kernels
from shufflenet.deploy.layout import is_run, out_channels
from shufflenet.deploy.lower import (
    Conv,
    Copy,
    GlobalAverage,
    Operation,
    Pool,
    Program,
    Read,
    Shift,
    SqueezeExcite,
    reads_of,
)
from shufflenet.ops import SegmentShift, channel_shuffle, shift_segments

PermutedRead = Literal["explicit", "gather"]


@dataclass(frozen=True)
class ReadPlan:
    """How a read runs: ``"whole"`` map, ``"slice"`` ``start:stop``, ``"shuffle"`` of that slice in
    ``groups`` groups, ``"gather"`` by the index buffer ``index``, or ``"runs"`` (a copy's slices)."""

    map: int
    kind: Literal["whole", "slice", "shuffle", "gather", "runs"]
    start: int = 0
    stop: int = 0
    groups: int = 1
    index: str = ""
    runs: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Step:
    """One operation: its layer (``None`` for a copy or a global average), reads, target and epilogue."""

    operation: Operation
    layer: int | None
    source: ReadPlan
    residual: ReadPlan | None
    target: int
    offset: int
    channels: int
    activation: str


def _shuffle_groups(channels: tuple[int, ...]) -> int | None:
    """``g`` if reading ``channels`` (a permutation of a run) is ``channel_shuffle(run, g)``."""
    start, width = min(channels), len(channels)
    relative = [c - start for c in channels]
    for groups in range(2, width):
        if width % groups == 0 and relative == shuffle_source(width, groups):
            return groups
    return None


class ProgramSegment(nn.Module):
    """Operations ``operations`` of ``program`` (laid out) as a module from the physical tensor of map
    ``source`` to that of the read ``output``. Grouped convs that read a permuted map shuffle it
    (``permuted="explicit"``, when the order is a channel shuffle) or gather it (``"gather"``)."""

    def __init__(
        self,
        program: Program,
        operations: range,
        source: int,
        output: Read,
        permuted: PermutedRead = "gather",
        form: str = "",
    ) -> None:
        super().__init__()
        self.form = form
        self.source = source
        self.layers = nn.ModuleList()
        self.steps: list[Step] = []
        self._indices = 0
        selected = [program.operations[i] for i in operations]
        readers: dict[int, int] = defaultdict(int)
        copied = set()  # maps a copy writes into: they may be views of their source
        for operation in program.operations:
            for read in reads_of(operation):
                readers[read.map] += 1
            if isinstance(operation, Copy):
                copied.add(operation.target.map)
        if program.output is not None:
            readers[program.output.map] += 1
        writers: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for operation in selected:
            writers[operation.target.map].append((operation.target.offset, out_channels(operation)))
        # A map read across its writers' parts is concatenated once, and every read of it slices that
        # (ONNX Runtime fuses slices of one tensor into one Split).
        self.joined = {
            index
            for index, parts in writers.items()
            if len(parts) > 1
            and any(
                not self._within_part(read, parts)
                for operation in [*selected, None]
                for read in (reads_of(operation) if operation is not None else [output])
                if read.map == index
            )
        }
        self.maps = {index: program.maps[index].channels for index in writers}
        self.maps.setdefault(source, program.maps[source].channels)
        for operation in selected:
            layer = self._layer(operation, readers, source, copied)
            if layer is not None:
                self.layers.append(layer)
            residual = getattr(operation, "residual", None)
            self.steps.append(
                Step(
                    operation,
                    len(self.layers) - 1 if layer is not None else None,
                    self._plan(operation.source, copy=isinstance(operation, Copy), permuted=permuted),
                    None if residual is None else self._plan(residual, copy=False, permuted="gather"),
                    operation.target.map,
                    operation.target.offset,
                    out_channels(operation),
                    getattr(operation, "activation", "none"),
                )
            )
        self.output = self._plan(output, copy=False, permuted="gather")
        use_eager_kernels(self)
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    @staticmethod
    def _within_part(read: Read, parts: list[tuple[int, int]]) -> bool:
        low, high = min(read.channels), max(read.channels)
        return any(offset <= low and high < offset + width for offset, width in parts)

    def _plan(self, read: Read, *, copy: bool, permuted: PermutedRead) -> ReadPlan:
        channels = read.channels
        if channels == tuple(range(self.maps[read.map])):
            return ReadPlan(read.map, "whole")
        if is_run(channels):
            return ReadPlan(read.map, "slice", channels[0], channels[-1] + 1)
        if copy:
            return ReadPlan(read.map, "runs", runs=tuple(contiguous_runs(channels)))
        start, stop = min(channels), max(channels) + 1
        if permuted == "explicit" and stop - start == len(channels):
            groups = _shuffle_groups(channels)
            if groups is not None:
                return ReadPlan(read.map, "shuffle", start, stop, groups)
        name = f"index{self._indices}"
        self._indices += 1
        self.register_buffer(name, torch.tensor(channels, dtype=torch.long), persistent=False)
        return ReadPlan(read.map, "gather", index=name)

    def _layer(
        self, operation: Operation, readers: dict[int, int], source: int, copied: set[int]
    ) -> nn.Module | None:
        if isinstance(operation, Conv):
            out, per_group, kernel, _ = operation.weight.shape
            conv = nn.Conv2d(
                per_group * operation.groups,
                out,
                kernel,
                operation.stride,
                operation.padding,
                groups=operation.groups,
            )
            conv.weight = nn.Parameter(torch.from_numpy(operation.weight.copy()), requires_grad=False)
            conv.bias = nn.Parameter(torch.from_numpy(operation.bias.copy()), requires_grad=False)
            return conv
        if isinstance(operation, Pool):
            if operation.kind == "max":
                return nn.MaxPool2d(operation.kernel, operation.stride, operation.padding)
            return nn.AvgPool2d(operation.kernel, operation.stride, operation.padding)
        if isinstance(operation, Shift):
            order, segments = shift_segments(torch.tensor(operation.dy), torch.tensor(operation.dx))
            # In place only over a map that this shift alone reads and that this segment computed itself.
            index = operation.source.map
            alone = readers[index] == 1 and index != source and index not in copied
            return SegmentShift(segments, order, in_place=alone)
        if isinstance(operation, SqueezeExcite):
            return _squeeze_excite(operation)
        return None

    def _read(self, maps: dict, plan: ReadPlan) -> torch.Tensor:
        x = self._map(maps, plan.map)
        if plan.kind == "whole":
            return x
        if plan.kind == "slice":
            return x[:, plan.start : plan.stop]
        if plan.kind == "shuffle":
            return channel_shuffle(x[:, plan.start : plan.stop], plan.groups)
        return x.index_select(1, getattr(self, plan.index))

    def _map(self, maps: dict, index: int) -> torch.Tensor:
        value = maps[index]
        if isinstance(value, list):  # the parts of a concatenation, by offset
            value = torch.cat([part for _, _, part in sorted(value, key=lambda item: item[0])], 1)
            maps[index] = value
        return value

    def _part(self, maps: dict, plan: ReadPlan) -> torch.Tensor | None:
        """A read inside one written part of an unjoined map, taken from that part (no concatenation)."""
        value = maps[plan.map]
        if not isinstance(value, list) or plan.map in self.joined or plan.kind not in ("whole", "slice"):
            return None
        start, stop = (0, self.maps[plan.map]) if plan.kind == "whole" else (plan.start, plan.stop)
        for offset, width, part in value:
            if offset <= start and stop <= offset + width:
                return part[:, start - offset : stop - offset]
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps: dict[int, torch.Tensor | list] = {self.source: x}

        def read(plan: ReadPlan) -> torch.Tensor:
            part = self._part(maps, plan)
            return part if part is not None else self._read(maps, plan)

        for step in self.steps:
            operation = step.operation
            if step.source.kind == "runs":
                runs = step.source.runs
                parts = [(b - a, read(ReadPlan(step.source.map, "slice", a, b))) for a, b in runs]
            else:
                source = read(step.source)
                if step.layer is not None:
                    out = self.layers[step.layer](source)
                elif isinstance(operation, GlobalAverage):
                    out = F.adaptive_avg_pool2d(source, 1)  # one GlobalAveragePool node in exports
                else:  # a copy of one run
                    out = source
                if step.residual is not None:
                    out = out + read(step.residual)
                if step.activation == "relu":
                    out = F.relu(out, inplace=not isinstance(operation, Copy))
                elif step.activation == "relu6":
                    out = F.relu6(out, inplace=not isinstance(operation, Copy))
                parts = [(step.channels, out)]
            offset = step.offset
            for width, part in parts:  # widths known here, not read off tensors (a tracer would track them)
                if offset == 0 and width == self.maps[step.target]:
                    maps[step.target] = part
                else:
                    existing = maps.get(step.target)
                    if not isinstance(existing, list):
                        existing = maps[step.target] = []
                    existing.append((offset, width, part))
                offset += width
        return read(self.output)


def _squeeze_excite(operation: SqueezeExcite) -> blocks.SqueezeExcite:
    """The library's squeeze-excite module holding ``operation``'s (laid-out) weights."""
    se = blocks.SqueezeExcite(operation.expand_weight.shape[0])
    for name, weight, bias in (
        ("reduce", operation.reduce_weight, operation.reduce_bias),
        ("expand", operation.expand_weight, operation.expand_bias),
    ):
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
        conv.weight = nn.Parameter(torch.from_numpy(weight[:, :, None, None].copy()), requires_grad=False)
        conv.bias = nn.Parameter(torch.from_numpy(bias.copy()), requires_grad=False)
        setattr(se, name, conv)
    return se


def segment_bounds(program: Program) -> list[tuple[str, range, int, Read]]:
    """``(name, operations, source map, output read)`` for each piece of ``program`` that runs anything,
    cut where exactly one map passes from one piece to the next (pieces are merged otherwise)."""
    starts = [start for _, start in program.pieces] + [len(program.operations)]
    names = [name for name, _ in program.pieces]
    later_reads: list[set[int]] = []
    needed = {program.output.map}
    for operation in reversed(program.operations):
        later_reads.append(set(needed))
        needed |= {read.map for read in reads_of(operation)}
    later_reads.reverse()  # later_reads[i]: maps read after operation i
    pieces = []
    name, begin = names[0], starts[0]
    for index in range(len(names)):
        stop = starts[index + 1]
        if stop == begin:
            name = names[index + 1] if index + 1 < len(names) else name
            continue
        ops = range(begin, stop)
        written = {program.operations[i].target.map for i in ops}
        inputs = {read.map for i in ops for read in reads_of(program.operations[i])} - written
        outputs = written & later_reads[stop - 1] if stop < len(program.operations) else {program.output.map}
        last = index + 1 == len(names)
        if not last and (len(inputs) != 1 or len(outputs) != 1):
            continue  # merge with the next piece
        output = program.output if last else program.whole(next(iter(outputs)))
        pieces.append((name, ops, next(iter(inputs)), output))
        if not last:
            name, begin = names[index + 1], stop
    return pieces


class DeployGraph(nn.Module):
    """The deploy graph: the segments in order, then the classifier's output flattened. ``program`` is the
    laid-out program it runs."""

    def __init__(self, program: Program, segments: list[tuple[str, ProgramSegment]]) -> None:
        super().__init__()
        self.program = program
        self.segment_names = []
        for name, segment in segments:
            attribute = name.replace(".", "_")
            self.add_module(attribute, segment)
            self.segment_names.append(attribute)

    def segments(self) -> list[ProgramSegment]:
        """The segments, in the order they run."""
        return [getattr(self, name) for name in self.segment_names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments():
            x = segment(x)
        return x.flatten(1)
