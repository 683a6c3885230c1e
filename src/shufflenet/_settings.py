"""Typed settings: a value read from YAML or the command line, converted to its declared type and checked.

Training settings (``TrainConfig``'s fields) and model arguments (the builders' parameters) both go through
:func:`convert`, so a wrong value stops the run with one line before anything is built.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-3`` and ``5e-4`` are numbers: YAML 1.1 needs a dot (``1.0e-3``)
    and reads them as text, which then fails mid-run."""


SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``text`` read as YAML with :class:`SettingsLoader`; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=SettingsLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A parse error on one line: PyYAML's own message spans several, with a caret drawing."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


@dataclass(frozen=True)
class Interval:
    """Where a number may lie: ``Interval(0, 1, high_open=True)`` is [0, 1), ``Interval(1)`` is >= 1."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number_text(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"


_INVALID = object()  # what _coerce returns for a value that does not fit: None is a valid value
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def convert(
    name: str, value: Any, hint: Any, interval: Interval | None = None, choices: Sequence[str] = ()
) -> Any:
    """``value`` as the type ``hint`` declares (``1`` -> ``1.0`` for a float, ``3.0`` -> ``3`` for an int),
    or a one-line ValueError naming ``name``, the value and what is allowed."""
    result = _coerce(value, hint, interval, choices)
    if result is _INVALID:
        raise ValueError(f"{name} must be {describe(hint, interval, choices)}, got {_show(value)}")
    return result


def describe(hint: Any, interval: Interval | None = None, choices: Sequence[str] = ()) -> str:
    """What ``hint`` (within ``interval``, among ``choices``) allows, as words for an error message."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        words = " or ".join(describe(arg, interval, choices) for arg in rest)
        return f"null or {words}" if len(rest) < len(args) else words
    if origin is Literal or choices:
        return "one of " + ", ".join(map(str, args or choices))
    if origin in (list, tuple):
        return f"a list, each {describe(args[0] if args else Any, interval)}"
    if origin is dict or hint is dict:
        return "a mapping (KEY: VALUE)"
    noun = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(hint, "a value")
    return f"{noun} {interval}" if interval is not None and hint in (int, float) else noun


def _coerce(value: Any, hint: Any, interval: Interval | None, choices: Sequence[str]) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or str(value).lower() in ("none", "null")):
            return None
        for arg in args:
            result = _coerce(value, arg, interval, choices)
            if result is not _INVALID:
                return result
        return _INVALID
    if origin is Literal:
        return value if value in args else _INVALID
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _INVALID
        items = [_coerce(item, args[0] if args else Any, interval, ()) for item in value]
        return _INVALID if any(item is _INVALID for item in items) else items
    if origin is dict or hint is dict:
        return dict(value) if isinstance(value, Mapping) else _INVALID
    if hint is bool:
        return _to_bool(value)
    if hint in (int, float):
        number = _to_number(value, hint)
        return number if number is _INVALID or interval is None or number in interval else _INVALID
    if hint is str:
        if value is None or isinstance(value, (bool, list, dict)):
            return _INVALID
        text = str(value)  # YAML reads `--set output=2024` as a number; a text setting takes it as text
        return _INVALID if choices and text not in choices else text
    if hint is type(None):
        return None if value is None else _INVALID
    return value  # Any, or a type these settings do not use: left to the code that takes it


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    text = str(value).lower() if isinstance(value, (int, str)) else ""
    return True if text in _TRUE else False if text in _FALSE else _INVALID


def _to_number(value: Any, hint: type) -> Any:
    if isinstance(value, bool):  # bool is an int subclass: True is no batch size
        return _INVALID
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            return _INVALID
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return _INVALID
    if hint is int and isinstance(value, float):
        return int(value) if value.is_integer() else _INVALID  # 3e5 iterations: YAML reads it as a float
    return value if hint is int else float(value)


def _show(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)
