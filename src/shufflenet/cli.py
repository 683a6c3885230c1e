"""The ``shufflenet`` command: each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from shufflenet._table import markdown_table
from shufflenet.profile import profile
from shufflenet.registry import create_model, list_models, model_cards

EXAMPLES = """\
examples:
  shufflenet models                                 the zoo: params and MFLOPs of every model
  shufflenet models --compare 'shufflenet_v1_*'     ours beside the papers' figures
  shufflenet profile shufflenet_v2_x1_0 --per-layer MFLOPs, params and MAC of each layer
  shufflenet profile mobilenet_v1_x1_0 --input-size 160 160 --format json
"""


class CliError(Exception):
    """A misuse the user can fix; printed as one line, exit status 2."""


def _parse_overrides(pairs: Sequence[str]) -> dict[str, object]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--set expects KEY=VALUE, got {pair!r} (e.g. --set shuffle=false)")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; try `shufflenet models` for the full list")
    cards = model_cards()
    selected = [cards[name] for name in names]
    if args.format == "json":
        print(json.dumps([vars(card) for card in selected], indent=2))
        return 0
    if args.compare:
        headers = [
            "model",
            "params (M)",
            "paper params (M)",
            "MFLOPs",
            "paper MFLOPs",
            "MFLOPs diff %",
            "paper top-1 err %",
            "source",
        ]
        rows = [
            [
                c.name,
                _fmt(c.params / 1e6, 3),
                _fmt(c.paper_params_m),
                _fmt(c.mflops),
                _fmt(c.paper_mflops, 0),
                _fmt(100 * (c.mflops - c.paper_mflops) / c.paper_mflops) if c.paper_mflops else "",
                _fmt(c.paper_top1_err),
                c.source or "",
            ]
            for c in selected
        ]
    else:
        headers = ["model", "family", "params (M)", "MFLOPs"]
        rows = [[c.name, c.family, _fmt(c.params / 1e6, 3), _fmt(c.mflops)] for c in selected]
    if args.format == "csv":
        print(",".join(headers))
        for row in rows:
            print(",".join(f'"{v}"' if "," in str(v) else str(v) for v in row))
    else:
        print(markdown_table(headers, rows))
        print("\nMFLOPs: multiply-adds of conv and FC layers at 224x224, 1000 classes.")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    overrides = _parse_overrides(args.set)
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, **overrides)
    result = profile(model, tuple(args.input_size), name=args.model)
    if args.format == "json":
        print(result.to_json(per_layer=args.per_layer))
    elif args.format == "csv":
        print(result.to_csv(per_layer=args.per_layer), end="")
    else:
        if args.per_layer:
            rows = [
                [
                    layer.name,
                    layer.kind,
                    "x".join(map(str, layer.output_shape)),
                    _fmt(layer.mflops, 3),
                    f"{layer.params:,}",
                    f"{layer.mac:,}",
                ]
                for layer in result.layers
            ]
            print(markdown_table(["layer", "kind", "output", "MFLOPs", "params", "MAC (elements)"], rows))
            print()
        totals = result.totals()
        print(
            markdown_table(
                ["model", "input", "MFLOPs", "params", "MAC (M elements)", "MAC (MB)"],
                [
                    [
                        args.model,
                        totals["input_size"],
                        _fmt(result.mflops, 2),
                        f"{result.params:,}",
                        _fmt(result.mac / 1e6, 2),
                        _fmt(result.mac_bytes / 1e6, 2),
                    ]
                ],
            )
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shufflenet",
        description="Efficient CNNs from the ShuffleNet V1/V2 and MobileNet V1/V2 papers: the model zoo "
        "and its complexity, counted as the papers count it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser(
        "models",
        help="list the model zoo with params and MFLOPs",
        description="List registered models with their params and MFLOPs at 224x224 (from the model "
        "cards); --compare puts the papers' figures beside ours.",
    )
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    models.add_argument("--compare", action="store_true", help="show the papers' MFLOPs, params and error")
    models.add_argument("--format", choices=("table", "csv", "json"), default="table")
    models.set_defaults(handler=cmd_models)

    prof = sub.add_parser(
        "profile",
        help="count MFLOPs, params and memory access cost of a model",
        description="Count multiply-adds (conv and FC only, as the papers do), parameters (BN affine "
        "included) and memory access cost (feature-map reads + writes + weights, ShuffleNet V2 "
        "section 2) of one forward pass at batch 1.",
    )
    prof.add_argument("model", help="registered model name (see `shufflenet models`)")
    prof.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=(224, 224),
        help="input height and width (default: 224 224)",
    )
    prof.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default: 1000)")
    prof.add_argument("--in-chans", type=int, default=3, help="input channels (default: 3)")
    prof.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model argument, e.g. --set shuffle=false --set layout=torchvision",
    )
    prof.add_argument("--per-layer", action="store_true", help="one row per layer as well as the totals")
    prof.add_argument("--format", choices=("table", "csv", "json"), default="table")
    prof.set_defaults(handler=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (CliError, ValueError) as error:
        print(f"shufflenet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
