"""Machine and file-system utilities shared across the package: atomic writes, a lock between processes, the
cache folder, the CPU's /proc/cpuinfo fields, its usable cores, and PyTorch's thread count. A leaf: it
imports nothing from shufflenet, so any layer may use it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import torch


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` so that it holds either the old contents or the new ones."""
    # A crash mid-write must leave the previous file whole: write a sibling temp file (same filesystem,
    # so os.replace is atomic), make it durable, then swap it in.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":
        # Persist the rename itself; Windows cannot open a directory for fsync.
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if missing) between processes of this machine: one
    of several runs started at once makes a shared file while the others wait for it."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir() -> Path:
    """The package's cache folder: ``$SHUFFLENET_CACHE``, default ``~/.cache/shufflenet`` (not created)."""
    return Path(os.environ.get("SHUFFLENET_CACHE", "~/.cache/shufflenet")).expanduser()


def cpu_info() -> dict[str, str]:
    """The ``name: value`` fields of /proc/cpuinfo (e.g. ``"model name"``, ``"flags"``), each as the first
    processor that has it gives it; empty where the file cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip(), value.strip())
    return fields


def usable_cores() -> int:
    """All cores this process may use (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``threads`` inside the block (``None``: left as it is), the
    caller's restored after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
