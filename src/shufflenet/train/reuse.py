"""Reusing finished runs: an experiment made of many training runs trains only what is missing when it is
run again, and resumes the runs it was interrupted in."""

from __future__ import annotations

import json
from typing import Any

from shufflenet.train.checkpoint import load_checkpoint
from shufflenet.train.config import TrainConfig
from shufflenet.train.engine import CHECKPOINT_NAME

# Settings that change how a run reports, not what it learns: a finished run differing only here is reused.
REPORTING_ONLY = ("progress", "log_every", "checkpoint_every")


def checkpoint_matches(config: TrainConfig) -> bool:
    """Whether the run directory of ``config`` holds a checkpoint of exactly these settings."""
    checkpoint_path = config.run_dir() / CHECKPOINT_NAME
    if not checkpoint_path.is_file():
        return False
    saved = load_checkpoint(checkpoint_path)["config"]
    wanted = config.to_dict()
    return all(saved.get(key) == value for key, value in wanted.items() if key not in REPORTING_ONLY)


def finished_summary(config: TrainConfig) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``config`` in its run directory, or None."""
    summary_path = config.run_dir() / "summary.json"
    if not (summary_path.is_file() and checkpoint_matches(config)):
        return None
    return json.loads(summary_path.read_text())
