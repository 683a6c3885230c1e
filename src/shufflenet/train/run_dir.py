"""Run directories: checked before anything is built, held by one run at a time (a lock file), and never
silently reused: an earlier run in one is continued (``--resume``) or replaced on request (``--overwrite``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from shufflenet.train.checkpoint import load_checkpoint

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"
# What a run writes; --overwrite removes these (and nothing else: --output may name a folder of other files).
RUN_FILES = (
    CHECKPOINT_NAME,
    "summary.json",
    "metrics.csv",
    "metrics.json",
    "learning_curves.png",
    "confusion_matrix.png",
    "model.safetensors",
    "model.json",
    "shift_sparsity.md",
)
RUN_FOLDERS = ("tensorboard",)


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked: a one-line message (the CLI exits with status 2)."""


def check_output(run_dir: Path) -> None:
    """Refuse a run directory that is a file or cannot be created; create it otherwise."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} is a file, not a run directory; choose another --output")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
        raise RunDirectoryError(f"cannot create {run_dir}: {reason}; choose another --output") from None


def previous_run(run_dir: Path) -> str | None:
    """How far the run already in ``run_dir`` got ("step 8 of 12", "finished, step 12 of 12"), or None if
    the directory holds no run (neither a checkpoint nor a summary)."""
    summary, checkpoint = run_dir / "summary.json", run_dir / CHECKPOINT_NAME
    if summary.is_file():
        try:
            steps = json.loads(summary.read_text())["steps"]
        except (OSError, ValueError, KeyError, TypeError):
            return "finished"
        return f"finished, step {steps} of {steps}"
    if not checkpoint.is_file():
        return None
    try:
        state = load_checkpoint(checkpoint)
    except (OSError, ValueError):  # CheckpointError is a ValueError
        return "with a checkpoint that cannot be read"
    total = state.get("total_steps")  # checkpoints written before it was recorded lack it
    return f"step {state.get('step')} of {total}" if total else f"step {state.get('step')}"


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote to ``run_dir``, so that no file of it mixes with the new run's."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    """The lock's holder ({"pid", "host", "since"}), or None if the file is gone, empty or garbled."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or holder["pid"] < 1:
        return None
    return holder


def acquire_lock(run_dir: Path) -> str:
    """Create ``run_dir/.lock`` for this process, or refuse with the holder's pid, host and start time.

    A lock left by a process no longer alive on this host is taken over with a note. Returns the lock's
    contents, which :func:`release_lock` checks before removing it."""
    path = run_dir / LOCK_NAME
    host = socket.gethostname()
    since = datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
    token = json.dumps({"pid": os.getpid(), "host": host, "since": since})
    for _ in range(2):  # a second try after taking over a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            if holder is None:
                raise RunDirectoryError(
                    f"{run_dir} is in use (its lock cannot be read); if no run is using it, delete {path}"
                ) from None
            here = holder.get("host") == host
            if not here or _pid_alive(holder["pid"]):
                # Another host's process cannot be checked from here: only its owner can tell it is gone.
                gone = "" if here else f"; if it is no longer running, delete {path}"
                raise RunDirectoryError(
                    f"{run_dir} is in use by pid {holder['pid']} on host {holder.get('host')} since "
                    f"{holder.get('since')}; wait for it or choose another --output{gone}"
                ) from None
            print(
                f"note: taking over {path}: pid {holder['pid']}, which held it since {holder.get('since')}, "
                "is no longer running",
                file=sys.stderr,
            )
            path.unlink(missing_ok=True)
            continue
        except OSError as error:  # read-only file system, no permission
            reason = error.strerror or str(error)
            raise RunDirectoryError(f"cannot write to {run_dir}: {reason}; choose another --output") from None
        with os.fdopen(fd, "w") as file:
            file.write(token)
        return token
    raise RunDirectoryError(f"{run_dir} is in use by another run that just started; choose another --output")


def release_lock(run_dir: Path, token: str) -> None:
    """Remove ``run_dir/.lock`` if it is still the one :func:`acquire_lock` returned ``token`` for."""
    path = run_dir / LOCK_NAME
    with contextlib.suppress(OSError):
        if path.read_text() == token:
            path.unlink()


@contextlib.contextmanager
def hold_run_directory(run_dir: Path, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """Check, lock and (on ``overwrite``) clear ``run_dir`` for one run; the lock is released on leaving,
    however the run ends. Without ``resume`` or ``overwrite`` an earlier run there is refused."""
    if resume and overwrite:
        raise RunDirectoryError("--resume continues the run and --overwrite replaces it; choose one")
    check_output(run_dir)
    token = acquire_lock(run_dir)  # before looking at the run: a run in progress is "in use", not "exists"
    try:
        if not resume:
            found = previous_run(run_dir)
            if found is not None and not overwrite:
                how = "--output for a new run"
                if not found.startswith("finished"):
                    how = "--resume to continue, " + how
                raise RunDirectoryError(f"{run_dir} exists ({found}); {how}, or --overwrite")
            if overwrite:
                clear_run(run_dir)
        yield
    finally:
        release_lock(run_dir, token)
