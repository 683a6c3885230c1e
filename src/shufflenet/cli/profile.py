"""``shufflenet profile``: MFLOPs, params and memory access cost of one model, in total or per layer."""

from __future__ import annotations

import argparse
import sys

from shufflenet._table import markdown_table
from shufflenet.cli._common import Command, add_model_options, fmt
from shufflenet.profile import profile
from shufflenet.registry import create_model
from shufflenet.train.config import parse_overrides

HELP = "count MFLOPs, params and memory access cost of a model"
DESCRIPTION = (
    "Count multiply-adds (conv and FC only, as the papers do), parameters (BN affine "
    "included) and memory access cost (feature-map reads + writes + weights, Ma et al. 2018, "
    "section 2) of one forward pass at batch 1."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered model name (see `shufflenet models`)")
    add_model_options(
        parser,
        input_size=(224, 224),
        input_size_help="input height and width (default: 224 224)",
        example="--set shuffle=false --set layout=torchvision",
    )
    parser.add_argument("--per-layer", action="store_true", help="one row per layer as well as the totals")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument(
        "--target-mflops",
        type=float,
        metavar="M",
        help="first find the width (scale, alpha, width or expansion) that makes the model cost M MFLOPs "
        "at --input-size under the family's channel rounding (Zhang et al. 2018, Table 4 compares "
        "structures this way), then profile the model at that width",
    )


def run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    shape = {"num_classes": args.num_classes, "in_chans": args.in_chans}
    if args.target_mflops is not None:
        from shufflenet.profile.width import solve_width

        solution = solve_width(
            args.model, args.target_mflops, input_size=tuple(args.input_size), **shape, **overrides
        )
        overrides[solution.argument] = solution.value
        # On stderr for csv/json, so that stdout stays one document.
        print(solution.describe(), file=sys.stderr if args.format != "table" else sys.stdout)
    model = create_model(args.model, **shape, **overrides)
    result = profile(model, tuple(args.input_size), name=args.model)
    if args.format == "json":
        print(result.to_json(per_layer=args.per_layer))
        return 0
    if args.format == "csv":
        print(result.to_csv(per_layer=args.per_layer), end="")
        return 0
    if args.per_layer:
        rows = [
            [
                layer.name,
                layer.kind,
                "x".join(map(str, layer.output_shape)),
                fmt(layer.mflops, 3),
                f"{layer.params:,}",
                f"{layer.mac:,}",
            ]
            for layer in result.layers
        ]
        print(markdown_table(["layer", "kind", "output", "MFLOPs", "params", "MAC (elements)"], rows))
        print()
    totals = [
        args.model,
        result.totals()["input_size"],
        fmt(result.mflops, 2),
        f"{result.params:,}",
        fmt(result.mac / 1e6, 2),
        fmt(result.mac_bytes / 1e6, 2),
    ]
    print(markdown_table(["model", "input", "MFLOPs", "params", "MAC (M elements)", "MAC (MB)"], [totals]))
    return 0


COMMAND = Command("profile", HELP, DESCRIPTION, add_arguments, run)
