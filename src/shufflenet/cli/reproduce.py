"""``shufflenet reproduce``: a paper's table trained cell by cell, beside the paper's column, with a verdict
on each of its claims."""

from __future__ import annotations

import argparse
import fnmatch
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shufflenet.cli._common import CliError, Command, add_set_option, positive_int
from shufflenet.data.catalog import DATASETS
from shufflenet.train.paper_tables import DEFAULT_SEEDS, TABLES

if TYPE_CHECKING:
    from shufflenet.train.config import TrainConfig
    from shufflenet.train.reproduce import PlannedRun, Task

HELP = (
    "train a paper's table (ShuffleNet Tables 2-5 and 7, ShuffleNet V2 Table 8, shift Table 1) and judge its "
    "claims"
)
DESCRIPTION = (
    "Train every cell of a paper's table for several seeds on one dataset (Fashion-MNIST by default; for the "
    "detection table 7, the offline Fashion-MNIST detection set or COCO), in parallel single-threaded "
    "processes on CPU (one after another on a GPU), then write TABLE.md/.json/.png: mean ± std error (or "
    "mAP) per cell beside the paper's figure, a verdict on each of the paper's claims (holds or not at this "
    "scale, by how much, and whether clear of the seed noise), the order of the cells at each level, and a "
    "plot against MFLOPs. Every run is an ordinary training run in its own folder: finished ones are reused, "
    "interrupted ones (Ctrl-C, SIGTERM) resume, and tables that share a cell train it once."
)
EPILOG = """\
examples:
  shufflenet reproduce --list                         the tables, their cells and claims
  shufflenet reproduce shufflenet-t2                  Table 2 on Fashion-MNIST, 3 seeds, 30k images per run
  shufflenet reproduce shufflenet-t4 --only '38m-*'   only the cells at 38 MFLOPs
  shufflenet reproduce shift-t1 --dataset cifar10 --data-dir /data/cifar --epochs 30 --device cuda
  shufflenet reproduce shufflenet-t3 --report-only    the report from the runs finished so far
  shufflenet reproduce shufflenet-t7 --seeds 1        Table 7: Faster R-CNN on the offline detection set
  shufflenet reproduce shufflenet-t7 --dataset coco --data-dir /data/coco --epochs 12 --device cuda
"""


def _budget_images(text: str) -> int:
    """An image count: 30000, 30k or 1.5M."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        value = 0
    if not 1 <= value < 1e12:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of images (e.g. 30000 or 30k), got {text!r}"
        )
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.description = textwrap.fill(DESCRIPTION, width=100)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "table", nargs="?", choices=tuple(TABLES), metavar="TABLE", help=f"one of: {', '.join(TABLES)}"
    )
    parser.add_argument("--list", action="store_true", help="list the tables (or TABLE's cells) and exit")
    parser.add_argument(
        "--dataset",
        metavar="DATASET",
        help=f"dataset to train on: for the classification tables one of {', '.join(DATASETS)} (default: "
        "fashion-mnist); for shufflenet-t7 fashion-detect (the offline set, the default) or coco "
        "(a COCO-format folder in --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        help="dataset folder (cifar10/100: downloaded there if missing; coco: SPLIT/ images and "
        "annotations/instances_SPLIT.json for train and val)",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--budget",
        type=_budget_images,
        metavar="IMAGES",
        help="training images per run, e.g. 30k (default: 30k, a few minutes per run "
        "of the 1x nets on one CPU core; shufflenet-t7: 6 epochs)",
    )
    length.add_argument("--epochs", type=positive_int, help="full epochs per run, instead of --budget")
    parser.add_argument(
        "--seeds", type=positive_int, default=DEFAULT_SEEDS, help=f"seeds per cell (default: {DEFAULT_SEEDS})"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="PATTERN",
        help="train only the cells whose key matches one of these shell patterns",
    )
    parser.add_argument(
        "--jobs", type=positive_int, help="runs at a time (default: one per CPU core; 1 on a GPU)"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="threads per run (default: 1)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--output",
        default="runs/reproduce",
        help="folder for the runs and the reports (default: runs/reproduce)",
    )
    parser.add_argument(
        "--report-dir",
        help="folder for TABLE.md/.json/.png (default: the runs' folder, OUTPUT/DATASET-BUDGET)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="retrain runs whose folder holds a run of other settings"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report from the runs finished so far",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_option(parser, "override a training setting for every run, e.g. --set lr=0.1")


def _list(table_name: str | None) -> int:
    from shufflenet._table import markdown_table

    if table_name is None:
        rows = [[t.name, t.source, str(len(t.cells)), str(len(t.claims)), t.title] for t in TABLES.values()]
        print(markdown_table(["table", "source", "cells", "claims", "what"], rows))
        print(
            "\nshufflenet reproduce TABLE --list: its cells; shufflenet reproduce TABLE: train and judge it"
        )
        return 0
    table = TABLES[table_name]
    rows = [
        [
            c.key,
            c.label,
            c.model + "".join(f" {k}={v}" for k, v in {**c.model_args, **c.settings}.items()),
            c.level,
            f"{c.paper:.1f}",
        ]
        for c in table.cells
    ]
    print(f"{table.source}: {table.title}\n")
    print(markdown_table(["key", "cell", "model", "level", f"paper {table.metric.name} %"], rows))
    print("\nclaims:\n" + "\n".join(f"  {n}. {c.text}" for n, c in enumerate(table.claims, start=1)))
    return 0


def run(args: argparse.Namespace) -> int:
    from shufflenet._system import usable_cores
    from shufflenet.bench.report import environment, environment_markdown
    from shufflenet.train import reproduce
    from shufflenet.train.config import parse_overrides

    if args.list:
        return _list(args.table)
    if args.table is None:
        raise CliError("name a table (e.g. shufflenet reproduce shufflenet-t2), or --list them")
    table = TABLES[args.table]
    task = _task(table.task)
    dataset = args.dataset or task.dataset
    if dataset not in task.datasets:
        raise CliError(f"{table.name} trains on --dataset {' or '.join(task.datasets)}, not {dataset!r}")
    if dataset == "coco" and not args.data_dir:
        raise CliError(
            "--dataset coco needs --data-dir DIR (SPLIT/ images, annotations/instances_SPLIT.json)"
        )
    if args.only:
        keys = [cell.key for cell in table.cells]
        unmatched = [p for p in args.only if not fnmatch.filter(keys, p)]
        if unmatched:
            raise CliError(
                f"--only {' '.join(unmatched)} matches no cell of {table.name}; cells: {', '.join(keys)}"
            )
    if args.epochs:
        budget = reproduce.Budget(images=None, epochs=args.epochs)
    else:
        budget = reproduce.Budget(images=args.budget) if args.budget else task.budget
    overrides = parse_overrides(args.set)
    folder, runs = reproduce.plan(
        table,
        task=task,
        dataset=dataset,
        data_dir=args.data_dir,
        budget=budget,
        seeds=args.seeds,
        output=Path(args.output),
        overrides=overrides,
        only=(lambda cell: any(fnmatch.fnmatchcase(cell.key, p) for p in args.only)) if args.only else None,
        device=args.device,
    )
    on_gpu = (args.device or "").startswith("cuda") or (args.device is None and _cuda_available())
    jobs = args.jobs or (1 if on_gpu else max(1, usable_cores() // args.threads))
    cells = len({run.cell for run in runs})
    how = "the report from the runs finished so far" if args.report_only else f"{jobs} at a time"
    print(
        f"{table.name}: {cells} cells x {args.seeds} seeds = {len(runs)} runs, "
        f"{budget.describe(runs[0].config.batch_size)}, {how}; runs and report in {folder}"
    )
    outcomes: dict = {}
    if args.report_only:
        # Only runs of today's networks with these settings: the same test that reuses them.
        states = {id(run_): reproduce.run_state(run_.config) for run_ in runs}
        outcomes = reproduce.finished_outcomes(runs, states)
    else:
        try:
            outcomes = reproduce.execute(
                runs,
                jobs=jobs,
                threads=args.threads,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                task=task,
                metric=table.metric,
            )
        except reproduce.Interrupted as stop:
            print(f"shufflenet reproduce: {stop}", file=sys.stderr)
            return 128 + stop.signum  # as a shell reports a process killed by that signal: 130, 143
    results = reproduce.collect(table, runs, outcomes)
    verdicts = reproduce.judge(table, results)
    env = environment(args.command_line)
    config = runs[0].config
    setting = (
        f"Every cell trained alike: recipe `{config.recipe}` ({config.optimizer}, lr {config.lr} for batch "
        f"{config.lr_base_batch or config.batch_size}, {config.schedule} schedule, weight decay "
        f"{config.weight_decay}, {_task_setting(config, runs)}), "
        f"{budget.describe(config.batch_size)}, batch {config.batch_size}, "
        + (f"{args.seeds} seeds (0-{args.seeds - 1}) per cell" if args.seeds > 1 else "1 seed (0) per cell")
        + f", on {dataset}"
        + (" with the small-input stem (28-32 px images)" if config.model_args.get("small_input") else "")
        + (f"; settings changed: {overrides}" if overrides else "")
        + "."
    )
    report_dir = Path(args.report_dir) if args.report_dir else folder
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_path = reproduce.plot(table, results, report_dir / f"{table.name}.png", dataset=dataset)
    text = reproduce.markdown_report(
        table,
        results,
        verdicts,
        setting=setting,
        environment_text=environment_markdown(env),
        plot_name=plot_path.name,
    )
    reproduce.write_report(
        report_dir,
        table,
        text,
        results,
        verdicts,
        {**env, "setting": setting, "budget": budget.tag, "seeds": args.seeds},
    )
    for number, verdict in enumerate(verdicts, start=1):
        print(f"{number}. {verdict.sentence()}")
    print(f"\nreport: {report_dir / (table.name + '.md')} (and .json, .png)")
    failed = sum(len(result.failures) for result in results)
    if failed:
        print(f"shufflenet reproduce: {failed} runs failed; see the report's last section", file=sys.stderr)
        return 1
    return 0


def _task(name: str) -> Task:
    """The runs' kind for a table's ``task``: classification, or detection (imported only when asked)."""
    from shufflenet.train.reproduce import CLASSIFICATION

    if name == "detect":
        from shufflenet.detect.reproduce import DETECTION

        return DETECTION
    return CLASSIFICATION


def _task_setting(config: TrainConfig, runs: Sequence[PlannedRun]) -> str:
    """The settings particular to the runs' kind, for the report's first paragraph."""
    if not hasattr(config, "detector"):
        return f"label smoothing {config.label_smoothing}, augmentation {config.augment}"
    sizes = sorted({(run.config.min_size, run.config.max_size) for run in runs})
    head = f", box head {config.box_head}, {config.proposals} proposals, {config.rois_per_image} regions"
    return (
        f"{config.detector}{head if config.detector == 'fasterrcnn' else ''}, FPN {config.fpn_channels}, "
        f"frozen maps {config.frozen_maps}, from "
        + (config.backbone_weights or "scratch")
        + ", flip "
        + ("on" if config.flip else "off")
        + ", shorter/longer sides "
        + " and ".join(f"{low}/{high}" for low, high in sizes)
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


COMMAND = Command("reproduce", HELP, DESCRIPTION, add_arguments, run)
