"""Where the engine's time goes: each planned operation timed over many runs, summed by kind (1x1 convs,
depthwise convs, pools, copies, ...), for several models side by side, in interleaved rounds (one
round of every model, then the next) so the machine's drift lands on all of them alike.

    python benchmarks/engine_profile.py fenet_dw_x1_0 fenet_x1_0 [--size 224] [--threads 1] \\
        [--rounds 20] [--output benchmarks/results/<cpu>/engine-profile-fenet.md]

Made for Chen et al. 2019's Table 6 claim (FE-Net with sparse shifts 1.35-1.4x faster than with depthwise
convs): in the engine a shift is addressing, so FE-Net's time is its 1x1 convs, whatever its shift
pattern; FE-Net (DW) spends the difference in its depthwise convs.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from shufflenet import create_model
from shufflenet._system import atomic_write, cpu_info
from shufflenet.deploy.engine import build_engine, engine_isa


def kind_of(description: str) -> str:
    words = description.split()
    if words[0] == "pointwise":
        return "1x1 conv (GEMM)" if " 1 px" not in description else "classifier / SE convs"
    return {"depthwise": "depthwise conv", "pad": "input padding"}.get(words[0], " ".join(words[:2]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="registered model names")
    parser.add_argument("--size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads (default 1)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--repeats", type=int, default=10, help="runs per model per round (default 10)")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    size = (args.size, args.size)
    engines, batches = {}, {}
    for name in args.models:
        torch.manual_seed(0)
        engines[name] = build_engine(create_model(name).eval(), size, threads=args.threads)
        batches[name] = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    totals: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in args.models}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            by_kind: dict[str, float] = defaultdict(float)
            for description, seconds in engine.profile(batches[name], repeats=args.repeats):
                by_kind[kind_of(description)] += seconds
            for kind, seconds in by_kind.items():
                totals[name][kind].append(seconds)
    kinds = sorted({kind for per in totals.values() for kind in per})
    medians = {
        name: {kind: 1e3 * float(np.median(per[kind])) for kind in per} for name, per in totals.items()
    }
    lines = ["| operation | " + " | ".join(args.models) + " |", "|---|" + "---:|" * len(args.models)]
    for kind in kinds:
        cells = [f"{medians[name].get(kind, 0.0):.2f}" for name in args.models]
        lines.append(f"| {kind} ms | " + " | ".join(cells) + " |")
    sums = {name: sum(medians[name].values()) for name in args.models}
    lines.append("| **total ms** | " + " | ".join(f"**{sums[name]:.2f}**" for name in args.models) + " |")
    first = args.models[0]
    ratios = [f"{first} / {name}: {sums[first] / sums[name]:.2f}" for name in args.models[1:]]
    cpu = cpu_info().get("model name", platform.processor())
    command = " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        f"Engine profile ({engine_isa()}, {args.threads} thread(s), {args.size}x{args.size}, batch 1), "
        f"medians of {args.rounds} interleaved rounds of {args.repeats} runs; {cpu}; torch "
        f"{torch.__version__}; {datetime.date.today()}.\n"
        f"Command: python benchmarks/engine_profile.py {command}\n"
    )
    text = header + "\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {ratio}" for ratio in ratios) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.output, lambda handle: handle.write(text.encode()))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
