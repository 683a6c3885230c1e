"""Latency measurement shared by the deploy path and the benchmarks: median and 90th percentile of repeated
calls, interleaved passes over several calls, and the eager timer that :func:`shufflenet.deploy.optimize`
uses by default to choose between equivalent graphs."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


def median_seconds(call: Callable[[], object], *, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, 90th percentile) seconds of ``call`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.percentile(times, 90))


def eager_timer(module: nn.Module, example: torch.Tensor, *, repeats: int = 20) -> float:
    """Median seconds of ``module(example)`` in eager PyTorch after two warm-up calls."""
    with torch.inference_mode():
        return median_seconds(lambda: module(example), warmup=2, repeats=repeats)[0]


def wait_until_quiet(
    *, window: float = 0.005, busy_share: float = 0.2, quiet_windows: int = 2, limit: float = 2.0
) -> float:
    """Sleep in ``window``-long steps until this process's threads used less than ``busy_share`` of one
    core in ``quiet_windows`` steps in a row (or ``limit`` seconds passed); the seconds waited. A runtime's
    worker threads spin on after its call returns (ONNX Runtime's pool, OpenMP's wait policy) for a number
    of spins, not a time: while something else runs on the same cores the spinning lasts longer (measured:
    ONNX Runtime at 2 threads on 2 cores past 50 ms). Several quiet steps, not one: a spinning thread that
    another process starves of its core for one step looks idle for that step."""
    began = time.perf_counter()
    quiet = 0
    while quiet < quiet_windows and time.perf_counter() - began < limit:
        used, start = time.process_time(), time.perf_counter()
        time.sleep(window)
        busy = (time.process_time() - used) / (time.perf_counter() - start)
        quiet = quiet + 1 if busy < busy_share else 0
    return time.perf_counter() - began


def interleaved_seconds(
    calls: Sequence[Callable[[], object]],
    *,
    passes: int,
    warmup: int,
    rewarm: int = 0,
    rewarm_seconds: float = 0.0,
    quiet: bool = False,
    progress: bool = False,
) -> list[list[float]]:
    """Seconds of each call in each of ``passes`` passes, after ``warmup`` calls of each. Every pass calls
    every one once, in a fresh random order (seeded), so drift in the machine's speed lands on all alike.
    With ``rewarm`` > 0, each timed call follows that many untimed calls of the same one: its weights are
    back in cache, as when it runs back to back (steady state), rather than evicted by the call before.
    With ``rewarm_seconds`` > 0, those untimed calls go on until that long has passed: a multi-threaded
    runtime leaves its worker threads spinning for tens of milliseconds after it returns (ONNX Runtime's
    pool, OpenMP's wait policy), and on a machine with few cores they take a core from whatever runs next;
    calls of the next one itself, not an idle pause (which lets the cores drop into a slow, cold state),
    outlast them. With ``quiet``, each cell first waits until no thread of the process is busy
    (:func:`wait_until_quiet`, for at most 2 s), then warms up again for ``rewarm_seconds``: the previous
    cell's threads have stopped spinning before the next is timed."""
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    shuffler = random.Random(0)
    rounds = range(passes)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc="passes", unit="pass")
    for _ in rounds:
        shuffler.shuffle(order)
        for index in order:
            if quiet:
                wait_until_quiet()
            began = time.perf_counter()
            repeated = 0
            while repeated < rewarm or time.perf_counter() - began < rewarm_seconds:
                calls[index]()
                repeated += 1
            start = time.perf_counter()
            calls[index]()
            times[index].append(time.perf_counter() - start)
    return times
