"""Tensor operators the papers introduce."""

from shufflenet.ops.shuffle import ChannelShuffle, channel_shuffle

__all__ = ["ChannelShuffle", "channel_shuffle"]
