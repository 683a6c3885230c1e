"""The engine beside the inference frameworks users pick for these nets: ONNX Runtime, OpenVINO (fp32, and
its default precision: bf16 on CPUs with AVX512_BF16), ncnn through pnnx (fp32, and its fp16 defaults),
MNN (fp32), and in int8 (ONNX Runtime's static quantization run by ONNX Runtime and by OpenVINO; ncnn's
own, ncnn2table and ncnn2int8, which the ncnn wheel lacks: build them once with
benchmarks/build_ncnn_quantize_tools.sh, else that cell is reported unavailable; the engine's own int8,
judged by accuracy on trained nets, see docs/reduced-precision.md), and the engine in bf16 (CPUs with
AVX512_BF16), all in one process, called in interleaved passes (see paired_latency.py), every cell's output
checked against eager PyTorch first (a cell that computes something else is reported, not timed). Each cell
first waits until no thread of the process is busy, then makes untimed calls for at least 50 ms before its
timed one: ONNX Runtime's and OpenMP's worker threads keep spinning after a call returns (~50 ms alone,
longer while another runtime shares their cores), and on a 2-core machine they would take a core from the
next cell (the engine at 2 threads measured 3.8 ms after ONNX Runtime's call, 1.8-2.0 ms alone); the
warm-up calls wake the cores again after the wait. One interleaved run per thread count; ratios are the
engine's median over the fastest fp32 peer's, and the bf16 and int8 engines' over the fastest peer cell at
any precision.

    pip install -e '.[peers]'     # ncnn, pnnx, mnn (pinned)
    python benchmarks/peer_latency.py [--threads 1 2] [--batch 1] [--passes 100] \\
        [--output benchmarks/results/<cpu>/peers]

Defaults: ShuffleNet V2 1x, ShuffleNet V1 (g = 3) 1x, MobileNet V2 1.0 and FE-Net 1.0x at 224x224, batch 1,
on 1 thread and on every core this process may use. ``--batch 32`` gives throughput (ms per batch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shufflenet._system import usable_cores
from shufflenet.bench.latency import latency_table, measure_paired, peer_ratios
from shufflenet.bench.report import report_latency

MODELS = ("shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0", "fenet_x1_0")
RUNTIMES = (
    "ort",
    "openvino",
    "openvino_default",
    "ncnn",
    "ncnn_default",
    "mnn",
    "engine",
    "ort_int8",
    "openvino_int8",
    "ncnn_int8",
    "engine_bf16",
    "engine_int8",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=MODELS, metavar="MODEL", help="model specs")
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES, metavar="NAME", help=", ".join(RUNTIMES))
    parser.add_argument(
        "--threads",
        nargs="+",
        type=int,
        help=f"thread counts, one interleaved run each (default 1 {usable_cores()})",
    )
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--passes", type=int, default=100, help="timed calls per cell (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="calls per cell before timing (default 10)")
    parser.add_argument(
        "--steady-ms",
        type=float,
        default=50.0,
        help="untimed calls of a cell for at least this long before each timed one, after the previous "
        "runtime's spinning threads have stopped (default 50: the cores are awake again)",
    )
    parser.add_argument("--output", type=Path, help="write latency.md/.csv/.json into this folder")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.passes < 1 or args.size < 32:
        parser.error("--batch and --passes must be positive and --size at least 32")
    thread_counts = args.threads or sorted({1, usable_cores()})
    cells = []
    for threads in thread_counts:
        cells += measure_paired(
            args.models,
            size=(args.size, args.size),
            runtimes=args.runtimes,
            passes=args.passes,
            warmup=args.warmup,
            threads=threads,
            batch=args.batch,
            rewarm_seconds=args.steady_ms / 1000,
        )
    table = latency_table(cells)
    ratios = peer_ratios(cells)
    command = [Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]
    report_latency(cells, table, ratios, args.output, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
