"""Complexity as the papers count it: MFLOPs (multiply-adds), params, and memory access cost."""

from shufflenet.profile.counter import LayerStats, ModelProfile, profile

__all__ = ["LayerStats", "ModelProfile", "profile"]
