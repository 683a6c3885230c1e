"""The headline latency comparisons, measured paired: every runtime of every model built in this one
process, then called in turn, one batch each, in a freshly shuffled order per pass, so that the machine's
drift (10-15% between minutes on the shared 2-core development machine) lands on every cell alike. The
per-cell benchmark (`shufflenet bench latency`) isolates each cell in its own process instead, which keeps
runtimes from touching each other but lets two cells of one ratio run minutes apart. Each timed call
follows one untimed call of the same cell (``--rewarm 1``), so every cell is timed in steady state as in
the per-cell benchmark; ``--rewarm 0`` times each call right after another cell's, with whatever that
left in cache (AlexNet's 240 MB of weights leave none).

    python benchmarks/paired_latency.py [--passes 300] [--rewarm 1] \
        [--output benchmarks/results/latency-paired]

Same models, runtimes and ratios as `shufflenet bench latency` with the headline set; one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shufflenet.bench.latency import (
    HEADLINE_LATENCY_MODELS,
    LatencyCell,
    build_benchmark_model,
    headline_ratios,
    latency_table,
    skip_reason,
)
from shufflenet.bench.report import format_ratio, write_latency_results
from shufflenet.deploy.runtimes import build_runner, interleaved_seconds
from shufflenet.profile import profile

RUNTIMES = ("eager", "eager_cl", "eager_deploy", "ort", "openvino", "engine", "ours")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passes", type=int, default=300, help="calls per cell (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="calls per cell before timing (default 10)")
    parser.add_argument(
        "--rewarm",
        type=int,
        default=1,
        help="untimed calls of the same cell right before each timed one (default 1: steady state, weights "
        "in cache as in back-to-back inference and in `shufflenet bench latency`; 0: each call starts with "
        "the caches the previous cell left, i.e. cold for small models after AlexNet)",
    )
    parser.add_argument("--output", type=Path, help="write latency.md/.csv/.json into this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runners, cells = [], []
    with tempfile.TemporaryDirectory() as folder:
        for spec in tqdm(HEADLINE_LATENCY_MODELS, desc="building", unit="model"):
            mflops = profile(build_benchmark_model(spec), input_size=(224, 224)).mflops
            for runtime in RUNTIMES:
                if skip_reason(spec, runtime) is not None:
                    continue
                # A fresh copy per runtime (same seed, same weights): eager_cl converts its model to
                # channels_last in place, which must not reach the eager cell.
                torch.manual_seed(0)
                model = build_benchmark_model(spec)
                example = torch.randn(1, 3, 224, 224)
                workdir = Path(folder) / f"{len(cells)}"
                workdir.mkdir()
                run = build_runner(runtime, model, example, threads=1, workdir=workdir)
                torch.set_num_threads(1)  # build_runner sets it; kept explicit for the eager cells
                cell = LatencyCell(spec, 224, 224, 1, runtime, warmup=args.warmup, repeats=args.passes)
                cell.mflops = mflops
                if hasattr(run, "backend"):
                    cell.extra["backend"] = run.backend
                runners.append((run, example.numpy()))
                cells.append(cell)
        calls = [lambda run=run, batch=batch: run(batch) for run, batch in runners]
        times = interleaved_seconds(
            calls, passes=args.passes, warmup=args.warmup, rewarm=args.rewarm, progress=True
        )
    for cell, samples in zip(cells, times, strict=True):
        cell.median_ms = 1000 * float(np.median(samples))
        cell.p90_ms = 1000 * float(np.percentile(samples, 90))
    table = latency_table(cells)
    ratios = headline_ratios(cells)
    print(table)
    for ratio in ratios:
        print(format_ratio(*ratio))
    if args.output:
        command = [Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]
        for path in write_latency_results(cells, table, ratios, args.output, command=command).values():
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
