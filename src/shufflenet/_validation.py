"""Argument checks shared by every layer; raising ValueErrors that name the constraint and a fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def nearest_multiples(value: int, divisor: int) -> str:
    """The multiples of ``divisor`` around ``value``, as text for an error message ("99 or 102")."""
    below = (value // divisor) * divisor
    above = below + divisor
    return f"{below} or {above}" if below > 0 else str(above)


def require_divisible(channels: int, groups: int, what: str = "channels") -> None:
    """Raise ValueError unless ``channels`` splits evenly into ``groups`` groups."""
    if groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups}")
    if channels % groups:
        raise ValueError(
            f"{what} {channels} not divisible by groups {groups}; "
            f"nearest valid: {nearest_multiples(channels, groups)}"
        )


def require_positive(value: float, what: str) -> None:
    """Raise ValueError unless ``value`` is a positive number."""
    if not value > 0:
        raise ValueError(f"{what} must be positive, got {value}")


def state_dict_mismatch(expected: Mapping[str, Any], loaded: Mapping[str, Any]) -> str | None:
    """Describe how ``loaded`` fails to fit a model whose state_dict is ``expected`` (keys, then shapes);
    None when every key and shape matches. Callers add the fix that fits their case."""
    missing, unexpected = sorted(set(expected) - set(loaded)), sorted(set(loaded) - set(expected))
    if missing or unexpected:
        return f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
    for key, value in loaded.items():
        if tuple(expected[key].shape) != tuple(value.shape):
            return f"{key} has shape {tuple(value.shape)} but the model wants {tuple(expected[key].shape)}"
    return None
