"""The shift ablations of Chen et al. 2019 as functions: the lambda sweep (Table 1) and the removal of the
least important shift layers (Tables 2 and 3), on any dataset the training pipeline reads. Each run is an
ordinary training run in its own directory; the tables are written as Markdown and JSON beside them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shufflenet._system import atomic_write
from shufflenet._table import markdown_table
from shufflenet.ops import ShiftSparsityRow, sparsity_table, total_sparsity
from shufflenet.train.config import TrainConfig
from shufflenet.train.engine import train
from shufflenet.train.reuse import checkpoint_matches, finished_summary

# Chen et al. 2019, Table 1, ShiftResNet-20 (SSL, expansion 6, L2 shift loss): lambda -> CIFAR-10 accuracy and
# shift sparsity, printed beside ours for orientation (different data, far shorter runs).
PAPER_TABLE1_SHIFTRESNET20 = {0.0: (91.7, 12.1), 1e-4: (91.1, 66.6), 4e-4: (90.4, 91.7), 5e-4: (89.8, 93.5)}
# Chen et al. 2019, Table 3: removed shift layers -> CIFAR-10 accuracy (ShiftResNet-20 SSL, lambda 0).
PAPER_TABLE3_SHIFTRESNET20 = {0: 91.7, 4: 91.5, 6: 91.4, 8: 89.4, 9: 81.5}

# ``train`` or a stand-in: called with the config, and ``resume=True`` to continue an interrupted run.
Trainer = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class ShiftRun:
    """One run of an ablation: its settings, accuracy and per-layer sparsity."""

    shift_lambda: float
    removed: tuple[str, ...]
    top1_acc: float
    sparsity: tuple[ShiftSparsityRow, ...]
    params: int
    mflops: float
    time_s: float
    run_dir: str

    @property
    def total_sparsity(self) -> float:
        return 100 * total_sparsity(self.sparsity).sparsity if self.sparsity else 100.0


def _run(config: TrainConfig, trainer: Trainer, **changes: Any) -> ShiftRun:
    config = dataclasses.replace(config, **changes)
    summary = finished_summary(config)
    if summary is None and checkpoint_matches(config):
        print(f"{config.run_dir()}: interrupted with these settings before, resuming it")
        summary = trainer(config, resume=True)
    elif summary is None:
        summary = trainer(config)
    else:
        print(f"{config.run_dir()}: finished with these settings before, reusing it")
    rows = tuple(ShiftSparsityRow(**row) for row in summary.get("shift_sparsity", []))
    return ShiftRun(
        shift_lambda=config.shift_lambda,
        removed=tuple(config.model_args.get("remove_shifts", ())),
        top1_acc=100 - summary["top1_err"],
        sparsity=rows,
        params=summary["params"],
        mflops=summary["mflops"],
        time_s=summary["time_s"],
        run_dir=summary["run_dir"],
    )


def lambda_sweep(
    config: TrainConfig, lambdas: Sequence[float], output: Path, *, trainer: Trainer = train
) -> list[ShiftRun]:
    """Train ``config`` once per shift-loss weight lambda (Chen et al. 2019, eq. 4 and Table 1), each run in
    ``output/lambda-<value>``; returns the runs in the order given."""
    if not lambdas:
        raise ValueError("give at least one lambda, e.g. 0 1e-4 4e-4 5e-4")
    return [
        _run(config, trainer, shift_lambda=value, output=str(Path(output) / f"lambda-{value:g}"))
        for value in lambdas
    ]


def least_important_shift_layers(rows: Sequence[ShiftSparsityRow], count: int) -> list[str]:
    """The ``count`` shift layers that shift the fewest channels (highest sparsity) in a run trained with
    the shift loss: the order in which Chen et al. 2019 (section 4.3) remove them (ties keep network
    order)."""
    if not 0 <= count <= len(rows):
        raise ValueError(f"can remove 0 to {len(rows)} shift layers, not {count}")
    ranked = sorted(range(len(rows)), key=lambda i: -rows[i].sparsity)
    return [rows[i].layer for i in sorted(ranked[:count])]


def removal_study(
    config: TrainConfig,
    ranking: Sequence[ShiftSparsityRow],
    counts: Sequence[int],
    output: Path,
    *,
    trainer: Trainer = train,
) -> list[ShiftRun]:
    """Chen et al. 2019, Table 3: for each count, train ``config`` with that many of the least important shift
    layers (by ``ranking``, a Table 2 from a run with the shift loss) replaced by identities."""
    runs = []
    for count in counts:
        removed = least_important_shift_layers(ranking, count)
        model_args = {**config.model_args, "remove_shifts": removed}
        runs.append(
            _run(config, trainer, model_args=model_args, output=str(Path(output) / f"removed-{count}"))
        )
    return runs


def sweep_table(runs: Sequence[ShiftRun], paper: dict[float, tuple[float, float]] | None = None) -> str:
    """Table 1 as Markdown: lambda, top-1 accuracy, shift sparsity (and the paper's, when given)."""
    headers = ["lambda", "top-1 acc %", "shift sparsity %", "params", "MFLOPs", "time (s)"]
    if paper:
        headers += ["paper acc %", "paper sparsity %"]
    body = []
    for run in runs:
        row = [
            f"{run.shift_lambda:g}",
            f"{run.top1_acc:.2f}",
            f"{run.total_sparsity:.1f}",
            f"{run.params:,}",
            f"{run.mflops:.2f}",
            f"{run.time_s:.0f}",
        ]
        if paper:
            reference = paper.get(run.shift_lambda)
            row += [f"{reference[0]}", f"{reference[1]}"] if reference else ["", ""]
        body.append(row)
    return markdown_table(headers, body)


def removal_table(runs: Sequence[ShiftRun], paper: dict[int, float] | None = None) -> str:
    """Table 3 as Markdown: removed shift layers, which ones, top-1 accuracy (and the paper's)."""
    headers = ["removed", "layers removed", "top-1 acc %", "shift sparsity %"]
    if paper:
        headers.append("paper acc %")
    body = []
    for run in runs:
        row = [str(len(run.removed)), ", ".join(run.removed) or "-", f"{run.top1_acc:.2f}"]
        row.append(f"{run.total_sparsity:.1f}")
        if paper:
            row.append(str(paper.get(len(run.removed), "")))
        body.append(row)
    return markdown_table(headers, body)


def sweep_report(config: TrainConfig, runs: Sequence[ShiftRun], environment_text: str) -> str:
    """The lambda sweep as Markdown: settings, ``environment_text`` (command, date, hardware), Table 1 beside
    the paper's column (ShiftResNet-20 only) and each run's per-layer sparsity in Table 2's format."""
    paper = PAPER_TABLE1_SHIFTRESNET20 if config.model.startswith("shiftresnet20") else None
    text = (
        f"# Shift-loss sweep (Chen et al. 2019, Table 1): {config.model}, {config.dataset}, {config.epochs} "
        f"epochs, {config.shift_norm} shift loss, shifts frozen at epoch {config.freeze_shifts_epoch}\n\n"
        f"{environment_text}\n\n{sweep_table(runs, paper)}\n"
    )
    for run in runs:
        text += f"\n## Per-layer sparsity, lambda {run.shift_lambda:g} (Table 2 format)\n\n"
        text += sparsity_table(run.sparsity) + "\n"
    return text


def removal_report(
    config: TrainConfig, ranking: Sequence[ShiftSparsityRow], runs: Sequence[ShiftRun], environment_text: str
) -> str:
    """The removal study as Markdown: the ranking (Table 2's format) and the accuracy after removing the
    least important layers beside the paper's Table 3 column (ShiftResNet-20 only)."""
    paper = PAPER_TABLE3_SHIFTRESNET20 if config.model.startswith("shiftresnet20") else None
    return (
        f"# Removing the least important shift layers (Chen et al. 2019, Tables 2-3): {config.model}, "
        f"{config.dataset}, {config.epochs} epochs, lambda {config.shift_lambda:g}\n\n"
        f"{environment_text}\n\n"
        f"## Ranking (Table 2 format)\n\n{sparsity_table(ranking)}\n\n"
        f"## Accuracy after removal (Table 3 format)\n\n{removal_table(runs, paper)}\n"
    )


def ranking_from_run(run_dir: Path) -> list[ShiftSparsityRow]:
    """The per-layer shift sparsity a finished run recorded in its summary.json: the ranking of a removal
    study taken from an earlier run instead of a new one."""
    summary_path = Path(run_dir) / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; --ranking takes the directory of a finished run")
    rows = json.loads(summary_path.read_text()).get("shift_sparsity")
    if not rows:
        raise ValueError(f"{summary_path} has no shift sparsity; rank with a run of a model with SSL layers")
    return [ShiftSparsityRow(**row) for row in rows]


def write_report(
    output: Path, name: str, markdown: str, runs: Sequence[ShiftRun], context: dict[str, Any] | None = None
) -> None:
    """``output/name.md`` and ``output/name.json`` (``context``, e.g. command, date and hardware, and every
    run with its per-layer sparsity under "runs"), atomically."""
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / f"{name}.md", lambda f: f.write(markdown.encode()))
    records = [{**dataclasses.asdict(run), "total_sparsity": run.total_sparsity} for run in runs]
    text = json.dumps({**(context or {}), "runs": records}, indent=2) + "\n"
    atomic_write(output / f"{name}.json", lambda f: f.write(text.encode()))
