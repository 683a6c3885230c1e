"""Latency measured paired: every runtime of every model built in this one process, then called in turn,
one batch each, in a freshly shuffled order per pass, so that the machine's drift (10-15% between minutes
on the shared 2-core development machine) lands on every cell alike. The per-cell benchmark
(`shufflenet bench latency`) isolates each cell in its own process instead, which keeps runtimes from
touching each other but lets two cells of one ratio run minutes apart. Each timed call follows one
untimed call of the same cell (``--rewarm 1``), so every cell is timed in steady state as in the
per-cell benchmark; ``--rewarm 0`` times each call right after another cell's, with whatever that left
in cache (AlexNet's 240 MB of weights leave none). Each input size is one interleaved run.

    python benchmarks/paired_latency.py [--passes 300] [--rewarm 1] \\
        [--output benchmarks/results/latency-paired]
    python benchmarks/paired_latency.py --table8 --passes 40 --output runs/table8   # Zhang et al. 2018

The default set is the headline one of `shufflenet bench latency`; ``--table8`` times the models of Zhang
et al. 2018's speed claims (Table 8's five nets at its three input sizes, with SE and g = 4/8 beside g = 3)
and prints those claims as ratios. One thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shufflenet.bench.latency import (
    HEADLINE_LATENCY_MODELS,
    SIZES,
    headline_ratios,
    latency_table,
    measure_paired,
    speed_claims,
)
from shufflenet.bench.report import report_latency

RUNTIMES = ("eager", "eager_cl", "eager_deploy", "ort", "openvino", "engine", "ours")
# Zhang et al. 2018: Table 8's nets, and the variants of sections 4.3 (SE) and 4.5 (g = 4, 8).
TABLE8_MODELS = (
    "shufflenet_v1_g3_x0_5",
    "shufflenet_v1_g3_x1_0",
    "shufflenet_v1_g3_x2_0",
    "mobilenet_v1_x1_0",
    "torchvision:alexnet",
    "shufflenet_v1_g3_x1_0[se=true]",
    "shufflenet_v1_g4_x1_0",
    "shufflenet_v1_g8_x1_0",
)
TABLE8_RUNTIMES = ("ort", "openvino", "engine")


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HxW like 224x224, got {text!r}")
    return int(height), int(width)


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
    parser.add_argument(
        "--steady-ms",
        type=float,
        default=50.0,
        help="with --rewarm, keep calling the cell untimed for at least this long before each timed call "
        "(default 50: another runtime's spinning threads give up first)",
    )
    parser.add_argument(
        "--table8",
        action="store_true",
        help="Zhang et al. 2018's speed claims: Table 8's nets at its three sizes on "
        f"{', '.join(TABLE8_RUNTIMES)} (override with --models/--sizes/--runtimes)",
    )
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="model specs, as `bench latency`'s")
    parser.add_argument("--sizes", nargs="+", type=parse_size, metavar="HxW", help="default 224x224")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, metavar="NAME", help=", ".join(RUNTIMES))
    parser.add_argument("--output", type=Path, help="write latency.md/.csv/.json into this folder")
    args = parser.parse_args(argv)
    models = args.models or (TABLE8_MODELS if args.table8 else HEADLINE_LATENCY_MODELS)
    sizes = args.sizes or (SIZES if args.table8 else ((224, 224),))
    runtimes = args.runtimes or (TABLE8_RUNTIMES if args.table8 else RUNTIMES)
    cells = []
    for size in sizes:
        cells += measure_paired(
            models,
            size=size,
            runtimes=runtimes,
            passes=args.passes,
            warmup=args.warmup,
            rewarm=args.rewarm,
            rewarm_seconds=args.steady_ms / 1000 if args.rewarm else 0.0,
        )
    table = latency_table(cells)
    ratios = headline_ratios(cells) + speed_claims(cells)
    command = [Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]
    report_latency(cells, table, ratios, args.output, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
