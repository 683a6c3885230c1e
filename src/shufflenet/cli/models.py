"""``shufflenet models``: the zoo with params and MFLOPs, optionally beside the papers' figures."""

from __future__ import annotations

import argparse
import json

from shufflenet._table import markdown_table
from shufflenet.cli._common import CliError, Command, fmt
from shufflenet.registry import ModelCard, list_models, model_cards

HELP = "list the model zoo with params and MFLOPs"
DESCRIPTION = (
    "List registered models with their params and MFLOPs at 224x224 (from the model "
    "cards); --compare puts the papers' figures beside ours."
)

COMPARE_HEADERS = ["model", "params (M)", "paper params (M)", "MFLOPs", "paper MFLOPs", "paper counts"]
COMPARE_HEADERS += ["ours so counted", "MFLOPs diff %", "paper top-1 err %", "source"]
COUNTS_LABEL = {"conv": "conv", "conv+fc": "conv+FC"}
FOOTNOTE = (
    "\nMFLOPs: multiply-adds of conv and FC layers at 224x224, 1000 classes "
    "(CIFAR-native ShiftResNets: 32x32, 10 classes)."
)
COMPARE_FOOTNOTE = (
    "\npaper counts: the layers the paper's MFLOPs count (Zhang et al. 2018: Tables 1-2 conv only, "
    "Table 5 conv+FC;\nTable 4's levels are met here with conv+FC); 'ours so counted' and the diff "
    "count the same layers."
)


def compare_row(card: ModelCard) -> list[str]:
    """One --compare row: ours beside the paper's figures, the MFLOPs compared in the paper's convention."""
    ours = paper_counts = diff = ""
    if card.paper_mflops:
        counted = card.mflops_as_paper_counts()
        ours, paper_counts = fmt(counted), COUNTS_LABEL[card.paper_counts]
        diff = fmt(100 * (counted - card.paper_mflops) / card.paper_mflops)
    return [
        card.name,
        fmt(card.params / 1e6, 3),
        "" if card.paper_params_m is None else f"{card.paper_params_m:g}",  # as typed: 0.55, 1.4
        fmt(card.mflops),
        "" if card.paper_mflops is None else f"{card.paper_mflops:g}",
        paper_counts,
        ours,
        diff,
        fmt(card.paper_top1_err),
        card.source or "",
    ]


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
        rows = [compare_row(card) for card in selected]
    else:
        headers = ["model", "family", "params (M)", "MFLOPs"]
        rows = [[c.name, c.family, fmt(c.params / 1e6, 3), fmt(c.mflops)] for c in selected]
    if args.format == "csv":
        print(",".join(headers))
        for row in rows:
            print(",".join(f'"{v}"' if "," in str(v) else str(v) for v in row))
    else:
        print(markdown_table(headers, rows))
        print(FOOTNOTE + (COMPARE_FOOTNOTE if args.compare else ""))
    return 0


COMMAND = Command("models", HELP, DESCRIPTION, add_arguments, run)
