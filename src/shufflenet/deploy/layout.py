"""Channel layout of a lowered program (:mod:`shufflenet.deploy.lower`): where each map keeps its channels.

A :class:`~shufflenet.deploy.lower.Program` says which logical channels an operation reads; it does not say
where a backend stores them. :func:`lay_out` picks, for every map, a physical channel order, and folds it
into the operations, so that what the papers make an index game costs nothing at run time:

- a channel shuffle (Zhang et al. 2018, section 3.1) or ShuffleNet V2's split and concatenation (Ma et
  al. 2018, section 3) become reads of contiguous channel runs. An ungrouped conv reads its input columns
  in any order and emits its rows in any order (its weights are permuted), a per-channel operation
  (depthwise conv, pool, shift, squeeze-excite) carries its input's order through, a copy writes its runs
  anywhere. A map written by several blocks (a V2 concatenation) and read in parts by the next unit is
  ordered [block A minus T, block A in T, block B in T, block B minus T], so that the writers' blocks and
  the part T a conv reads are all contiguous;
- a grouped conv reading a permuted map (ShuffleNet V1's second 1x1 after the shuffle) keeps a permuted
  read, which a backend runs as a shuffle or a gather, or :func:`fold_permuted_reads` makes it a dense
  conv with block-sparse permuted weights;
- a shift layer's channels (Chen et al. 2019, section 3) are grouped by displacement (the producer's rows
  and the consumer's columns are permuted), so a backend moves whole runs and leaves unshifted ones be.

:func:`pad_channels` adds all-zero channels so that every conv input width is a multiple of a quantum
(ONNX Runtime's NCHWc kernels); the layout then places them like any other channel.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from dataclasses import replace

import numpy as np

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
    Write,
    reads_of,
)


def out_channels(operation: Operation) -> int:
    """How many channels ``operation`` writes."""
    return operation.weight.shape[0] if isinstance(operation, Conv) else len(operation.source.channels)


def is_per_channel(operation: Operation) -> bool:
    """Output channel k depends on input channel k alone (for its value; squeeze-excite's gate mixes
    channels but follows any order given its weights permuted alike)."""
    if isinstance(operation, Conv):
        return operation.kind == "depthwise"
    return isinstance(operation, Pool | Shift | SqueezeExcite | GlobalAverage)


def is_grouped(operation: Operation) -> bool:
    """A grouped conv that is not depthwise: its input order is tied to its groups."""
    return isinstance(operation, Conv) and operation.groups > 1 and operation.kind != "depthwise"


def is_run(channels: tuple[int, ...]) -> bool:
    """The channels are one ascending run ``a, a + 1, ..., b - 1``."""
    return bool(channels) and channels == tuple(range(channels[0], channels[0] + len(channels)))


# -- zero padding -----------------------------------------------------------------------------------------


class _Padding:
    """Adds zero channels to a program in place, tracking which channels of each map are zeros."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.zeros: dict[int, set[int]] = defaultdict(set)

    def grow(self, operation: Operation, count: int) -> None:
        """Insert ``count`` zero channels into ``operation``'s target map, right after its block."""
        target = operation.target
        end = target.offset + out_channels(operation)
        program = self.program
        feature = program.maps[target.map]
        program.maps[target.map] = replace(feature, channels=feature.channels + count)

        def moved(read: Read | None) -> Read | None:
            if read is None or read.map != target.map:
                return read
            return Read(read.map, tuple(c + count if c >= end else c for c in read.channels))

        for other in program.operations:
            other.source = moved(other.source)
            if getattr(other, "residual", None) is not None:
                other.residual = moved(other.residual)
            if other.target.map == target.map and other.target.offset >= end and other is not operation:
                other.target = Write(target.map, other.target.offset + count)
        program.output = moved(program.output)
        zeros = {c + count if c >= end else c for c in self.zeros[target.map]}
        self.zeros[target.map] = zeros | set(range(end, end + count))

    def make(self, index: int, count: int) -> bool:
        """Make ``count`` more zero channels in map ``index`` (by a writer that can emit zeros: an
        ungrouped conv with no residual, or a per-channel op fed zeros); False if none can."""
        writers = [op for op in self.program.operations if op.target.map == index]
        for writer in sorted(writers, key=lambda op: -op.target.offset):
            if getattr(writer, "residual", None) is not None or isinstance(writer, Copy | SqueezeExcite):
                continue
            if isinstance(writer, Conv) and writer.groups == 1:
                self.grow(writer, count)
                _add_zero_filters(writer, count)
                return True
            if is_per_channel(writer) and self.feed(writer, count, whole=False):
                return True
        return False

    def feed(self, operation: Operation, count: int, *, whole: bool) -> bool:
        """Give ``operation`` ``count`` zero input channels more (creating them if need be), widening it;
        with ``whole`` it first takes every zero channel of the map it does not read yet."""
        source = operation.source
        outside = sorted(self.zeros[source.map] - set(source.channels))
        if whole:
            count += len(outside)
        missing = count - len(outside)
        if missing > 0 and not self.make(source.map, missing):
            return False
        source = operation.source  # renumbered if zeros were inserted before its channels
        added = sorted(self.zeros[source.map] - set(source.channels))[:count]
        if not added:
            return True
        if is_per_channel(operation):
            self.grow(operation, len(added))
        operation.source = Read(source.map, source.channels + tuple(added))
        if isinstance(operation, Conv):
            if operation.kind == "depthwise":
                operation.groups += len(added)
                _add_zero_filters(operation, len(added))
            else:
                out, _, height, width = operation.weight.shape
                zeros = np.zeros((out, len(added), height, width), np.float32)
                operation.weight = np.concatenate([operation.weight, zeros], axis=1)
        elif isinstance(operation, Shift):
            operation.dy += (0,) * len(added)
            operation.dx += (0,) * len(added)
        return True


def _add_zero_filters(conv: Conv, count: int) -> None:
    """``count`` more output channels for ``conv``, all-zero filters and biases."""
    shape = (count, *conv.weight.shape[1:])
    conv.weight = np.concatenate([conv.weight, np.zeros(shape, conv.weight.dtype)])
    conv.bias = np.concatenate([conv.bias, np.zeros(count, conv.bias.dtype)])


def pad_channels(program: Program, multiple: int) -> tuple[Program, dict[int, set[int]]]:
    """A copy of ``program`` where every conv after the stem reads a multiple of ``multiple`` channels
    (depthwise convs: of twice it), the extra ones all-zero: emitted as zero rows by an ungrouped conv (or
    carried through a per-channel op), read with zero weights. A conv that reads all of a map's real
    channels also reads its zero channels. Returns the program and each map's zero channels; a width no
    writer can pad stays as it is. ``multiple`` 1 pads nothing."""
    padded = copy.deepcopy(program)
    padding = _Padding(padded)
    if multiple <= 1:
        return padded, {}
    for operation in padded.operations:
        if not isinstance(operation, Conv) or operation.source.map == 0 or is_grouped(operation):
            continue
        depthwise = operation.kind == "depthwise"
        if depthwise and operation.residual is not None:
            continue  # its zero outputs would not stay zero
        quantum = 2 * multiple if depthwise else multiple
        source = operation.source
        zeros = padding.zeros[source.map]
        real = set(range(padded.maps[source.map].channels)) - zeros
        whole = real <= set(source.channels)
        width = len(source.channels) + (len(zeros - set(source.channels)) if whole else 0)
        if width % quantum or (whole and zeros - set(source.channels)):
            padding.feed(operation, -width % quantum, whole=whole)
    return padded, {index: set(channels) for index, channels in padding.zeros.items() if channels}


# -- the layout ------------------------------------------------------------------------------------------


def _shift_key(program: Program, index: int) -> dict[int, tuple]:
    """For map ``index``'s channels read by a shift: unshifted first, then by displacement, the order
    ``shufflenet.ops.shift_segments`` groups them in."""
    keys = {}
    for operation in program.operations:
        if isinstance(operation, Shift) and operation.source.map == index:
            for channel, dy, dx in zip(operation.source.channels, operation.dy, operation.dx, strict=True):
                keys[channel] = (0,) if (dy, dx) == (0, 0) else (1, dy, dx)
    return keys


def _natural(program: Program, operation: Operation, position: dict[int, list[int]]) -> list[int]:
    """The order (output indices) in which ``operation`` emits its block before joining: per-channel ops
    and copies follow their input's physical order, a grouped conv keeps its own, an ungrouped conv
    follows its residual, or groups a shift's channels, or keeps its own."""
    n = out_channels(operation)
    if is_per_channel(operation) or isinstance(operation, Copy):
        where = position[operation.source.map]
        return sorted(range(n), key=lambda j: where[operation.source.channels[j]])
    if is_grouped(operation):
        return list(range(n))
    if operation.residual is not None:
        where = position[operation.residual.map]
        return sorted(range(n), key=lambda j: where[operation.residual.channels[j]])
    keys = _shift_key(program, operation.target.map)
    if keys:
        offset = operation.target.offset
        return sorted(range(n), key=lambda j: keys.get(offset + j, (0,)))
    return list(range(n))


def _reorderable(operation: Operation) -> bool:
    """Whether the layout may regroup ``operation``'s block (not where its order is fixed by its input,
    its groups, its residual, or a shift's grouping)."""
    if isinstance(operation, Copy):
        return True
    return isinstance(operation, Conv) and operation.groups == 1 and operation.residual is None


def _join(blocks: list[tuple[bool, list[int]]], signature: dict[int, tuple], conv_readers: set) -> None:
    """Regroup each reorderable block's channels by who reads them (stable), then make every reader set
    that two neighbouring blocks share meet at their border, one read by a conv first."""
    classes = []
    for reorderable, channels in blocks:
        groups: dict[tuple, list[int]] = {}
        for channel in channels:
            groups.setdefault(signature[channel], []).append(channel)
        classes.append((reorderable, groups))
    for (left_free, left), (right_free, right) in itertools.pairwise(classes):
        shared = [key for key in left if key in right]
        if not shared:
            continue
        best = max(shared, key=lambda key: (bool(set(key) & conv_readers), len(left[key]) + len(right[key])))
        if left_free:
            left[best] = left.pop(best)
        if right_free:
            right_items = {best: right.pop(best)}
            right_items.update(right)
            right.clear()
            right.update(right_items)
    for (reorderable, channels), (_, groups) in zip(blocks, classes, strict=True):
        if reorderable:
            channels[:] = [channel for group in groups.values() for channel in group]


def lay_out(program: Program) -> Program:
    """An equivalent program whose maps keep their channels in a physical order chosen so that reads are
    contiguous runs wherever possible (see the module docstring). Same maps and operations, permuted
    weights and reads; ``run_program`` gives the same output."""
    operations = program.operations
    readers: dict[int, list[tuple[tuple, Read]]] = defaultdict(list)
    conv_readers = set()
    for index, operation in enumerate(operations):
        for role, read in enumerate(reads_of(operation)):
            readers[read.map].append(((index, role), read))
            if not isinstance(operation, Copy):
                conv_readers.add((index, role))
    if program.output is not None:
        readers[program.output.map].append((("output",), program.output))
        conv_readers.add(("output",))
    writers: dict[int, list[int]] = defaultdict(list)
    for index, operation in enumerate(operations):
        writers[operation.target.map].append(index)

    order: dict[int, list[int]] = {}  # map -> the logical channel at each physical position
    position: dict[int, list[int]] = {}  # map -> the physical position of each logical channel
    for index, feature in enumerate(program.maps):
        if index not in writers:
            order[index] = position[index] = list(range(feature.channels))
    for index in sorted(writers, key=lambda m: max(writers[m])):
        signature: dict[int, tuple] = defaultdict(tuple)
        for key, read in readers[index]:
            for channel in set(read.channels):
                signature[channel] += (key,)
        blocks = []
        for writer in sorted(writers[index], key=lambda i: operations[i].target.offset):
            operation = operations[writer]
            offset = operation.target.offset
            natural = [offset + j for j in _natural(program, operation, position)]
            blocks.append((_reorderable(operation), natural))
        _join(blocks, signature, conv_readers)
        physical = [channel for _, channels in blocks for channel in channels]
        if sorted(physical) != list(range(program.maps[index].channels)):
            raise ValueError(f"the writers of map {index} do not cover it exactly once")
        order[index] = physical
        where = [0] * len(physical)
        for place, channel in enumerate(physical):
            where[channel] = place
        position[index] = where

    def placed(read: Read) -> Read:
        return Read(read.map, tuple(position[read.map][c] for c in read.channels))

    laid = Program(list(program.maps), [], None, list(program.pieces))
    for operation in operations:
        target = operation.target
        rows = [order[target.map][target.offset + r] - target.offset for r in range(out_channels(operation))]
        laid.operations.append(_permuted(operation, rows, placed))
    laid.output = None if program.output is None else placed(program.output)
    return laid


def _permuted(operation: Operation, rows: list[int], placed) -> Operation:
    """``operation`` emitting its output ``rows[r]`` as row ``r``, reading physical channels (``placed``)."""
    source = placed(operation.source)
    residual = getattr(operation, "residual", None)
    changes: dict = {}
    if residual is not None:
        residual = placed(residual)
        changes["residual"] = Read(residual.map, tuple(residual.channels[j] for j in rows))
    if isinstance(operation, Conv) and operation.groups == 1:
        # Input columns in physical order: a contiguous set of channels is then read as one slice.
        columns = sorted(range(len(source.channels)), key=lambda k: source.channels[k])
        changes["source"] = Read(source.map, tuple(source.channels[k] for k in columns))
        changes["weight"] = operation.weight[rows][:, columns].copy()
        changes["bias"] = operation.bias[rows].copy()
    elif is_grouped(operation):
        if rows != sorted(rows):
            raise AssertionError("a grouped conv's rows keep their order")
        changes["source"] = source
    else:
        changes["source"] = Read(source.map, tuple(source.channels[j] for j in rows))
        if isinstance(operation, Conv):
            changes["weight"] = operation.weight[rows].copy()
            changes["bias"] = operation.bias[rows].copy()
        elif isinstance(operation, Shift):
            changes["dy"] = tuple(operation.dy[j] for j in rows)
            changes["dx"] = tuple(operation.dx[j] for j in rows)
        elif isinstance(operation, SqueezeExcite):
            changes["reduce_weight"] = operation.reduce_weight[:, rows].copy()
            changes["expand_weight"] = operation.expand_weight[rows].copy()
            changes["expand_bias"] = operation.expand_bias[rows].copy()
    return replace(operation, **changes)


def fold_permuted_reads(program: Program, indices: set[int] | None = None) -> Program:
    """A copy of ``program`` in which each grouped conv (of those at ``indices``, default all) that reads
    its input channels out of order becomes a dense conv reading them in order, its weight the
    block-diagonal grouped one with its columns permuted (Zhang et al. 2018, section 3.1: the shuffle
    folded into the second group conv)."""
    folded = copy.copy(program)
    folded.operations = list(program.operations)
    for index, operation in enumerate(program.operations):
        if indices is not None and index not in indices:
            continue
        if not is_grouped(operation) or operation.source.channels == tuple(sorted(operation.source.channels)):
            continue
        out, per_group = operation.weight.shape[:2]
        groups = operation.groups
        channels = operation.source.channels
        columns = sorted(range(len(channels)), key=lambda k: channels[k])
        dense = np.zeros((out, per_group * groups, *operation.weight.shape[2:]), np.float32)
        out_per_group = out // groups
        for group in range(groups):
            rows = slice(group * out_per_group, (group + 1) * out_per_group)
            dense[rows, group * per_group : (group + 1) * per_group] = operation.weight[rows]
        folded.operations[index] = replace(
            operation,
            source=Read(operation.source.map, tuple(channels[k] for k in columns)),
            weight=dense[:, columns].copy(),
            groups=1,
        )
    return folded
