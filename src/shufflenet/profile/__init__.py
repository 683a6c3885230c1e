"""Complexity as the papers count it: MFLOPs (multiply-adds), params, and memory access cost."""

from shufflenet.profile.counter import LayerStats, ModelProfile, profile
from shufflenet.profile.width import WidthSolution, solve_width, width_argument

__all__ = ["LayerStats", "ModelProfile", "WidthSolution", "profile", "solve_width", "width_argument"]
