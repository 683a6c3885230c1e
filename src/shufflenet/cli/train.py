"""``shufflenet train``: a recipe (the papers' settings as YAML) trained, evaluated and summarized."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from shufflenet.cli._common import Command, add_set_option, given_settings
from shufflenet.data.catalog import DATASETS
from shufflenet.train.config import list_recipes, load_config, parse_overrides

HELP = "train a model with a paper's recipe (default: Fashion-MNIST, quick)"
DESCRIPTION = (
    "Train with a recipe (the papers' settings, shipped as YAML), evaluate, and print a "
    "summary. Writes a checkpoint (full state, atomically), metrics.csv/json, TensorBoard logs, "
    "learning curves and a confusion matrix (PNG), and model.safetensors + model.json to the run "
    "directory. Under torchrun it trains data-parallel (gloo on CPU, NCCL on GPU). Ctrl-C or SIGTERM saves "
    "a checkpoint first; --resume continues exactly where it stopped. An earlier run in the directory is "
    "never replaced without --overwrite, and one run at a time holds a directory."
)

# Options that set the training setting of the same name.
SETTING_OPTIONS = ("model", "dataset", "data_dir", "epochs", "batch_size", "lr", "output", "device")
SETTING_OPTIONS += ("num_workers",)
DEFAULT_RECIPE = "fashion-mnist-quick"
# Your own images (--dataset imagefolder) are most often a small set: the ImageNet recipes' 300k steps at
# lr 0.5, or the quick recipe's lr 0.2 after a few steps of warm-up, would waste or wreck it.
IMAGEFOLDER_RECIPE = "own-small-images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "recipes: " + ", ".join(list_recipes()) + ". Any setting: --set KEY=VALUE, e.g. "
        "--set label_smoothing=0.1 --set model_args.small_input=true --set ema_decay=0.999."
    )
    parser.add_argument(
        "--recipe",
        help=f"recipe name or YAML file (default: {DEFAULT_RECIPE}; with --dataset imagefolder, "
        f"{IMAGEFOLDER_RECIPE}; ImageNet: --recipe imagenet-shufflenet-v2)",
    )
    parser.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    parser.add_argument("--model", help="registered model name (default: the recipe's)")
    parser.add_argument("--dataset", choices=tuple(DATASETS))
    parser.add_argument("--data-dir", help="dataset folder (imagefolder: with train/ and val/)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size over all processes")
    parser.add_argument(
        "--lr", type=float, help="learning rate (scaled with the batch if the recipe says so)"
    )
    parser.add_argument("--output", help="run directory (default: runs/RECIPE-MODEL)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue from the run directory's checkpoint, or from CHECKPOINT",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the output directory (its checkpoint, metrics and weights)",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--num-workers", type=int, help="data-loading processes")
    parser.add_argument("--skip-bad-images", action="store_true", help="skip and count unreadable images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_set_option(parser, "override any setting, e.g. --set lr=0.05 --set model_args.small_input=true")


def run(args: argparse.Namespace) -> int:
    from shufflenet.train.engine import train

    if args.list_recipes:
        for name in list_recipes():
            print(name)
        return 0
    overrides = {**parse_overrides(args.set), **given_settings(args, SETTING_OPTIONS)}
    if args.skip_bad_images:
        overrides["skip_bad_images"] = True
    recipe = args.recipe or DEFAULT_RECIPE
    if args.recipe is None and args.dataset == "imagefolder":
        recipe = IMAGEFOLDER_RECIPE
        print(f"recipe: {recipe}, for a small set of your own images (ImageNet: --recipe imagenet-*)")
    config = load_config(recipe, overrides)
    return run_training(train, config, args, "shufflenet train")


def run_training(train: Callable[..., Any], config: Any, args: argparse.Namespace, command: str) -> int:
    """``train(config, resume=..., overwrite=...)`` as a command: the exit status, and one line for a run
    stopped by a signal (130, 143: a checkpoint saved) or diverged (1)."""
    from shufflenet.train.distributed import StoppedBySignal
    from shufflenet.train.engine import TrainingDiverged

    try:
        train(config, resume=args.resume if args.resume != "" else True, overwrite=args.overwrite)
    except StoppedBySignal as stop:  # Ctrl-C or SIGTERM; the trainer's own says where it saved a checkpoint
        print(f"{command}: {stop}", file=sys.stderr)
        return 128 + stop.signum  # as a shell reports a process killed by that signal: 130, 143
    except KeyboardInterrupt:  # Ctrl-C while data and model are built, or a second one
        print(f"{command}: interrupted before it could save a checkpoint", file=sys.stderr)
        return 130
    except TrainingDiverged as failure:
        print(f"{command}: error: {failure}", file=sys.stderr)
        return 1
    return 0


COMMAND = Command("train", HELP, DESCRIPTION, add_arguments, run)
