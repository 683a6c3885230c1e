"""``shufflenet bench``: actual speed (FLOPs are not speed: Ma et al. 2018, section 2) across runtimes, the
ShuffleNet V2 guideline experiments, and training throughput."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from shufflenet.bench.latency import DEFAULT_LATENCY_MODELS
from shufflenet.cli._common import CliError, Command, add_output_options
from shufflenet.deploy.runtimes import RUNTIMES

LATENCY_DESCRIPTION = (
    "Median and p90 latency of each model at each input size and thread count on each runtime: eager, "
    "eager channels_last, eager_deploy (our deploy graph in eager, channels_last), torch.compile, ONNX "
    "Runtime, OpenVINO, engine (our C engine: ShuffleNet, MobileNet, FE-Net, ShiftResNet) and ours (the "
    "fastest of the engine and the deploy graph on OpenVINO, ONNX Runtime or PyTorch). Each cell runs in "
    "a fresh subprocess after warm-up. Prints a Markdown table with the papers' ARM figures beside and the "
    "headline comparisons (ours against the other runtimes, the shuffle's cost, the speedup over "
    "AlexNet); --output also writes latency.md/.csv/.json and latency.png (latency vs MFLOPs)."
)
GUIDELINES_DESCRIPTION = (
    "The four guideline experiments of Ma et al. 2018, section 2 (56x56 input, 10 stacked blocks, the "
    "paper's channel and group settings) on CPU (batch 1) and on CUDA when present (batch 8), printed beside "
    "the paper's figures with a verdict on whether each ordering holds here. The settings compared in a "
    "table are timed interleaved."
)
TRAIN_DESCRIPTION = (
    "Images/s and peak memory of SGD training steps on random data, eager vs torch.compile; bf16 autocast "
    "and channels_last apply on CUDA."
)
REPEATS_HELP = (
    "timed runs per cell; the settings of one table row group run in turn, in shuffled passes, so drift in "
    "the machine's speed cannot decide an ordering (default: 30)"
)
ROUNDS_HELP = (
    "measure every cell this many times, in a new order each round, and report the median (evens out load "
    "drift on shared machines; default: 1)"
)


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    models_help = "model specs: NAME, NAME[key=value,...] or torchvision:NAME (default: the headline set)"
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_LATENCY_MODELS), metavar="MODEL",
                        help=models_help)  # fmt: skip
    sizes_help = "input sizes (Zhang et al. 2018, Table 8 uses 224x224 480x640 720x1280; default: 224x224)"
    parser.add_argument("--sizes", nargs="+", default=["224x224"], metavar="HxW", help=sizes_help)
    threads_help = "thread counts; 'all' = every core"
    parser.add_argument("--threads", nargs="+", default=["1"], metavar="N", help=threads_help)
    runtimes_help = "subset of: " + ", ".join(RUNTIMES)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), metavar="NAME", help=runtimes_help)
    parser.add_argument("--batch", type=int, default=1)
    repeats_help = "timed runs per cell after warm-up (default: 50)"
    parser.add_argument("--repeats", type=int, default=50, help=repeats_help)
    parser.add_argument("--rounds", type=int, default=1, help=ROUNDS_HELP)
    add_output_options(parser, "folder for latency.md/.csv/.json/.png")


def add_guidelines_arguments(parser: argparse.ArgumentParser) -> None:
    experiments = ["G1", "G2", "G3", "G4"]
    parser.add_argument("--experiments", nargs="+", default=experiments, choices=experiments)
    parser.add_argument("--multipliers", nargs="+", type=int, default=[1, 2, 4], help="channel multipliers")
    threads_help = "CPU threads (default: 1, like the paper's ARM)"
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    parser.add_argument("--repeats", type=int, default=30, help=REPEATS_HELP)
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    add_output_options(parser, "folder for guidelines.md/.csv/.json")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    models = ["shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0"]
    parser.add_argument("--models", nargs="+", default=models, metavar="MODEL")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed steps after warm-up (default: 10)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--output", help="folder for train_throughput.md/.csv/.json")


def run_latency(args: argparse.Namespace) -> int:
    from shufflenet.bench.latency import (
        headline_ratios,
        latency_benchmark,
        latency_plot,
        latency_table,
        speed_claims,
    )
    from shufflenet.bench.report import format_ratio
    from shufflenet.deploy.runtimes import default_threads

    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
    if any(len(size) != 2 for size in sizes):
        raise CliError(f"--sizes takes HxW values like 224x224, got {args.sizes}")
    threads = sorted({default_threads() if t == "all" else int(t) for t in args.threads})
    cells = latency_benchmark(
        args.models,
        sizes=sizes,
        threads=threads,
        runtimes=args.runtimes,
        batch=args.batch,
        repeats=args.repeats,
        rounds=args.rounds,
        progress=not args.no_progress,
    )
    table = latency_table(cells)
    ratios = headline_ratios(cells) + speed_claims(cells)
    print(table)
    print("\nmedian ms (p90 ms) per cell, batch", args.batch)
    for ratio in ratios:
        print(format_ratio(*ratio))
    for cell in cells:
        if cell.error:
            print(
                f"- error: {cell.model} {cell.height}x{cell.width} t{cell.threads} {cell.runtime}: "
                f"{cell.error}"
            )
    if args.output:
        from shufflenet.bench.report import write_latency_results

        written = write_latency_results(cells, table, ratios, Path(args.output), command=args.command_line)
        for key in ("md", "csv", "json"):
            print(f"wrote {written[key]}")
        png = latency_plot(cells, Path(args.output) / "latency.png", size=sizes[0], threads=threads[0])
        print(f"wrote {png}")
    return 0


def run_guideline_experiments(args: argparse.Namespace) -> int:
    import torch

    from shufflenet.bench.guidelines import guidelines_report, run_guidelines

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    results, reports = [], []
    for device in devices:
        rows = run_guidelines(
            device=device,
            threads=args.threads,
            repeats=args.repeats,
            multipliers=tuple(args.multipliers),
            experiments=tuple(args.experiments),
            progress=not args.no_progress,
        )
        results += rows
        reports.append(f"## {device.upper()}\n\n{guidelines_report(rows)}")
    body = "\n\n".join(reports)
    print(body)
    title = "ShuffleNet V2 guideline experiments (Ma et al. 2018, Tables 1-4)"
    _write_record(args, "guidelines", title, body, results)
    return 0


def run_train_throughput(args: argparse.Namespace) -> int:
    from shufflenet.bench.train_throughput import train_throughput, train_throughput_report

    rows = train_throughput(
        args.models,
        batch_size=args.batch_size,
        image_size=args.image_size,
        steps=args.steps,
        device=args.device,
        modes=tuple(args.modes),
        amp=args.amp,
        channels_last=args.channels_last,
        threads=args.threads,
    )
    body = train_throughput_report(rows)
    print(body)
    _write_record(args, "train_throughput", "Training throughput on synthetic batches", body, rows)
    return 0


def _write_record(args: argparse.Namespace, stem: str, title: str, body: str, rows: Sequence[Any]) -> None:
    if not args.output:
        return
    from shufflenet.bench.report import environment, write_record

    plain = [asdict(row) if is_dataclass(row) else row for row in rows]
    written = write_record(Path(args.output), stem, title, body, plain, environment(args.command_line))
    print(f"\nwrote {written['md']}, {written['csv'].name}, {written['json'].name}")


COMMAND = Command(
    "bench",
    "speed benchmarks: latency across runtimes, V2 guidelines, training throughput",
    "Measure actual speed (FLOPs are not speed: Ma et al. 2018, section 2).",
    subcommands=(
        Command("latency", "models x input sizes x threads x runtimes, each cell in its own process",
                LATENCY_DESCRIPTION, add_latency_arguments, run_latency),
        Command("guidelines", "ShuffleNet V2 guideline experiments G1-G4 (Ma et al. 2018, Tables 1-4)",
                GUIDELINES_DESCRIPTION, add_guidelines_arguments, run_guideline_experiments),
        Command("train", "training throughput (images/s, peak memory) on synthetic batches",
                TRAIN_DESCRIPTION, add_train_arguments, run_train_throughput),
    ),
)  # fmt: skip
