"""What every command shares: the one-line error, number formatting and the repeated options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class CliError(Exception):
    """A misuse the user can fix; printed as one line, exit status 2."""


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: blank for a missing figure."""
    return "" if value is None else f"{value:.{digits}f}"


def add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse prints its usage error, exit status 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_model_options(
    parser: argparse.ArgumentParser, *, input_size: tuple[int, int] | None, input_size_help: str, example: str
) -> None:
    """The input size, classes, channels and model arguments of a registered model built by name."""
    parser.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"), default=input_size,
                        help=input_size_help)  # fmt: skip
    parser.add_argument("--num-classes", type=positive_int, default=1000,
                        help="classifier outputs (default: 1000)")  # fmt: skip
    parser.add_argument("--in-chans", type=positive_int, default=3, help="input channels (default: 3)")
    add_set_option(parser, f"override a model argument of a registered name, e.g. {example}")


def add_output_options(parser: argparse.ArgumentParser, output_help: str) -> None:
    """--output and --no-progress, which every long-running command takes."""
    parser.add_argument("--output", help=output_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def given_settings(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The training settings the user passed as options (``--epochs 3``), to apply over the recipe's."""
    settings = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    if getattr(args, "no_progress", False):
        settings["progress"] = False
    return settings


Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One (sub)command: its parser's texts and options, and either a handler or subcommands."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Handler | None = None
    subcommands: tuple[Command, ...] = ()


def add_command(sub: argparse._SubParsersAction, command: Command) -> None:
    """Add ``command`` (and its subcommands, which the user must pick one of) to ``sub``."""
    parser = sub.add_parser(command.name, help=command.help, description=command.description)
    if command.add_arguments is not None:
        command.add_arguments(parser)
    if command.subcommands:
        inner = parser.add_subparsers(dest=f"{command.name}_command", metavar=command.name.upper())
        inner.required = True
        for child in command.subcommands:
            add_command(inner, child)
    else:
        parser.set_defaults(handler=command.run)
