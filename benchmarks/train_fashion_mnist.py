"""Train a recipe on Fashion-MNIST and record the result with the command, date, hardware and versions.

    python benchmarks/train_fashion_mnist.py --recipe fashion-mnist-quick
    python benchmarks/train_fashion_mnist.py --recipe fashion-mnist-full --set device=cuda --set amp=bf16
    python benchmarks/train_fashion_mnist.py --recipe fashion-mnist-full --name NAME --resume  # continue

Writes benchmarks/results/<name>.md and .json (name defaults to the recipe; the run itself goes to
runs/bench-<name>, so an interrupted run continues with --resume).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch
import torchvision

from shufflenet._table import markdown_table
from shufflenet.bench.report import cpu_model
from shufflenet.train.config import load_config, parse_overrides
from shufflenet.train.engine import train
from shufflenet.train.metrics import format_duration

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="fashion-mnist-quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", help="results and run name (default: the recipe's)")
    parser.add_argument("--resume", action="store_true", help="continue the run in runs/bench-<name>")
    args = parser.parse_args()
    name = args.name or args.recipe
    overrides = {"output": f"runs/bench-{name}", "progress": False, **parse_overrides(args.set)}
    config = load_config(args.recipe, overrides)
    started = datetime.datetime.now(datetime.timezone.utc)
    summary = train(config, resume=args.resume)
    device = summary["device"]
    hardware = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_model()
    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": started.isoformat(timespec="seconds"),
        "hardware": (
            f"{hardware}; {os.cpu_count()} CPU cores; {summary['world_size']} process(es) x "
            f"{summary['threads_per_process']} torch thread(s)"
        ),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "config": config.to_dict(),
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = json.loads((config.run_dir() / "metrics.json").read_text())
    curve = markdown_table(
        ["epoch", "train loss", "train top-1 err %", "val top-1 err %", "images/s", "elapsed"],
        [
            [
                r["epoch"],
                f"{r['train_loss']:.4f}",
                f"{r['train_top1_err']:.2f}",
                f"{r.get('val_top1_err', float('nan')):.2f}",
                f"{r['images_per_s']:.0f}",
                format_duration(r["elapsed_s"]),
            ]
            for r in rows
        ],
    )
    accuracy = 100 - summary["top1_err"]
    text = f"""# {name}: {summary["model"]} on Fashion-MNIST

- command: `{record["command"]}`
- date: {record["date"]}
- hardware: {record["hardware"]}
- versions: Python {record["versions"]["python"]}, torch {record["versions"]["torch"]}, torchvision {
        record["versions"]["torchvision"]
    }
- result: **{accuracy:.2f}% test accuracy** (top-1 error {summary["top1_err"]:.2f}%), {
        summary["params"]:,} params,
  {summary["mflops"]:.1f} MFLOPs at 28x28, {format_duration(summary["time_s"])} of training and evaluation

{
        markdown_table(
            ["model", "params", "MFLOPs", "top-1 err %", "top-5 err %", "time", "images/s"],
            [
                [
                    summary["model"],
                    f"{summary['params']:,}",
                    f"{summary['mflops']:.1f}",
                    f"{summary['top1_err']:.2f}",
                    f"{summary['top5_err']:.2f}",
                    format_duration(summary["time_s"]),
                    f"{summary['images_per_s']:.0f}",
                ]
            ],
        )
    }

Per epoch:

{curve}
"""
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
