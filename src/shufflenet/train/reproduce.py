"""The papers' tables reproduced by training: every cell of a table (:mod:`shufflenet.train.paper_tables`)
trained for several seeds on one dataset, in parallel processes, each run resumable and reused once
finished; then the table beside the paper's column, the claims' verdicts and a plot.

Runs are keyed by what they learn (dataset, budget, model, switches, seed), not by table, so tables that
share a cell (Table 2's shuffled nets are Table 3's too) train it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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
from shufflenet.train.paper_tables import DEFAULT_SEEDS, TOP1_ERROR, Cell, Claim, Metric, PaperTable
from shufflenet.train.reuse import checkpoint_matches, finished_summary, settings_differing
from shufflenet.train.run_dir import previous_run
from shufflenet.train.sizing import adapt_to_data

RECIPE = "reproduce"
DEFAULT_BUDGET = 30_000  # training images per run: about 4 minutes for ShuffleNet 1x on one Zen 4 core
LOG_NAME = "reproduce.log"
FAILURE_NAME = "failure.json"
ARCHITECTURE_NAME = "architecture.txt"
SUMMARY_NAME = "summary.json"


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
class Task:
    """How a table's runs are made and trained: the recipe and settings class, the training function
    (module-level, as each run starts it in a process of its own), the default dataset and budget, the
    datasets it accepts, and ``adapt``, which completes a cell's settings for the dataset given the user's
    overrides (the small-input stem on 28-32 px images; a detection cell's resolution for the data)."""

    recipe: str
    config_class: type[TrainConfig]
    train: Callable[..., dict[str, Any]]
    dataset: str
    datasets: tuple[str, ...]
    budget: Budget
    adapt: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def _train_classifier(config: TrainConfig, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    from shufflenet.train.engine import train

    return train(config, resume=resume, overwrite=overwrite)


def _small_input_stem(settings: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    dataset = settings["dataset"]
    if dataset in DATASETS and is_small(DATASETS[dataset].image_size):
        settings["model_args"] = {"small_input": True, **settings["model_args"]}
    return settings


CLASSIFICATION = Task(
    recipe=RECIPE,
    config_class=TrainConfig,
    train=_train_classifier,
    dataset="fashion-mnist",
    datasets=tuple(DATASETS),
    budget=Budget(),
    adapt=_small_input_stem,
)


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
    # Cells of one model differ by their switches or their own settings (a detection cell's resolution).
    own = {**cell.model_args, **cell.settings}
    switches = "".join(f"-{key}_{value}" for key, value in sorted(own.items()))
    return f"{cell.model}{switches}"


def plan(
    table: PaperTable,
    *,
    task: Task = CLASSIFICATION,
    dataset: str | None = None,
    data_dir: str | None = None,
    budget: Budget | None = None,
    seeds: int = DEFAULT_SEEDS,
    output: Path = Path("runs/reproduce"),
    overrides: dict[str, Any] | None = None,
    only: Callable[[Cell], bool] | None = None,
    device: str | None = None,
) -> tuple[Path, list[PlannedRun]]:
    """The experiment folder and the runs of ``table``'s cells (those ``only`` keeps), seeds 0..seeds-1,
    made and trained as ``task`` says (its dataset and budget unless given). ``overrides`` change what the
    runs learn (and so name a folder of their own); ``device`` does not."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    dataset = dataset or task.dataset
    if dataset not in task.datasets:
        raise ValueError(f"{table.name} trains on one of {', '.join(task.datasets)}, not {dataset!r}")
    overrides = dict(overrides or {})
    budget = budget or task.budget
    folder = experiment_dir(output, dataset, budget, overrides)
    cells = [cell for cell in table.cells if only is None or only(cell)]
    if not cells:
        raise ValueError(
            f"no cell of {table.name} is selected; see `shufflenet reproduce {table.name} --list`"
        )
    runs = []
    for cell in cells:
        cell_settings: dict[str, Any] = {
            "dataset": dataset,
            "data_dir": data_dir,
            "model": cell.model,
            "model_args": dict(cell.model_args),
            "progress": False,
            "cpu_processes": 1,
            "device": device,
            **table.settings,
            **cell.settings,
        }
        settings = {**task.adapt(cell_settings, overrides), **overrides}
        if budget.epochs is not None:
            settings["epochs"] = budget.epochs
        config = load_config(task.recipe, settings, task.config_class)
        if budget.images is not None:
            config = dataclasses.replace(config, iterations=math.ceil(budget.images / config.batch_size))
        if dataset == "imagefolder":
            # Sized to the images here, as train() would, so that the settings a finished run saved (its
            # size and stem) are the ones planned; once per cell, as every seed reads the same images.
            config = adapt_to_data(config)[0]
        for seed in range(seeds):
            output = str(folder / _cell_folder(cell) / f"seed{seed}")
            runs.append(PlannedRun(cell.key, seed, dataclasses.replace(config, seed=seed, output=output)))
    return folder, runs


def architecture(config: TrainConfig) -> str:
    """A fingerprint of the network ``config`` builds (every parameter's name and shape): a run trained
    before a model's definition changed under the same name is not taken for a run of the new one."""
    return _architecture(config.model, json.dumps(config.model_args, sort_keys=True))


@functools.cache
def _architecture(model_name: str, model_args: str) -> str:
    # Built once per model and switches: a table's seeds (and its other runs of the same cell) share it.
    from shufflenet.registry import create_model

    model = create_model(model_name, **json.loads(model_args))
    shapes = [f"{name}:{tuple(tensor.shape)}" for name, tensor in model.state_dict().items()]
    return hashlib.sha256("\n".join(shapes).encode()).hexdigest()[:16]


def _architecture_changed(config: TrainConfig) -> bool:
    recorded = config.run_dir() / ARCHITECTURE_NAME
    return recorded.is_file() and recorded.read_text().strip() != architecture(config)


def run_state(config: TrainConfig) -> str:
    """``finished`` (reused), ``resume`` (interrupted with these settings), ``new``, or ``conflict`` (the
    folder holds a run of other settings, or of a network since built differently)."""
    if _architecture_changed(config):
        return "conflict"
    if checkpoint_matches(config):
        return "finished" if (config.run_dir() / SUMMARY_NAME).is_file() else "resume"
    return "new" if previous_run(config.run_dir()) is None else "conflict"


def finished_outcomes(
    runs: Sequence[PlannedRun], states: dict[int, str]
) -> dict[tuple[str, int], RunOutcome]:
    """The summaries of the runs whose state (by ``id(run)``, from :func:`run_state`) is ``finished``."""
    return {
        (run.cell, run.seed): RunOutcome(summary=json.loads((run.run_dir / SUMMARY_NAME).read_text()))
        for run in runs
        if states[id(run)] == "finished"
    }


def conflict_reason(config: TrainConfig) -> str:
    """What differs between ``config`` and the run already in its folder, for the refusal's message."""
    if _architecture_changed(config):
        return f"a {config.model} built differently from today's"
    changed = settings_differing(config)
    return (
        f"other settings ({', '.join(changed)})"
        if changed
        else f"another run ({previous_run(config.run_dir())})"
    )


@dataclass
class RunOutcome:
    """What a run left: its summary, or the one-line reason it failed."""

    summary: dict[str, Any] | None = None
    error: str | None = None


def _child(
    config: TrainConfig, resume: bool, overwrite: bool, threads: int, train: Callable[..., dict[str, Any]]
) -> None:
    """A run in its own process: one thread (or ``threads``), its output in the run folder's log."""
    import torch

    from shufflenet.train.distributed import StoppedBySignal, die_with_parent

    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before it could be watched
        raise SystemExit(1)
    # Its own process group: a Ctrl-C at the terminal reaches only the parent, which asks each run once.
    os.setpgrp()
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
    log = run.run_dir / LOG_NAME
    if exitcode == -signal.SIGKILL:
        return RunOutcome(error=f"killed by SIGKILL, most likely for want of memory; see {log}")
    if exitcode is not None and exitcode < 0:
        return RunOutcome(error=f"killed by signal {-exitcode}; see {log}")
    return RunOutcome(error=f"stopped (exit code {exitcode}); see {log}")


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
    task: Task = CLASSIFICATION,
    metric: Metric = TOP1_ERROR,  # the table's: what a finished run reports
) -> dict[tuple[str, int], RunOutcome]:
    """Train every run not finished before, ``jobs`` processes at a time, with ``task``'s training
    function, and return each run's outcome (a finished run reports its ``metric``).

    Finished runs with the same settings are reused and interrupted ones resumed; a folder holding a run of
    other settings is refused unless ``overwrite``. Ctrl-C or SIGTERM asks the runs in progress to stop at
    a checkpoint, starts no other, and raises :class:`Interrupted`; a second one kills them."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    states = {id(run): run_state(run.config) for run in runs}
    conflicts = [run for run in runs if states[id(run)] == "conflict"]
    if conflicts and not overwrite:
        count = len(conflicts)
        raise ValueError(
            f"{conflicts[0].run_dir} holds a run of {conflict_reason(conflicts[0].config)}; choose another "
            f"--output, or --overwrite to retrain it{f' and {count - 1} more' if count > 1 else ''}"
        )
    outcomes = finished_outcomes(runs, states)
    pending = [run for run in runs if states[id(run)] != "finished"]
    resuming = sum(states[id(run)] == "resume" for run in pending)
    report(
        f"{len(outcomes)} finished before (reused), {resuming} to resume, "
        f"{len(pending) - resuming} to train; each run's log: RUN_DIR/{LOG_NAME}"
    )
    if not pending:
        return outcomes
    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")
    active: dict[int, tuple[PlannedRun, multiprocessing.process.BaseProcess, float]] = {}
    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress, file=sys.stderr)
    signals: list[int] = []  # the handler only records; the loop below acts, between two waits

    def record(signum: int, frame: Any) -> None:
        signals.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in (signal.SIGINT, signal.SIGTERM)}
    asked_to_stop = False
    try:
        while active or (pending and not signals):
            while pending and len(active) < jobs and not signals:
                run = pending.pop(0)
                state = states[id(run)]
                process = context.Process(
                    target=_child,
                    args=(
                        run.config,
                        state == "resume",
                        overwrite and state == "conflict",
                        threads,
                        task.train,
                    ),
                )
                process.start()
                active[process.sentinel] = (run, process, time.monotonic())
            if signals and not asked_to_stop:
                asked_to_stop = True
                report("stopping: the runs in progress save a checkpoint (Ctrl-C again to kill them)")
                for _, process, _ in active.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGTERM)
            if len(signals) > 1:
                for _, process, _ in active.values():
                    process.kill()
            for sentinel in wait(list(active), timeout=0.5):
                run, process, started = active.pop(sentinel)
                process.join()
                outcome = _outcome(run, process.exitcode)
                outcomes[(run.cell, run.seed)] = outcome
                bar.update()
                if outcome.summary is not None:
                    line = f"{run.cell} seed {run.seed}: {metric.name} {outcome.summary[metric.key]:.2f}%"
                elif signals:
                    line = f"{run.cell} seed {run.seed}: stopped" + (
                        " at a checkpoint" if len(signals) == 1 else ""
                    )
                else:
                    line = f"{run.cell} seed {run.seed}: failed: {outcome.error}"
                bar.write(f"{line} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        bar.close()
    if signals:
        raise Interrupted("stopped; run the same command again to resume where the runs stopped", signals[0])
    return outcomes


# --- the report ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellResult:
    """A cell's figures in its table's metric over its seeds, and the other figures of its runs."""

    cell: Cell
    values: tuple[float, ...]
    failures: tuple[str, ...]
    mflops_here: float | None
    mflops_paper_count: float
    params: int | None
    time_s: float | None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


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
    """Each planned cell's result, in the table's order: its runs' figures in the table's metric."""
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
                values=tuple(s[table.metric.key] for s in summaries),
                failures=tuple(o.error for o in done if o.error is not None),
                mflops_here=summaries[0].get("mflops") if summaries else None,
                mflops_paper_count=paper_count(cell),
                params=summaries[0]["params"] if summaries else None,
                time_s=statistics.fmean(s["time_s"] for s in summaries) if summaries else None,
            )
        )
    return results


# A margin counts as clear of the seed noise beyond this many standard errors (about 95% one-sided).
CLEAR_MARGIN = 2.0


@dataclass(frozen=True)
class ContrastResult:
    """One comparison of a claim: ours (points of the metric, signed so the paper's reading is positive), its
    standard error from the seeds' spread (None with one seed), and the paper's."""

    name: str
    ours: float | None
    error: float | None
    paper: float
    identical: bool = False  # two cells whose figures are equal seed for seed: in effect one network

    @property
    def clear(self) -> bool:
        """Whether our margin, either way, exceeds twice its standard error."""
        return self.ours is not None and self.error is not None and abs(self.ours) > CLEAR_MARGIN * self.error

    def noise(self) -> str:
        if self.error is None:
            return "one seed, no noise estimate"
        side = "clear of" if self.clear else "within"
        return f"standard error {self.error:.2f}: {side} the seed noise"


@dataclass(frozen=True)
class Verdict:
    """A claim judged on our runs: ``holds`` is None while it can still go either way for want of runs."""

    claim: Claim
    contrasts: tuple[ContrastResult, ...]

    @property
    def measured(self) -> list[ContrastResult]:
        return [c for c in self.contrasts if c.ours is not None]

    @property
    def holds(self) -> bool | None:
        if any(c.ours <= 0 for c in self.measured):
            return False
        return None if len(self.measured) < len(self.contrasts) else True

    def sentence(self) -> str:
        """The claim, whether it holds at this scale, by how much, and against the seed noise; and which
        comparisons set two cells that trained identically side by side."""
        identical = [c.name for c in self.contrasts if c.identical]
        if not identical:
            return self._verdict()
        return (
            f"{self._verdict()} In {', '.join(identical)} the two cells' figures are identical seed for "
            "seed: they trained as one network, so the margin is the claim's tolerance (0 for most) rather "
            "than a difference between them."
        )

    def _verdict(self) -> str:
        measured = self.measured
        missing = len(self.contrasts) - len(measured)
        if self.holds is None:
            total = len(self.contrasts)
            return f"**Not measured**: {self.claim.text} ({missing} of {total} comparisons lack runs)."
        worst = min(measured, key=lambda c: c.ours)
        size = f"{worst.ours:+.2f} points (paper {worst.paper:+.1f}), {worst.noise()}"
        if self.holds:
            if len(measured) == 1:
                return f"**Holds** at this scale: {self.claim.text}. {size}."
            clear = sum(c.clear for c in measured)
            return (
                f"**Holds** at this scale: {self.claim.text}. All {len(measured)} comparisons agree, "
                f"{clear} of them clear of the seed noise; the smallest, {worst.name}: {size}."
            )
        if len(self.contrasts) == 1:
            return f"**Does not hold** at this scale: {self.claim.text}. {size}."
        agreeing = sum(c.ours > 0 for c in measured)
        unmeasured = f" ({missing} not measured)" if missing else ""
        return (
            f"**Does not hold** at this scale: {self.claim.text}. {agreeing} of {len(measured)} comparisons "
            f"agree{unmeasured}; the worst, {worst.name}: {size}."
        )


def judge(table: PaperTable, results: Sequence[CellResult]) -> list[Verdict]:
    """Every claim of ``table`` judged on ``results``. A comparison's standard error is that of a weighted
    sum of independent means: the square root of the sum over its cells of weight^2 x variance / seeds."""
    by_key = {result.cell.key: result for result in results}
    paper = table.paper_losses()
    loss = table.metric.loss
    verdicts = []
    for claim in table.claims:
        contrasts = []
        for contrast in claim.contrasts:
            cells = [by_key.get(key) for key, _ in contrast.weights]
            if any(result is None or result.mean is None for result in cells):
                contrasts.append(ContrastResult(contrast.name, None, None, contrast.value(paper)))
                continue
            ours = contrast.value({key: loss(by_key[key].mean) for key, _ in contrast.weights})
            variances = [
                None if by_key[key].std is None else (weight * by_key[key].std) ** 2 / len(by_key[key].values)
                for key, weight in contrast.weights
            ]
            error = None if None in variances else math.sqrt(sum(variances))
            identical = len(cells) == 2 and cells[0].values == cells[1].values
            contrasts.append(ContrastResult(contrast.name, ours, error, contrast.value(paper), identical))
        verdicts.append(Verdict(claim, tuple(contrasts)))
    return verdicts


def _orderings(results: Sequence[CellResult], metric: Metric) -> list[list[str]]:
    rows = []
    levels = list(dict.fromkeys(result.cell.level for result in results))
    sign = " > " if metric.higher_is_better else " < "
    for level in levels:
        at_level = [r for r in results if r.cell.level == level]
        if len(at_level) < 2:
            continue
        paper = sign.join(r.cell.key for r in sorted(at_level, key=lambda r: metric.loss(r.cell.paper)))
        measured = [r for r in at_level if r.mean is not None]
        by_ours = sorted(measured, key=lambda r: metric.loss(r.mean))
        rows.append([level, paper, sign.join(r.cell.key for r in by_ours)])
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
    metric = table.metric
    headers = [
        "cell",
        "model",
        "MFLOPs (paper's count)",
        "paper MFLOPs",
        f"paper {metric.name} %",
        f"our {metric.name} %",
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
                f"{r.cell.paper:.1f}",
                ours,
                str(len(r.values)),
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
                    "" if c.error is None else f"{c.error:.2f}",
                    f"{c.paper:+.1f}",
                ]
            )
    failures = [f"- {r.cell.key}: {error}" for r in results for error in r.failures]
    parts = [
        f"# {table.source}: {table.title}\n",
        f"{setting}\n",
        environment_text + "\n",
        f"The paper's figures: {table.paper_setting}. Ours: {metric.label} on held-out data, mean ± "
        "standard deviation over seeds. Figures are not comparable across the two columns (other data, "
        "far shorter training); the claims are about the order of the cells, which is what the verdicts "
        "compare.\n",
        markdown_table(headers, body) + "\n",
        "## Claims\n",
        "\n".join(f"{n}. {v.sentence()} ({v.claim.source})" for n, v in enumerate(verdicts, start=1)) + "\n",
        f"Each comparison below is a difference of {metric.name} in points (plus a claim's tolerance, if it "
        "has one), signed so that the paper's reading is "
        "positive (a claim holds when all of its comparisons are). Its standard error comes from the seeds' "
        "spread: the square root of the sum, over its cells, of weight^2 x variance / seeds. A margin beyond "
        "twice its standard error is clear of the seed noise; one within it could go either way with other "
        "seeds.\n",
        markdown_table(["claim", "comparison", "ours", "standard error", "paper"], comparisons) + "\n",
        "## Order at each level (best first)\n",
        markdown_table(["level", "paper", "ours"], _orderings(results, metric)) + "\n",
    ]
    if failures:
        parts.append("## Failed runs\n\n" + "\n".join(failures) + "\n")
    if plot_name:
        parts.append(f"![{metric.name} against MFLOPs, the paper's and ours]({plot_name})\n")
    return "\n".join(parts)


def plot(table: PaperTable, results: Sequence[CellResult], path: Path, *, dataset: str) -> Path:
    """Two panels sharing the x axis (MFLOPs as the paper counts them): the paper's figure and ours (mean ±
    std), each cell marked by its level, so the orderings read side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    paper_axes, our_axes = figure.subplots(1, 2, sharex=True)
    levels = list(dict.fromkeys(r.cell.level for r in results))
    markers = "osD^v<>pP*Xh"
    metric = table.metric
    for index, level in enumerate(levels):
        at_level = [r for r in results if r.cell.level == level]
        style = {"marker": markers[index % len(markers)], "linestyle": "none", "label": level}
        # Cells of one level cost nearly the same: spread them a little along x, in the paper's order, so
        # that their labels do not overlap.
        by_paper = sorted(at_level, key=lambda r: metric.loss(r.cell.paper))
        x = {
            r.cell.key: r.mflops_paper_count * 1.12 ** (n - (len(by_paper) - 1) / 2)
            for n, r in enumerate(by_paper)
        }
        (line,) = paper_axes.plot(
            [x[r.cell.key] for r in at_level], [r.cell.paper for r in at_level], **style
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
        paper_rank = {r.cell.key: n for n, r in enumerate(by_paper, 1)}
        our_rank = {
            r.cell.key: n for n, r in enumerate(sorted(measured, key=lambda r: metric.loss(r.mean)), 1)
        }
        labelled = [(paper_axes, r, r.cell.paper, f"{r.cell.key} {paper_rank[r.cell.key]}") for r in at_level]
        labelled += [
            (our_axes, r, r.mean, f"{r.cell.key} {our_rank[r.cell.key]} (paper {paper_rank[r.cell.key]})")
            for r in measured
        ]
        for axes, result, value, text in labelled:
            axes.annotate(
                text,
                (x[result.cell.key], value),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    paper_axes.set_title(f"paper: {table.paper_setting.split(',')[0]}", fontsize=9)
    our_axes.set_title(
        f"ours: {dataset} {metric.name}, mean ± std over seeds; rank at its level (the paper's)", fontsize=9
    )
    # Ticks at the levels' costs: within one decade (Table 7's 140-569) a log axis has no labelled tick.
    costs: list[int] = []
    for cost in sorted({round(r.mflops_paper_count) for r in results}):
        if not costs or cost > 1.25 * costs[-1]:  # labels of closer costs would overlap
            costs.append(cost)
    for axes in (paper_axes, our_axes):
        axes.set_xscale("log")
        axes.set_xticks(costs)
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("MFLOPs, the paper's count (a level's cells spread out)", fontsize=8)
        axes.set_ylabel(metric.label)
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
    """``folder/<table>.md`` and ``.json`` (the context, each cell's figures, each verdict), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{table.name}.md", lambda f: f.write(markdown.encode()))
    record = {
        **context,
        "table": table.name,
        "source": table.source,
        "metric": dataclasses.asdict(table.metric),  # its key names each cell's figures
        "cells": [
            {
                **dataclasses.asdict(r.cell),
                table.metric.key: list(r.values),
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
