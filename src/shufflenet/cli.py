"""The ``shufflenet`` command: each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from shufflenet._table import markdown_table
from shufflenet.profile import profile
from shufflenet.registry import create_model, list_models, model_cards
from shufflenet.train.config import parse_overrides

EXAMPLES = """\
examples:
  shufflenet train                                  Fashion-MNIST, quick recipe: train, evaluate, summarize
  shufflenet train --recipe imagenet-shufflenet-v1 --data-dir /data/imagenet
  torchrun --nproc_per_node 8 -m shufflenet train --recipe imagenet-shufflenet-v2 --data-dir /data/imagenet
  shufflenet train --output runs/fm --resume         continue an interrupted run where it stopped
  shufflenet evaluate --checkpoint runs/fm/model.safetensors --dataset fashion-mnist
  shufflenet models                                 the zoo: params and MFLOPs of every model
  shufflenet models --compare 'shufflenet_v1_*'     ours beside the papers' figures
  shufflenet profile shufflenet_v2_x1_0 --per-layer MFLOPs, params and MAC of each layer
  shufflenet profile mobilenet_v1_x1_0 --input-size 160 160 --format json
"""


class CliError(Exception):
    """A misuse the user can fix; printed as one line, exit status 2."""


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
    overrides = parse_overrides(args.set)
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


def cmd_train(args: argparse.Namespace) -> int:
    from shufflenet.train.config import list_recipes, load_config
    from shufflenet.train.engine import TrainingDiverged, TrainingInterrupted, train

    if args.list_recipes:
        for name in list_recipes():
            print(name)
        return 0
    overrides = parse_overrides(args.set)
    for key in (
        "model",
        "dataset",
        "data_dir",
        "epochs",
        "batch_size",
        "lr",
        "output",
        "device",
        "num_workers",
    ):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.skip_bad_images:
        overrides["skip_bad_images"] = True
    if args.no_progress:
        overrides["progress"] = False
    config = load_config(args.recipe, overrides)
    try:
        train(config, resume=args.resume if args.resume != "" else True)
    except TrainingInterrupted as stop:
        print(f"shufflenet train: {stop}", file=sys.stderr)
        return 130
    except TrainingDiverged as failure:
        print(f"shufflenet train: error: {failure}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from shufflenet.train.evaluate import evaluate_checkpoint

    summary = evaluate_checkpoint(
        args.checkpoint,
        args.dataset,
        data_dir=args.data_dir,
        model_name=args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        device=args.device,
        num_workers=args.num_workers,
        output=args.output,
    )
    if args.format == "json":
        print(json.dumps(summary, indent=2))
        return 0
    print(
        markdown_table(
            ["model", "dataset", "samples", "top-1 err %", "top-5 err %", "loss"],
            [
                [
                    summary["model"],
                    summary["dataset"],
                    summary["samples"],
                    _fmt(summary["top1_err"], 2),
                    _fmt(summary["top5_err"], 2),
                    _fmt(summary["loss"], 4),
                ]
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["class", "accuracy %"],
            [[name, _fmt(100 * acc, 2)] for name, acc in summary["per_class_accuracy"].items()],
        )
    )
    if "confusion_matrix_png" in summary:
        print(f"\nconfusion matrix: {summary['confusion_matrix_png']}")
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
    _add_set_option(prof, "override a model argument, e.g. --set shuffle=false --set layout=torchvision")
    prof.add_argument("--per-layer", action="store_true", help="one row per layer as well as the totals")
    prof.add_argument("--format", choices=("table", "csv", "json"), default="table")
    prof.set_defaults(handler=cmd_profile)

    tr = sub.add_parser(
        "train",
        help="train a model with a paper's recipe (default: Fashion-MNIST, quick)",
        description="Train with a recipe (the papers' settings, shipped as YAML), evaluate, and print a "
        "summary. Writes a checkpoint (full state, atomically), metrics.csv/json, TensorBoard logs, "
        "learning curves and a confusion matrix (PNG), and model.safetensors + model.json to the run "
        "directory. Under torchrun it trains data-parallel (gloo on CPU, NCCL on GPU). Ctrl-C saves a "
        "checkpoint first; --resume continues exactly where it stopped.",
        epilog="recipes: " + ", ".join(_recipe_names()) + ". Any setting: --set KEY=VALUE, e.g. "
        "--set label_smoothing=0.1 --set model_args.small_input=true --set ema_decay=0.999.",
    )
    tr.add_argument(
        "--recipe",
        default="fashion-mnist-quick",
        help="recipe name or YAML file (default: fashion-mnist-quick)",
    )
    tr.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    tr.add_argument("--model", help="registered model name (default: the recipe's)")
    tr.add_argument("--dataset", choices=("fashion-mnist", "cifar10", "cifar100", "imagefolder"))
    tr.add_argument("--data-dir", help="dataset folder (imagefolder: with train/ and val/)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int, help="global batch size over all processes")
    tr.add_argument("--lr", type=float, help="learning rate (scaled with the batch if the recipe says so)")
    tr.add_argument("--output", help="run directory (default: runs/RECIPE-MODEL)")
    tr.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue from the run directory's checkpoint, or from CHECKPOINT",
    )
    tr.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    tr.add_argument("--num-workers", type=int, help="data-loading processes")
    tr.add_argument("--skip-bad-images", action="store_true", help="skip and count unreadable images")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_set_option(tr, "override any setting, e.g. --set lr=0.05 --set model_args.small_input=true")
    tr.set_defaults(handler=cmd_train)

    ev = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error, per-class accuracy and confusion matrix of trained weights",
        description="Evaluate a training checkpoint (.pt or its run directory) or exported weights "
        "(.safetensors with its .json) on a dataset's val split, single crop (imagefolder: resize 256, "
        "center crop 224). Writes confusion_matrix.png.",
    )
    ev.add_argument(
        "--checkpoint", required=True, help="checkpoint.pt, a run directory, or model.safetensors"
    )
    ev.add_argument(
        "--dataset", required=True, choices=("fashion-mnist", "cifar10", "cifar100", "imagefolder")
    )
    ev.add_argument("--model", help="model name (checked against the checkpoint's)")
    ev.add_argument("--data-dir", help="dataset folder")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--image-size", type=int, help="evaluation crop (default: the dataset's)")
    ev.add_argument("--device", help="cpu, cuda or cuda:N")
    ev.add_argument("--num-workers", type=int, default=0)
    ev.add_argument("--output", help="folder for confusion_matrix.png (default: the checkpoint's)")
    ev.add_argument("--format", choices=("table", "json"), default="table")
    ev.set_defaults(handler=cmd_evaluate)
    return parser


def _add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _recipe_names() -> list[str]:
    from shufflenet.train.config import list_recipes

    return list_recipes()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (CliError, ValueError, FileNotFoundError) as error:
        print(f"shufflenet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
