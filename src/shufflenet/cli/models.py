"""``shufflenet models``: the zoo with params and MFLOPs, optionally beside the papers' figures."""

from __future__ import annotations

import argparse
import json

from shufflenet._table import markdown_table
from shufflenet.cli._common import CliError, Command, fmt
from shufflenet.registry import list_models, model_cards

HELP = "list the model zoo with params and MFLOPs"
DESCRIPTION = (
    "List registered models with their params and MFLOPs at 224x224 (from the model "
    "cards); --compare puts the papers' figures beside ours."
)

COMPARE_HEADERS = ["model", "params (M)", "paper params (M)", "MFLOPs", "paper MFLOPs", "MFLOPs diff %"]
COMPARE_HEADERS += ["paper top-1 err %", "source"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    parser.add_argument("--compare", action="store_true", help="show the papers' MFLOPs, params and error")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; try `shufflenet models` for the full list")
    cards = model_cards()
    selected = [cards[name] for name in names]
    if args.format == "json":
        print(json.dumps([vars(card) for card in selected], indent=2))
        return 0
    if args.compare:
        headers = COMPARE_HEADERS
        rows = [
            [
                c.name,
                fmt(c.params / 1e6, 3),
                fmt(c.paper_params_m),
                fmt(c.mflops),
                fmt(c.paper_mflops, 0),
                fmt(100 * (c.mflops - c.paper_mflops) / c.paper_mflops) if c.paper_mflops else "",
                fmt(c.paper_top1_err),
                c.source or "",
            ]
            for c in selected
        ]
    else:
        headers = ["model", "family", "params (M)", "MFLOPs"]
        rows = [[c.name, c.family, fmt(c.params / 1e6, 3), fmt(c.mflops)] for c in selected]
    if args.format == "csv":
        print(",".join(headers))
        for row in rows:
            print(",".join(f'"{v}"' if "," in str(v) else str(v) for v in row))
    else:
        print(markdown_table(headers, rows))
        print(
            "\nMFLOPs: multiply-adds of conv and FC layers at 224x224, 1000 classes "
            "(CIFAR-native ShiftResNets: 32x32, 10 classes)."
        )
    return 0


COMMAND = Command("models", HELP, DESCRIPTION, add_arguments, run)
