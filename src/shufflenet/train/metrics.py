"""Metrics: top-k counts, confusion matrices, the metrics log (CSV/JSON), TensorBoard, plots and summaries.

Error fields (``*_top1_err``, ``*_top5_err``) are percentages (0-100), like ``paper_top1_err`` in the
model cards.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from shufflenet._system import atomic_write
from shufflenet._table import markdown_table

# --- Top-k and confusion matrix ------------------------------------------------------------------------


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many samples have their target among the ``k`` highest logits, for each ``k`` in ``ks``.

    ``logits`` is (N, C), ``targets`` (N,) class indices. A ``k`` above C counts as C (every sample is
    correct), so a 5-class problem still reports a "top-5". Keys are the ``ks`` as given.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, C) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    num_classes = logits.shape[1]
    top = logits.topk(min(max(ks), num_classes), dim=1).indices
    hits = top == targets.unsqueeze(1)
    return {k: int(hits[:, : min(k, num_classes)].any(dim=1).sum()) for k in ks}


class ConfusionMatrix:
    """Counts of (true class, predicted class) pairs: ``matrix[t, p]``, rows are true classes.

    ``matrix`` is a plain int64 tensor on ``device``; under DDP, ``dist.all_reduce(cm.matrix)`` sums the
    ranks' counts in place (put it on the GPU for NCCL).
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, logits_or_preds: Tensor, targets: Tensor) -> None:
        """Add a batch: (N, C) logits (their argmax is the prediction) or (N,) predicted indices."""
        preds = logits_or_preds.argmax(dim=1) if logits_or_preds.dim() == 2 else logits_or_preds
        if preds.shape != targets.shape or preds.dim() != 1:
            raise ValueError(
                f"expected (N, C) logits or (N,) predictions and (N,) targets, "
                f"got {tuple(logits_or_preds.shape)} and {tuple(targets.shape)}"
            )
        if logits_or_preds.dim() == 2 and logits_or_preds.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits_or_preds.shape[1]} classes, expected {self.num_classes}")
        preds, targets = preds.long(), targets.long()
        # bincount would silently grow (or fail on negatives) with bad indices: corrupt counts are worse
        # than a clear error.
        indices = torch.cat([preds, targets])
        if bool(((indices < 0) | (indices >= self.num_classes)).any()):
            raise ValueError(f"class indices must lie in [0, {self.num_classes})")
        counts = torch.bincount(targets * self.num_classes + preds, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes).to(self.matrix.device)

    def merge(self, other: ConfusionMatrix | Tensor) -> None:
        """Add another matrix's counts (e.g. one gathered from another rank)."""
        counts = other.matrix if isinstance(other, ConfusionMatrix) else other
        if counts.shape != self.matrix.shape:
            raise ValueError(f"cannot merge a {tuple(counts.shape)} matrix into {tuple(self.matrix.shape)}")
        self.matrix += counts.to(device=self.matrix.device, dtype=torch.int64)

    def reset(self) -> None:
        """Zero the counts (e.g. before the next evaluation)."""
        self.matrix.zero_()

    def per_class_accuracy(self) -> list[float]:
        """Correct / total for each true class; NaN for a class with no samples."""
        matrix = self.matrix.cpu()
        totals = matrix.sum(dim=1).tolist()
        return [c / t if t else math.nan for c, t in zip(matrix.diagonal().tolist(), totals, strict=True)]

    def accuracy(self) -> float:
        """Overall fraction correct; NaN before any sample."""
        total = int(self.matrix.sum())
        return int(self.matrix.trace()) / total if total else math.nan


# --- Metrics log ---------------------------------------------------------------------------------------


def _plain(key: object, value: object) -> bool | int | float | str | None:
    # Only what torch.load(weights_only=True) and JSON both accept may enter the log.
    if not isinstance(key, str):
        raise TypeError(f"metric names must be strings, got {key!r}")
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {key!r} is a tensor of shape {tuple(value.shape)}, expected one value")
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"metric {key!r} must be a number, string or None, got {type(value).__name__}")


class MetricsLog:
    """The run's history: one row dict per logged point (epoch, step, losses, errors, lr, speed, ...).

    Rows may have different keys. The log lives in the checkpoint (:meth:`state_dict`) and :meth:`write`
    rewrites the files from it, so after a resume they hold exactly the checkpoint's rows plus new ones.
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def append(self, row: Mapping[str, object]) -> None:
        """Add a row; 0-d tensors and NumPy scalars become plain Python numbers."""
        self._rows.append({key: _plain(key, value) for key, value in row.items()})

    @property
    def rows(self) -> list[dict[str, Any]]:
        """A copy of the rows, oldest first."""
        return [dict(row) for row in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def state_dict(self) -> dict[str, Any]:
        """The history as plain lists, dicts, numbers and strings (loads with ``weights_only=True``)."""
        return {"rows": self.rows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history with one from :meth:`state_dict`."""
        rows = state["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, Mapping) for row in rows):
            raise ValueError("a MetricsLog state holds 'rows': a list of dicts")
        self._rows = []
        for row in rows:
            self.append(row)

    def columns(self) -> list[str]:
        """Every key of every row, in first-seen order."""
        return list(dict.fromkeys(key for row in self._rows for key in row))

    def write(self, run_dir: str | Path) -> tuple[Path, Path]:
        """(Re)write ``metrics.csv`` and ``metrics.json`` in ``run_dir`` from the whole history, atomically.

        Each file is replaced whole, but the two are not replaced together. In the CSV a missing value is an
        empty cell; in the JSON (a list of row objects) NaN and infinities become ``null``, since strict JSON
        has no such numbers.
        """
        run_dir = Path(run_dir)
        columns = self.columns()
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        csv_bytes = text.getvalue().encode("utf-8")
        rows = [{key: _json_safe(value) for key, value in row.items()} for row in self._rows]
        json_bytes = (json.dumps(rows, indent=2, allow_nan=False) + "\n").encode("utf-8")

        csv_path, json_path = run_dir / "metrics.csv", run_dir / "metrics.json"
        atomic_write(csv_path, lambda f: f.write(csv_bytes))
        atomic_write(json_path, lambda f: f.write(json_bytes))
        return csv_path, json_path


def _json_safe(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# --- TensorBoard ---------------------------------------------------------------------------------------

_TAG_PREFIXES = ("train_", "val_", "test_")


def _tag(key: str) -> str:
    # "val_top1_err" -> "val/top1_err": TensorBoard groups charts by the part before the slash.
    for prefix in _TAG_PREFIXES:
        if key.startswith(prefix):
            return prefix[:-1] + "/" + key[len(prefix) :]
    return key


class TensorBoardWriter:
    """A ``SummaryWriter`` for one run, or a no-op when ``enabled`` is false (non-zero ranks)."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self._writer = None
        if enabled:
            # Imported here: TensorBoard is slow to import and unused on most ranks.
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))

    def add_scalars(self, row: Mapping[str, object], step: int) -> None:
        """Write each numeric field of ``row`` at ``step``: "train/loss", "val/top1_err", "lr", ...

        Strings, None, booleans and the ``step`` field itself (it is the x axis) are skipped.
        """
        if self._writer is None:
            return
        for key, value in row.items():
            if key == "step" or isinstance(value, (bool, str)) or value is None:
                continue
            if isinstance(value, Tensor):
                value = value.item()
            if isinstance(value, numbers.Real):
                self._writer.add_scalar(_tag(key), float(value), global_step=step)

    def flush(self) -> None:
        """Push pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; later calls do nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Plots ---------------------------------------------------------------------------------------------


def _save_png(fig: Any, path: str | Path) -> Path:
    # The Agg canvas renders without pyplot, so no display is needed and the caller's backend is untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def _series(rows: Iterable[Mapping[str, object]], key: str) -> tuple[list[float], list[float]]:
    # Rows without the key (e.g. train-only rows for val_loss) or without an epoch are not points.
    xs, ys = [], []
    for row in rows:
        epoch, value = row.get("epoch"), row.get(key)
        if (
            isinstance(epoch, numbers.Real)
            and isinstance(value, numbers.Real)
            and not isinstance(value, bool)
        ):
            xs.append(float(epoch))
            ys.append(float(value))
    return xs, ys


def plot_learning_curves(rows: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """A PNG of loss and top-1 error % (train and val) against epoch, from :class:`MetricsLog` rows.

    ``train_loss`` and ``val_loss`` are both plain cross-entropy, so they compare; the optimized objective
    (``train_objective``: label smoothing, shift penalty), where it differs, is drawn dashed beside them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    panels = [("loss", "Loss", "loss"), ("top1_err", "Top-1 error", "top-1 error (%)")]
    for ax, (metric, title, ylabel) in zip(fig.subplots(1, 2), panels, strict=True):
        for split in ("train", "val"):
            xs, ys = _series(rows, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=split)
        if metric == "loss":
            xs, ys = _series(rows, "train_objective")
            if xs and ys != _series(rows, "train_loss")[1]:
                ax.plot(xs, ys, linestyle="--", color="gray", label="train objective")
            if ax.get_legend_handles_labels()[0]:
                # Early evaluations, before BN's running statistics settle, can sit 100x above the rest.
                ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    return _save_png(fig, path)


def plot_confusion_matrix(
    matrix: Tensor, class_names: Sequence[str], path: str | Path, normalize: bool = True
) -> Path:
    """A PNG heat map of a confusion matrix (rows true, columns predicted), titled with overall accuracy.

    ``normalize`` divides each row by its class's sample count, so the diagonal is per-class accuracy.
    Cells are annotated up to 20 classes; class names label the axes up to 50.
    """
    from matplotlib.figure import Figure

    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"a {tuple(matrix.shape)} matrix does not match {n} class names")
    counts = matrix.detach().cpu().double()
    total = counts.sum().item()
    accuracy = f"{100 * counts.trace().item() / total:.2f}%" if total else "n/a"
    values = counts / counts.sum(dim=1, keepdim=True).clamp(min=1) if normalize else counts

    side = min(max(5.0, 0.45 * n + 3), 24.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, label="fraction of true class" if normalize else "samples")
    ax.set_title(f"Confusion matrix{' (normalized)' if normalize else ''}, accuracy {accuracy}")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 50:
        ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), labels=list(class_names))
    if n <= 20:
        threshold = 0.5 * float(values.max()) if values.numel() else 0.0
        for i, row in enumerate(values.tolist()):
            for j, value in enumerate(row):
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                color = "white" if value > threshold else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    return _save_png(fig, path)


# --- Summary table -------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """Seconds as "45s", "12m 03s" or "3h 04m 05s"."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _fmt(value: object, spec: str) -> str:
    return "" if value is None else format(value, spec)


def summary_table(rows: Sequence[Mapping[str, object]]) -> str:
    """A Markdown table of finished runs, one per row dict.

    Keys read: ``model``, ``params`` (a count), ``mflops``, ``top1_err`` and ``top5_err`` (%), ``time_s``
    and ``images_per_s``; a missing one leaves its cell empty.
    """
    headers = ["model", "params (M)", "MFLOPs", "top-1 err %", "top-5 err %", "time", "images/s"]
    table = []
    for row in rows:
        params, time_s = row.get("params"), row.get("time_s")
        table.append(
            [
                row.get("model", ""),
                "" if params is None else f"{params / 1e6:.3f}",
                _fmt(row.get("mflops"), ".1f"),
                _fmt(row.get("top1_err"), ".2f"),
                _fmt(row.get("top5_err"), ".2f"),
                "" if time_s is None else format_duration(time_s),
                _fmt(row.get("images_per_s"), ",.0f"),
            ]
        )
    return markdown_table(headers, table)
