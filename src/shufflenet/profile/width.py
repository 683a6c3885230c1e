"""The width that meets a complexity budget: how the papers compare structures "at the same complexity"
(Zhang et al. 2018, section 4.2 and Table 4: each peer's widths scaled until it costs 140, 38 or 13 MFLOPs;
Ma et al. 2018, Table 8's "complexity levels"). The width multiplier goes through the family's own rounding
rule (channels made divisible, group counts kept), so the search runs on the built network's count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shufflenet.profile.counter import profile
from shufflenet.registry import create_model, model_arguments

# The width multiplier's name in each family's builder: ShuffleNet V1/V2 ``scale``, MobileNet ``alpha``,
# FE-Net ``width``; ShiftResNet widens its units through the integer ``expansion``.
WIDTH_ARGUMENTS = ("scale", "alpha", "width", "expansion")
MAX_EXPANSION = 64


@dataclass(frozen=True)
class WidthSolution:
    """The width found: the argument, its value, and the MFLOPs of the network built with it."""

    argument: str
    value: float
    mflops: float
    target_mflops: float

    @property
    def relative_error(self) -> float:
        return (self.mflops - self.target_mflops) / self.target_mflops

    def describe(self) -> str:
        return (
            f"{self.argument}={self.value:g}: {self.mflops:.2f} MFLOPs against a budget of "
            f"{self.target_mflops:g} ({100 * self.relative_error:+.1f}%)"
        )


def width_argument(name: str) -> str:
    """The argument of registered model ``name`` that sets its width; ValueError if it has none."""
    accepted = model_arguments(name)
    for argument in WIDTH_ARGUMENTS:
        if argument in accepted:
            return argument
    raise ValueError(f"{name} has no width argument ({', '.join(WIDTH_ARGUMENTS)}); it cannot be solved for")


def solve_width(
    builder: str | Callable[[float], nn.Module],
    target_mflops: float,
    *,
    argument: str | None = None,
    integer: bool = False,
    input_size: tuple[int, int] = (224, 224),
    low: float = 0.05,
    high: float = 8.0,
    **model_args: Any,
) -> WidthSolution:
    """The width whose network costs closest to ``target_mflops`` (multiply-adds at ``input_size``).

    ``builder`` is a registered model name (its width argument found by :func:`width_argument`, the other
    ``model_args`` passed on) or a callable from the width to a model (for peers built outside the
    registry). The count is a step function of the width, since the family rounds channels: the search
    bisects for the step that crosses the budget and returns the closer of its two sides. An integer
    width (ShiftResNet's expansion, or ``integer=True``) is scanned 1, 2, 3, ... instead."""
    if target_mflops <= 0:
        raise ValueError(f"target_mflops must be positive, got {target_mflops}")
    if isinstance(builder, str):
        name = builder
        argument = argument or width_argument(name)
        integer = integer or model_arguments(name)[argument] is int

        def build(value: float) -> nn.Module:
            try:
                return create_model(name, **{argument: value}, **model_args)
            except ValueError as error:
                raise ValueError(
                    f"{name} cannot be built at {argument}={value:g}, so its width cannot be "
                    f"searched: {error}"
                ) from None
    else:
        build, argument = builder, argument or "width"

    def mflops(value: float) -> float:
        return _count(lambda: build(int(value) if integer else value), input_size)

    if integer:
        return _scan_integers(mflops, target_mflops, argument)
    low_mflops, high_mflops = mflops(low), mflops(high)
    if not low_mflops <= target_mflops <= high_mflops:
        raise ValueError(
            f"{target_mflops:g} MFLOPs is outside what {argument} in [{low:g}, {high:g}] reaches "
            f"({low_mflops:.2f} to {high_mflops:.2f} MFLOPs)"
        )
    below, above = (low, low_mflops), (high, high_mflops)
    while above[0] - below[0] > 1e-4 * above[0]:
        middle = round((below[0] + above[0]) / 2, 6)
        count = mflops(middle)
        if count < target_mflops:
            below = (middle, count)
        else:
            above = (middle, count)
    value, count = min((below, above), key=lambda side: abs(side[1] - target_mflops))
    return WidthSolution(argument, value, count, target_mflops)


def _count(build: Callable[[], nn.Module], input_size: tuple[int, int]) -> float:
    """MFLOPs of the network ``build`` makes. The count needs only shapes, so the network is built and run on
    the meta device (no weights drawn, no arithmetic: a 8x network costs as little as a 1x one), or on the
    CPU where a layer cannot run there (a NotImplementedError, which is a RuntimeError)."""
    try:
        with torch.device("meta"):
            model = build()
        return profile(model.eval(), input_size, in_chans=getattr(model, "in_chans", 3)).mflops
    except RuntimeError:
        model = build()
        return profile(model.eval(), input_size, in_chans=getattr(model, "in_chans", 3)).mflops


def _scan_integers(mflops: Callable[[float], float], target: float, argument: str) -> WidthSolution:
    best: tuple[int, float] | None = None
    for value in range(1, MAX_EXPANSION + 1):
        count = mflops(value)
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (value, count)
        if count >= target:
            break
    assert best is not None
    return WidthSolution(argument, best[0], best[1], target)
