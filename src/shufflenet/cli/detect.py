"""``shufflenet detect``: detectors on the library's backbones (ShuffleNet, Zhang et al. 2018, section 4.4):
the offline data set, training, COCO evaluation and predictions drawn on images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shufflenet.cli._common import CliError, Command, add_set_option, given_settings
from shufflenet.cli.train import run_training
from shufflenet.train.config import list_recipes, load_config, parse_overrides

DEFAULT_RECIPE = "detect-fashion-quick"
SETTING_OPTIONS = ("model", "detector", "data_dir", "epochs", "batch_size", "lr", "output", "device")

TRAIN_DESCRIPTION = (
    "Train a detector (Faster R-CNN or RetinaNet, torchvision's) on a registered backbone's stage maps, on "
    "COCO-format data: DATA_DIR/SPLIT/ images annotated by DATA_DIR/annotations/instances_SPLIT.json. "
    "Without --data-dir the quick recipe trains on the offline Fashion-MNIST set (made on first use). The "
    "training engine is the classifiers': checkpoints (Ctrl-C or SIGTERM saves one; --resume continues), "
    "metrics.csv/json, progress, torchrun; COCO AP on the val split after each epoch; summary.json."
)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="folder to write (train/, val/, annotations/)")
    parser.add_argument("--data-dir", help="Fashion-MNIST's folder (default: where the library finds it)")
    parser.add_argument("--train-images", type=int, default=800, help="training canvases (default: 800)")
    parser.add_argument("--val-images", type=int, default=200, help="validation canvases (default: 200)")
    parser.add_argument("--canvas", type=int, default=128, help="canvas side in pixels (default: 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing set in OUTPUT")


def run_data(args: argparse.Namespace) -> int:
    from shufflenet.detect.synthetic import CanvasSpec, make_fashion_detection

    if min(args.train_images, args.val_images) < 1 or args.canvas < 32:
        raise CliError("--train-images and --val-images must be at least 1 and --canvas at least 32")
    spec = CanvasSpec(size=args.canvas, scale=(max(12, args.canvas // 6), max(16, args.canvas // 2)))
    try:
        root = make_fashion_detection(
            args.output,
            data_dir=args.data_dir,
            train_images=args.train_images,
            val_images=args.val_images,
            spec=spec,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except FileExistsError as error:
        raise CliError(f"{error} (--overwrite replaces it)") from error
    print(f"wrote {root}: train/ ({args.train_images} images), val/ ({args.val_images}), annotations/")
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "recipes: " + ", ".join(list_recipes(detection=True)) + ". Any setting: --set KEY=VALUE."
    parser.add_argument("--recipe", help=f"recipe name or YAML file (default: {DEFAULT_RECIPE})")
    parser.add_argument("--model", help="backbone: a registered model name (default: the recipe's)")
    parser.add_argument(
        "--detector",
        choices=("fasterrcnn", "retinanet", "ssdlite"),
        help="fasterrcnn (ShuffleNet's Table 7), retinanet, or ssdlite (MobileNetV2's section 6.2; square "
        "min_size input) (default: the recipe's)",
    )
    parser.add_argument("--data-dir", help="COCO-format folder (default: the offline Fashion-MNIST set)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size over all processes")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--output", help="run directory (default: runs/RECIPE-MODEL)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="continue from the run directory's checkpoint, or from CHECKPOINT")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace the run in the output directory")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_set_option(parser, "override any setting, e.g. --set min_size=300 --set fpn_channels=null")


def run_train(args: argparse.Namespace) -> int:
    from shufflenet.detect.train import DetectConfig, train_detector

    overrides = {**parse_overrides(args.set), **given_settings(args, SETTING_OPTIONS)}
    config = load_config(args.recipe or DEFAULT_RECIPE, overrides, DetectConfig)
    return run_training(train_detector, config, args, "shufflenet detect train")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a detection run's directory or checkpoint.pt")
    parser.add_argument("--data-dir", help="COCO-format folder (default: the run's)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the run's val split)")
    parser.add_argument("--limit", type=int, help="the first N images only")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run_evaluate(args: argparse.Namespace) -> int:
    from shufflenet.detect.coco import CocoDetectionSet
    from shufflenet.detect.evaluate import evaluate_detector, load_detector
    from shufflenet.detect.metrics import AP_NAMES

    model, config, _ = load_detector(args.checkpoint)
    if args.data_dir:
        config.data_dir = args.data_dir
    split = args.split or config.val_split
    dataset = CocoDetectionSet(*config.split_paths(split))
    result = evaluate_detector(model, dataset, batch_size=config.eval_batch_size or config.batch_size,
                               limit=args.limit)  # fmt: skip
    summary = {"model": config.model, "detector": config.detector, "split": split,
               "images": min(args.limit or len(dataset), len(dataset)), **result}  # fmt: skip
    if args.format == "json":
        print(json.dumps(summary, indent=2))
        return 0
    print("| backbone | detector | split | images | " + " | ".join(AP_NAMES) + " |")
    print("|---|---|---|---:|" + "---:|" * len(AP_NAMES))
    cells = " | ".join(f"{result[name]:.1f}" for name in AP_NAMES)
    print(f"| {config.model} | {config.detector} | {split} | {summary['images']} | {cells} |")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--checkpoint", required=True, help="a detection run's directory or checkpoint.pt")
    parser.add_argument("--threshold", type=float, default=0.5, help="least score shown (default: 0.5)")
    parser.add_argument("--output", default="predictions.png", help="PNG to write (default: predictions.png)")


def run_predict(args: argparse.Namespace) -> int:
    from shufflenet.detect.evaluate import draw_predictions, load_detector, predict

    missing = [image for image in args.images if not Path(image).is_file()]
    if missing:
        raise CliError(f"no such image: {missing[0]}")
    model, _, classes = load_detector(args.checkpoint)
    found = predict(model, args.images, threshold=args.threshold)
    for image, result in zip(args.images, found, strict=True):
        names = [classes[label - 1] for label in result["labels"].tolist()]
        print(f"{image}: {len(names)} found" + (": " + ", ".join(names) if names else ""))
    print(f"wrote {draw_predictions(args.images, found, classes, args.output)}")
    return 0


COMMAND = Command(
    "detect",
    "object detection on the backbones: offline data, training, COCO mAP, predictions",
    "ShuffleNet's detection transfer (Zhang et al. 2018, section 4.4, Table 7): torchvision's detectors on "
    "the library's backbones, COCO-format data and the COCO protocol's AP.",
    subcommands=(
        Command("make-data", "write the offline detection set: Fashion-MNIST items on canvases, COCO format",
                "Fashion-MNIST items at random scales and positions on larger canvases, several per canvas, "
                "their boxes from the placement, as COCO-format files (train/, val/, annotations/).",
                add_data_arguments, run_data),
        Command("train", "train a detector on a backbone (default: the offline set, quick)",
                TRAIN_DESCRIPTION, add_train_arguments, run_train),
        Command("evaluate", "COCO AP of a trained detector on a split",
                "AP (IoU 0.50:0.95), AP50, AP75 and AP by object size, pycocotools' COCO protocol.",
                add_evaluate_arguments, run_evaluate),
        Command("predict", "draw a trained detector's boxes on images",
                "Detections above --threshold, listed and drawn on the images in one PNG.",
                add_predict_arguments, run_predict),
    ),
)  # fmt: skip
