"""``shufflenet evaluate``: top-1/top-5 error, per-class accuracy and the confusion matrix of weights."""

from __future__ import annotations

import argparse
import json
import sys

from shufflenet._table import markdown_table
from shufflenet.cli._common import CliError, Command, add_output_options, fmt
from shufflenet.data.catalog import DATASETS

HELP = "top-1/top-5 error, per-class accuracy and confusion matrix of trained weights"
DESCRIPTION = (
    "Evaluate a training checkpoint (.pt or its run directory) or exported weights "
    "(.safetensors with its .json) on a dataset's val split, single crop (imagefolder: resize 256, "
    "center crop 224), at the input size and on the dataset the model was trained with. Writes "
    "confusion_matrix.png into the run directory."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint.pt, a run directory, or model.safetensors"
    )
    parser.add_argument(
        "--dataset", choices=tuple(DATASETS), help="default: the one the checkpoint was trained on"
    )
    parser.add_argument("--model", help="model name (checked against the checkpoint's)")
    parser.add_argument("--data-dir", help="dataset folder")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--image-size", type=int, help="evaluation crop (default: the trained size, else the dataset's)"
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--runtime",
        choices=("torch", "engine"),
        default="torch",
        help="run the network in PyTorch (default) or on the C engine (CPU)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8"),
        default="fp32",
        help="engine precision; int8 is calibrated on --calib-samples train images, bf16 needs a CPU with "
        "AVX512_BF16 (default: fp32)",
    )
    parser.add_argument(
        "--calib-samples", type=int, default=256, help="int8 calibration images (default: 256)"
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="imagefolder: skip unreadable images, listing them"
    )
    add_output_options(parser, "folder for confusion_matrix.png (default: the run directory)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    if args.precision != "fp32" and args.runtime != "engine":
        raise CliError(f"--precision {args.precision} runs on the engine: add --runtime engine")
    if args.calib_samples < 1:
        raise CliError("--calib-samples must be at least 1")
    from shufflenet.deploy.errors import RuntimeUnavailable

    try:
        summary = _evaluate(args)
    except RuntimeUnavailable as error:  # the engine refuses the model or cannot run here
        print(f"shufflenet evaluate: error: {error}", file=sys.stderr)
        return 1
    return _report(args, summary)


def _evaluate(args: argparse.Namespace) -> dict:
    from shufflenet.train.evaluate import evaluate_checkpoint

    # Notes go to stderr under --format json, which keeps stdout one JSON document.
    notes = sys.stderr if args.format == "json" else sys.stdout
    return evaluate_checkpoint(
        args.checkpoint,
        args.dataset,
        runtime=args.runtime,
        precision=args.precision,
        calib_samples=args.calib_samples,
        data_dir=args.data_dir,
        model_name=args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        device=args.device,
        num_workers=args.num_workers,
        output=args.output,
        skip_bad_images=args.skip_bad_images,
        progress=not args.no_progress,
        log=lambda line: print(line, file=notes, flush=True),
    )


def _report(args: argparse.Namespace, summary: dict) -> int:
    if args.format == "json":
        print(json.dumps(summary, indent=2))
        return 0
    errors = [
        summary["model"],
        "PyTorch" if summary["runtime"] == "torch" else f"engine {summary['precision']}",
        summary["dataset"],
        summary["samples"],
        fmt(summary["top1_err"], 2),
        fmt(summary["top5_err"], 2),
        fmt(summary["loss"], 4),
    ]
    print(
        markdown_table(
            ["model", "runtime", "dataset", "samples", "top-1 err %", "top-5 err %", "loss"], [errors]
        )
    )
    print()
    per_class = [[name, fmt(100 * acc, 2)] for name, acc in summary["per_class_accuracy"].items()]
    print(markdown_table(["class", "accuracy %"], per_class))
    skipped = summary["skipped_images"]
    if skipped:
        print(f"\nskipped {len(skipped)} unreadable images: {', '.join(skipped)}")
    if "confusion_matrix_png" in summary:
        print(f"\nconfusion matrix: {summary['confusion_matrix_png']}")
    return 0


COMMAND = Command("evaluate", HELP, DESCRIPTION, add_arguments, run)
