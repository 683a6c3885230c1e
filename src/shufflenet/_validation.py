"""Argument checks shared by every layer; raising ValueErrors that name the constraint and a fix."""

from __future__ import annotations


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
