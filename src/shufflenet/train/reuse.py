"""Reusing finished runs: an experiment made of many training runs trains only what is missing when it is
run again, and resumes the runs it was interrupted in."""

from __future__ import annotations

import json
from typing import Any

from shufflenet.train.checkpoint import load_checkpoint
from shufflenet.train.config import TrainConfig
from shufflenet.train.engine import CHECKPOINT_NAME

# Settings that change how or where a run reports, or where it found its data, not what it learns: a
# finished run differing only here is reused (a folder moved, the data read from elsewhere, another device).
NOT_LEARNED = ("progress", "log_every", "checkpoint_every", "output", "data_dir", "device", "num_workers")


def settings_differing(config: TrainConfig) -> list[str]:
    """The learned settings in which the checkpoint in ``config``'s run folder differs from ``config``
    ("lr 0.1 -> 0.05"); empty when they agree or there is no checkpoint."""
    checkpoint_path = config.run_dir() / CHECKPOINT_NAME
    if not checkpoint_path.is_file():
        return []
    saved = load_checkpoint(checkpoint_path)["config"]
    wanted = config.to_dict()
    return [
        f"{key} {saved.get(key)!r} -> {value!r}"
        for key, value in wanted.items()
        if key not in NOT_LEARNED and saved.get(key) != value
    ]


def checkpoint_matches(config: TrainConfig) -> bool:
    """Whether the run directory of ``config`` holds a checkpoint of exactly these learned settings."""
    return (config.run_dir() / CHECKPOINT_NAME).is_file() and not settings_differing(config)


def finished_summary(config: TrainConfig) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``config`` in its run directory, or None."""
    summary_path = config.run_dir() / "summary.json"
    if not (summary_path.is_file() and checkpoint_matches(config)):
        return None
    return json.loads(summary_path.read_text())
