"""Tensor operators the papers introduce."""

from shufflenet.ops.shift import (
    GroupedShift,
    SegmentShift,
    ShiftSegment,
    ShiftSparsityRow,
    SparseShift,
    bilinear_shift,
    grouped_offsets,
    integer_shift,
    quantized_shift,
    shift_layers,
    shift_parameters,
    shift_penalty,
    shift_segments,
    shift_slab,
    shift_sparsity,
    sparsity_table,
)
from shufflenet.ops.shuffle import ChannelShuffle, channel_shuffle

__all__ = [
    "ChannelShuffle",
    "GroupedShift",
    "SegmentShift",
    "ShiftSegment",
    "ShiftSparsityRow",
    "SparseShift",
    "bilinear_shift",
    "channel_shuffle",
    "grouped_offsets",
    "integer_shift",
    "quantized_shift",
    "shift_layers",
    "shift_parameters",
    "shift_penalty",
    "shift_segments",
    "shift_slab",
    "shift_sparsity",
    "sparsity_table",
]
