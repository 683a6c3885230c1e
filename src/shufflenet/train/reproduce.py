"""The papers' tables reproduced by training: every cell of a table (:mod:`shufflenet.train.paper_tables`)
trained for several seeds on one dataset, in parallel processes, each run resumable and reused once
finished; then the table beside the paper's column, the claims' verdicts and a plot.

Runs are keyed by what they learn (dataset, budget, model, switches, seed), not by table, so tables that
share a cell (Table 2's shuffled nets are Table 3's too) train it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from shufflenet._system import atomic_write
from shufflenet._table import markdown_table
from shufflenet.data.catalog import DATASETS, is_small
from shufflenet.train.config import TrainConfig, load_config
from shufflenet.train.paper_tables import Cell, Claim, PaperTable
from shufflenet.train.reuse import checkpoint_matches, finished_summary
from shufflenet.train.run_dir import previous_run

RECIPE = "reproduce"
DEFAULT_BUDGET = 30_000  # training images per run: about 4 minutes for ShuffleNet 1x on one Zen 4 core
DEFAULT_SEEDS = 3
LOG_NAME = "reproduce.log"
FAILURE_NAME = "failure.json"
ARCHITECTURE_NAME = "architecture.txt"


@dataclass(frozen=True)
class Budget:
    """How long each run trains: ``images`` seen (as whole optimizer steps), or full ``epochs``."""

    images: int | None = DEFAULT_BUDGET
    epochs: int | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (self.epochs is None):
            raise ValueError("give a budget in images or in epochs, not both")
        if (self.images or self.epochs or 0) < 1:
            raise ValueError("the budget must be positive")

    @property
    def tag(self) -> str:
        if self.epochs is not None:
            return f"{self.epochs}ep"
        return f"{self.images // 1000}k" if self.images % 1000 == 0 else str(self.images)

    def describe(self, batch_size: int) -> str:
        if self.epochs is not None:
            return f"{self.epochs} epoch{'s' * (self.epochs != 1)} per run"
        steps = math.ceil(self.images / batch_size)
        return f"{self.images:,} training images per run ({steps} steps of {batch_size})"


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a cell: the cell's key, the seed and the full settings."""

    cell: str
    seed: int
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()


def experiment_dir(output: Path, dataset: str, budget: Budget, overrides: dict[str, Any]) -> Path:
    """Where one dataset-and-budget's runs and reports live: ``output/<dataset>-<budget>`` and, when
    settings were changed, a short hash of them, so that differently trained runs never share a folder."""
    name = f"{dataset}-{budget.tag}"
    if overrides:
        digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
        name += f"-{digest[:8]}"
    return Path(output) / name


def _cell_folder(cell: Cell) -> str:
    switches = "".join(f"-{key}_{value}" for key, value in sorted(cell.model_args.items()))
    return f"{cell.model}{switches}"


def plan(
    table: PaperTable,
    *,
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    budget: Budget | None = None,
    seeds: int = DEFAULT_SEEDS,
    output: Path = Path("runs/reproduce"),
    overrides: dict[str, Any] | None = None,
    only: Callable[[Cell], bool] | None = None,
) -> tuple[Path, list[PlannedRun]]:
    """The experiment folder and the runs of ``table``'s cells (those ``only`` keeps), seeds 0..seeds-1."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    overrides = dict(overrides or {})
    budget = budget or Budget()
    folder = experiment_dir(output, dataset, budget, overrides)
    cells = [cell for cell in table.cells if only is None or only(cell)]
    if not cells:
        raise ValueError(
            f"no cell of {table.name} is selected; see `shufflenet reproduce {table.name} --list`"
        )
    runs = []
    for cell in cells:
        model_args = dict(cell.model_args)
        if dataset in DATASETS and is_small(DATASETS[dataset].image_size):
            model_args.setdefault("small_input", True)
        for seed in range(seeds):
            settings: dict[str, Any] = {
                "dataset": dataset,
                "data_dir": data_dir,
                "model": cell.model,
                "model_args": model_args,
                "seed": seed,
                "progress": False,
                "cpu_processes": 1,
                "output": str(folder / _cell_folder(cell) / f"seed{seed}"),
                **table.settings,
                **overrides,
            }
            if budget.epochs is not None:
                settings["epochs"] = budget.epochs
            else:
                batch = overrides.get("batch_size", load_config(RECIPE).batch_size)
                settings["iterations"] = math.ceil(budget.images / batch)
            runs.append(PlannedRun(cell.key, seed, load_config(RECIPE, settings)))
    return folder, runs


def architecture(config: TrainConfig) -> str:
    """A fingerprint of the network ``config`` builds (every parameter's name and shape): a run trained
    before a model's definition changed under the same name is not taken for a run of the new one."""
    from shufflenet.registry import create_model

    model = create_model(config.model, **config.model_args)
    shapes = [f"{name}:{tuple(tensor.shape)}" for name, tensor in model.state_dict().items()]
    return hashlib.sha256("\n".join(shapes).encode()).hexdigest()[:16]


def run_state(config: TrainConfig) -> str:
    """``finished`` (reused), ``resume`` (interrupted with these settings), ``new``, or ``conflict`` (the
    folder holds a run of other settings, or of a network since built differently)."""
    recorded = config.run_dir() / ARCHITECTURE_NAME
    if recorded.is_file() and recorded.read_text().strip() != architecture(config):
        return "conflict"
    if finished_summary(config) is not None:
        return "finished"
    if checkpoint_matches(config):
        return "resume"
    return "new" if previous_run(config.run_dir()) is None else "conflict"


@dataclass
class RunOutcome:
    """What a run left: its summary, or the one-line reason it failed."""

    summary: dict[str, Any] | None = None
    error: str | None = None


def _child(config: TrainConfig, resume: bool, overwrite: bool, threads: int) -> None:
    """A run in its own process: one thread (or ``threads``), its output in the run folder's log."""
    import torch

    from shufflenet.train.distributed import StoppedBySignal, die_with_parent
    from shufflenet.train.engine import train

    die_with_parent()
    torch.set_num_threads(threads)
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILURE_NAME).unlink(missing_ok=True)
    (run_dir / ARCHITECTURE_NAME).write_text(architecture(config) + "\n")
    with (
        open(run_dir / LOG_NAME, "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            train(config, resume=resume, overwrite=overwrite)
        except StoppedBySignal as stop:
            raise SystemExit(128 + stop.signum) from None
        except BaseException as error:
            message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
            text = json.dumps({"error": message}) + "\n"
            atomic_write(run_dir / FAILURE_NAME, lambda f: f.write(text.encode()))
            raise SystemExit(1) from None


def _outcome(run: PlannedRun, exitcode: int | None) -> RunOutcome:
    summary = finished_summary(run.config)
    if summary is not None:
        return RunOutcome(summary=summary)
    failure = run.run_dir / FAILURE_NAME
    if failure.is_file():
        return RunOutcome(error=json.loads(failure.read_text())["error"])
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        return RunOutcome(error=f"killed by {name} (out of memory?); see {run.run_dir / LOG_NAME}")
    return RunOutcome(error=f"stopped (exit code {exitcode}); see {run.run_dir / LOG_NAME}")


class Interrupted(Exception):
    """The user stopped the runs; those in progress saved checkpoints and resume on the next call."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def execute(
    runs: Sequence[PlannedRun],
    *,
    jobs: int,
    threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> dict[tuple[str, int], RunOutcome]:
    """Train every run not finished before, ``jobs`` processes at a time, and return each run's outcome.

    Finished runs with the same settings are reused and interrupted ones resumed; a folder holding a run of
    other settings is refused unless ``overwrite``. Ctrl-C (or SIGTERM) stops the runs in progress at a
    checkpoint and raises :class:`Interrupted`."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    states = {id(run): run_state(run.config) for run in runs}
    conflicts = [run for run in runs if states[id(run)] == "conflict"]
    if conflicts and not overwrite:
        where = conflicts[0].run_dir
        raise ValueError(
            f"{where} holds a run with other settings or of a network built differently since "
            f"({previous_run(where)}); choose another --output, or "
            f"--overwrite to retrain {len(conflicts)} such run{'s' * (len(conflicts) != 1)}"
        )
    outcomes = {
        (run.cell, run.seed): RunOutcome(summary=finished_summary(run.config))
        for run in runs
        if states[id(run)] == "finished"
    }
    pending = [run for run in runs if states[id(run)] != "finished"]
    if outcomes:
        report(f"{len(outcomes)} of {len(runs)} runs finished before with these settings: reused")
    if not pending:
        return outcomes
    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")
    active: dict[int, tuple[PlannedRun, multiprocessing.process.BaseProcess, float]] = {}
    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress, file=sys.stderr)
    stop_requested = False

    stop_signal = signal.SIGINT

    def stop(signum: int, frame: Any) -> None:
        nonlocal stop_signal
        stop_signal = signum
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or active:
            while pending and len(active) < jobs and not stop_requested:
                run = pending.pop(0)
                resume = states[id(run)] == "resume"
                process = context.Process(target=_child, args=(run.config, resume, overwrite, threads))
                process.start()
                active[process.sentinel] = (run, process, time.monotonic())
            try:
                ready = wait(list(active), timeout=5)
            except KeyboardInterrupt:
                if not stop_requested:
                    stop_requested = True
                    report("stopping: the runs in progress save a checkpoint (Ctrl-C again to kill them)")
                    for _, process, _ in active.values():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(process.pid, signal.SIGTERM)
                    continue
                for _, process, _ in active.values():
                    process.kill()
                raise
            for sentinel in ready:
                run, process, started = active.pop(sentinel)
                process.join()
                outcome = _outcome(run, process.exitcode)
                outcomes[(run.cell, run.seed)] = outcome
                bar.update()
                if outcome.summary is not None:
                    line = f"{run.cell} seed {run.seed}: {outcome.summary['top1_err']:.2f}% error"
                elif stop_requested:
                    line = f"{run.cell} seed {run.seed}: stopped at a checkpoint"
                else:
                    line = f"{run.cell} seed {run.seed}: failed: {outcome.error}"
                bar.write(f"{line} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        bar.close()
    if stop_requested:
        raise Interrupted("stopped; run the same command again to resume where the runs stopped", stop_signal)
    return outcomes


# --- the report ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellResult:
    """A cell's errors over its seeds and the figures of its runs."""

    cell: Cell
    errors: tuple[float, ...]
    failures: tuple[str, ...]
    mflops_here: float | None
    mflops_paper_count: float
    params: int | None
    time_s: float | None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.errors) if self.errors else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.errors) if len(self.errors) > 1 else None


def paper_count(cell: Cell) -> float:
    """The cell's MFLOPs counted as its paper counts (the model card's input size and classes: 224 px and
    1,000 classes, CIFAR's 32 px and 10 for the shift paper)."""
    from shufflenet.profile import profile
    from shufflenet.registry import create_model, model_card

    card = model_card(cell.model)
    model = create_model(cell.model, num_classes=card.num_classes, **cell.model_args).eval()
    return profile(model, (card.input_size, card.input_size)).mflops


def collect(
    table: PaperTable, runs: Sequence[PlannedRun], outcomes: dict[tuple[str, int], RunOutcome]
) -> list[CellResult]:
    """Each planned cell's result, in the table's order."""
    results = []
    for cell in table.cells:
        cell_runs = [run for run in runs if run.cell == cell.key]
        if not cell_runs:
            continue
        done = [outcomes[(r.cell, r.seed)] for r in cell_runs if (r.cell, r.seed) in outcomes]
        summaries = [o.summary for o in done if o.summary is not None]
        results.append(
            CellResult(
                cell=cell,
                errors=tuple(s["top1_err"] for s in summaries),
                failures=tuple(o.error for o in done if o.error is not None),
                mflops_here=summaries[0]["mflops"] if summaries else None,
                mflops_paper_count=paper_count(cell),
                params=summaries[0]["params"] if summaries else None,
                time_s=statistics.fmean(s["time_s"] for s in summaries) if summaries else None,
            )
        )
    return results


@dataclass(frozen=True)
class ContrastResult:
    """One comparison of a claim: ours (points of error), its seed-to-seed spread, and the paper's."""

    name: str
    ours: float | None
    spread: float | None
    paper: float


@dataclass(frozen=True)
class Verdict:
    """A claim judged on our runs: ``holds`` is None when a cell it needs has no result."""

    claim: Claim
    contrasts: tuple[ContrastResult, ...]

    @property
    def holds(self) -> bool | None:
        if any(c.ours is None for c in self.contrasts):
            return None
        return all(c.ours > 0 for c in self.contrasts)

    def sentence(self) -> str:
        """The claim, whether it holds at this scale, by how much, and against the seed spread."""
        if self.holds is None:
            return f"**Not measured**: {self.claim.text} (a cell it needs has no finished run)."
        measured = list(self.contrasts)
        worst = min(measured, key=lambda c: c.ours)
        agreeing = sum(c.ours > 0 for c in measured)
        spread = "one seed, no spread" if worst.spread is None else f"seed-to-seed spread {worst.spread:.2f}"
        beyond = worst.spread is not None and abs(worst.ours) > worst.spread
        size = f"{worst.ours:+.2f} points (paper {worst.paper:+.1f}; {spread})"
        if self.holds:
            firm = sum(c.spread is not None and c.ours > c.spread for c in measured)
            where = (
                ""
                if len(measured) == 1
                else f"All {len(measured)} comparisons agree; smallest, {worst.name}: "
            )
            strength = (
                "beyond the seed spread"
                if firm == len(measured)
                else f"{firm} of {len(measured)} beyond the seed spread"
            )
            return f"**Holds** at this scale: {self.claim.text}. {where}{size}; {strength}."
        where = (
            ""
            if len(measured) == 1
            else f"{agreeing} of {len(measured)} comparisons agree; worst, {worst.name}: "
        )
        strength = "beyond the seed spread" if beyond else "within the seed spread"
        return f"**Does not hold** at this scale: {self.claim.text}. {where}{size}, {strength}."


def judge(table: PaperTable, results: Sequence[CellResult]) -> list[Verdict]:
    """Every claim of ``table`` judged on ``results`` (a contrast's spread: the square root of the sum of
    its weights squared times each cell's seed variance)."""
    by_key = {result.cell.key: result for result in results}
    paper = {cell.key: cell.paper_err for cell in table.cells}
    verdicts = []
    for claim in table.claims:
        contrasts = []
        for contrast in claim.contrasts:
            cells = [by_key.get(key) for key, _ in contrast.weights]
            if any(result is None or result.mean is None for result in cells):
                contrasts.append(ContrastResult(contrast.name, None, None, contrast.value(paper)))
                continue
            ours = contrast.value({key: by_key[key].mean for key, _ in contrast.weights})
            stds = [by_key[key].std for key, _ in contrast.weights]
            spread = (
                None
                if any(s is None for s in stds)
                else math.sqrt(sum((w * s) ** 2 for (_, w), s in zip(contrast.weights, stds, strict=True)))
            )
            contrasts.append(ContrastResult(contrast.name, ours, spread, contrast.value(paper)))
        verdicts.append(Verdict(claim, tuple(contrasts)))
    return verdicts


def _orderings(results: Sequence[CellResult]) -> list[list[str]]:
    rows = []
    levels = list(dict.fromkeys(result.cell.level for result in results))
    for level in levels:
        at_level = [r for r in results if r.cell.level == level]
        if len(at_level) < 2:
            continue
        paper = " < ".join(r.cell.key for r in sorted(at_level, key=lambda r: r.cell.paper_err))
        measured = [r for r in at_level if r.mean is not None]
        ours = " < ".join(r.cell.key for r in sorted(measured, key=lambda r: r.mean)) if measured else ""
        rows.append([level, paper, ours])
    return rows


def markdown_report(
    table: PaperTable,
    results: Sequence[CellResult],
    verdicts: Sequence[Verdict],
    *,
    setting: str,
    environment_text: str,
    plot_name: str | None,
) -> str:
    """The table beside the paper's column, the verdict on each claim, the orderings and the plot."""
    headers = [
        "cell",
        "model",
        "MFLOPs (paper's count)",
        "paper MFLOPs",
        "paper err %",
        "our err %",
        "seeds",
        "MFLOPs here",
        "params",
        "s per run",
    ]
    body = []
    for r in results:
        ours = "" if r.mean is None else f"{r.mean:.2f}" + ("" if r.std is None else f" ± {r.std:.2f}")
        if r.failures:
            ours += f" ({len(r.failures)} failed)"
        body.append(
            [
                r.cell.label,
                f"`{r.cell.model}`" + "".join(f" {k}={v}" for k, v in r.cell.model_args.items()),
                f"{r.mflops_paper_count:.1f}",
                "" if r.cell.paper_mflops is None else f"{r.cell.paper_mflops:g}",
                f"{r.cell.paper_err:.1f}",
                ours,
                str(len(r.errors)),
                "" if r.mflops_here is None else f"{r.mflops_here:.1f}",
                "" if r.params is None else f"{r.params:,}",
                "" if r.time_s is None else f"{r.time_s:.0f}",
            ]
        )
    comparisons = []
    for number, verdict in enumerate(verdicts, start=1):
        for c in verdict.contrasts:
            comparisons.append(
                [
                    str(number),
                    c.name,
                    "" if c.ours is None else f"{c.ours:+.2f}",
                    "" if c.spread is None else f"{c.spread:.2f}",
                    f"{c.paper:+.1f}",
                ]
            )
    failures = [f"- {r.cell.key}: {error}" for r in results for error in r.failures]
    parts = [
        f"# {table.source}: {table.title}\n",
        f"{setting}\n",
        environment_text + "\n",
        f"The paper's figures: {table.paper_setting}. Ours: test error (%), mean ± standard deviation over "
        "seeds. Errors are not comparable across the two columns (other data, far shorter training); the "
        "claims are about the order of the cells, which is what the verdicts compare.\n",
        markdown_table(headers, body) + "\n",
        "## Claims\n",
        "\n".join(f"{n}. {v.sentence()} ({v.claim.source})" for n, v in enumerate(verdicts, start=1)) + "\n",
        "Each comparison below is a difference of errors in points, signed so that the paper's reading is "
        "positive; its spread is the seed-to-seed standard deviation of that difference.\n",
        markdown_table(["claim", "comparison", "ours", "spread", "paper"], comparisons) + "\n",
        "## Order at each level (lowest error first)\n",
        markdown_table(["level", "paper", "ours"], _orderings(results)) + "\n",
    ]
    if failures:
        parts.append("## Failed runs\n\n" + "\n".join(failures) + "\n")
    if plot_name:
        parts.append(f"![error against MFLOPs, the paper's and ours]({plot_name})\n")
    return "\n".join(parts)


def plot(table: PaperTable, results: Sequence[CellResult], path: Path, *, dataset: str) -> Path:
    """Two panels sharing the x axis (MFLOPs as the paper counts them): the paper's error and ours (mean ±
    std), each cell marked by its level, so the orderings read side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    paper_axes, our_axes = figure.subplots(1, 2, sharex=True)
    levels = list(dict.fromkeys(r.cell.level for r in results))
    markers = "osD^v<>pP*Xh"
    for index, level in enumerate(levels):
        at_level = [r for r in results if r.cell.level == level]
        style = {"marker": markers[index % len(markers)], "linestyle": "none", "label": level}
        # Cells of one level cost nearly the same: spread them a little along x, in the paper's order, so
        # that their labels do not overlap.
        by_paper = sorted(at_level, key=lambda r: r.cell.paper_err)
        x = {
            r.cell.key: r.mflops_paper_count * 1.12 ** (n - (len(by_paper) - 1) / 2)
            for n, r in enumerate(by_paper)
        }
        (line,) = paper_axes.plot(
            [x[r.cell.key] for r in at_level], [r.cell.paper_err for r in at_level], **style
        )
        measured = [r for r in at_level if r.mean is not None]
        our_axes.errorbar(
            [x[r.cell.key] for r in measured],
            [r.mean for r in measured],
            yerr=[r.std or 0.0 for r in measured],
            color=line.get_color(),
            capsize=3,
            **style,
        )
        # Each point names its rank at its level; ours also the paper's: "g8 4 (paper 1)".
        paper_rank = {
            r.cell.key: n for n, r in enumerate(sorted(at_level, key=lambda r: r.cell.paper_err), 1)
        }
        our_rank = {r.cell.key: n for n, r in enumerate(sorted(measured, key=lambda r: r.mean), 1)}
        labelled = [
            (paper_axes, r, r.cell.paper_err, f"{r.cell.key} {paper_rank[r.cell.key]}") for r in at_level
        ]
        labelled += [
            (our_axes, r, r.mean, f"{r.cell.key} {our_rank[r.cell.key]} (paper {paper_rank[r.cell.key]})")
            for r in measured
        ]
        for axes, result, error, text in labelled:
            axes.annotate(
                text,
                (x[result.cell.key], error),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    paper_axes.set_title(f"paper: {table.paper_setting.split(',')[0]}", fontsize=9)
    our_axes.set_title(
        f"ours: {dataset} test error, mean ± std over seeds; rank at its level (the paper's)", fontsize=9
    )
    for axes in (paper_axes, our_axes):
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("MFLOPs as the paper counts them (a level's cells spread out in the paper's order)")
        axes.set_ylabel("top-1 error (%)")
        axes.grid(True, alpha=0.3)
    paper_axes.legend(fontsize=7)
    figure.suptitle(f"{table.source}: {table.title}", fontsize=10)
    path = Path(path)
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))
    return path


def write_report(
    folder: Path,
    table: PaperTable,
    markdown: str,
    results: Sequence[CellResult],
    verdicts: Sequence[Verdict],
    context: dict[str, Any],
) -> None:
    """``folder/<table>.md`` and ``.json`` (the context, each cell's errors, each verdict), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{table.name}.md", lambda f: f.write(markdown.encode()))
    record = {
        **context,
        "table": table.name,
        "source": table.source,
        "cells": [
            {
                **dataclasses.asdict(r.cell),
                "errors": list(r.errors),
                "mean": r.mean,
                "std": r.std,
                "failures": list(r.failures),
                "mflops_here": r.mflops_here,
                "mflops_paper_count": r.mflops_paper_count,
                "params": r.params,
                "time_s": r.time_s,
            }
            for r in results
        ],
        "claims": [
            {
                "text": v.claim.text,
                "source": v.claim.source,
                "holds": v.holds,
                "contrasts": [dataclasses.asdict(c) for c in v.contrasts],
            }
            for v in verdicts
        ],
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(folder / f"{table.name}.json", lambda f: f.write(text.encode()))
