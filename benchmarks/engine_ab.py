"""Two or more builds of the engine's C source side by side: each revision's csrc/ compiled for this CPU,
every model planned once and run by each build, in interleaved rounds (a block of calls of one build, then
of the next, in a fresh random order each round), so the machine's drift lands on every build alike. The
ratio reported is the median over rounds of each build's median ms over the first build's, from the same
round. For kernel changes that keep the plan's layout (engine.h): a build with another layout is refused.

    python benchmarks/engine_ab.py REV_OR_FOLDER REV_OR_FOLDER [...] [--models mobilenet_v2_x1_0] \\
        [--threads 1] [--rounds 20] [--output benchmarks/results/<cpu>/engine-ab-<change>]

A revision is anything git names (HEAD, a commit, a branch: its src/shufflenet/deploy/csrc); a folder is
a copy of csrc/ with your edits. The first is the baseline.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from shufflenet import create_model
from shufflenet._table import markdown_table
from shufflenet.bench.report import save_record
from shufflenet.deploy.engine import (
    COMPILE_FLAGS,
    HEADERS,
    ISAS,
    SOURCE,
    Engine,
    _compiler,
    engine_isa,
    open_library,
    plan_engine,
)

CSRC = "src/shufflenet/deploy/csrc"
SOURCES = tuple(path.name for path in (SOURCE, *HEADERS))  # what every build of the engine reads


def source_folder(revision: str, scratch: Path) -> Path:
    """``revision`` itself if it is a folder, else its csrc/ written out of git into ``scratch``."""
    if Path(revision).is_dir():
        return Path(revision)
    folder = scratch / revision.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        shown = subprocess.run(["git", "show", f"{revision}:{CSRC}/{name}"], capture_output=True, check=False)
        if shown.returncode != 0:
            sys.exit(f"engine_ab.py: {revision!r} is neither a folder nor a git revision with {CSRC}/{name}")
        (folder / name).write_bytes(shown.stdout)
    return folder


def build(folder: Path, isa: str, target: Path):
    """The library built from ``folder``/engine.c for ``isa``, opened (its layout checked)."""
    command = [_compiler(), *COMPILE_FLAGS, *ISAS[isa][0], str(folder / "engine.c"), "-o", str(target)]
    subprocess.run(command, check=True)
    return open_library(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("builds", nargs="+", metavar="REV_OR_FOLDER", help="the baseline first")
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2_x1_0"], help="registered model names")
    parser.add_argument("--threads", type=int, default=1, help="engine threads (default 1)")
    parser.add_argument("--size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--calls", type=int, default=8, help="timed calls per build per round (default 8)")
    parser.add_argument("--output", type=Path, help="write engine_ab.md/.csv/.json into this folder")
    args = parser.parse_args(argv)
    if len(args.builds) < 2:
        parser.error("name at least two builds: the baseline, then the change")
    isa = engine_isa()
    scratch = Path(tempfile.mkdtemp(prefix="engine-ab-"))
    libraries = {
        name: build(source_folder(name, scratch), isa, scratch / f"engine-{index}.so")
        for index, name in enumerate(args.builds)
    }
    size = (args.size, args.size)
    batch = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    records, rows = [], []
    for model in args.models:
        torch.manual_seed(0)
        plan = plan_engine(create_model(model).eval(), size, lanes=ISAS[isa][2])
        engines = {name: Engine(library, plan, threads=args.threads) for name, library in libraries.items()}
        reference = engines[args.builds[0]](batch)
        for name, engine in engines.items():  # a faster build that computes something else is no faster
            error = float(np.abs(engine(batch) - reference).max() / np.abs(reference).max())
            if error > 1e-4:
                sys.exit(f"engine_ab.py: {name} differs from {args.builds[0]} on {model} by {error:.1e}")
        medians: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.rounds):
            for name in random.sample(list(engines), len(engines)):
                for _ in range(3):
                    engines[name](batch)
                seconds = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    engines[name](batch)
                    seconds.append(time.perf_counter() - start)
                medians[name].append(1e3 * float(np.median(seconds)))
        base = np.array(medians[args.builds[0]])
        for name in args.builds:
            ratios = np.array(medians[name]) / base
            ms, ratio = float(np.median(medians[name])), float(np.median(ratios))
            low, high = (float(q) for q in np.percentile(ratios, [25, 75]))
            rows.append([model, name, f"{ms:.2f}", f"**{ratio:.3f}**", f"{low:.3f}-{high:.3f}"])
            records.append({"model": model, "build": name, "median_ms": ms, "ratio_to_first": ratio,
                            "ratio_quartiles": [low, high]})  # fmt: skip
    body = (
        f"Engine {isa}, {args.threads} thread(s), {args.size}x{args.size}, batch 1: {args.rounds} "
        f"interleaved rounds of {args.calls} calls per build; ratio: median over rounds of build / "
        f"{args.builds[0]}; beside it the middle half of the rounds' ratios (where that straddles 1, the "
        "change is inside this machine's noise).\n\n"
        + markdown_table(["model", "build", "median ms", "ratio to first", "middle half of rounds"], rows)
    )
    print(body)
    if args.output:
        save_record(args.output, "engine_ab", "Engine builds side by side", body, records, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
