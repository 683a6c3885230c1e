"""Training throughput on synthetic batches: images/s of full SGD steps, eager and torch.compile.

Random images and labels stand in for data, so the figure is the model's own step cost (forward, cross-
entropy, backward, SGD with momentum), with no data loading in it.
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from shufflenet._system import torch_threads
from shufflenet._table import markdown_table
from shufflenet.registry import create_model

MODES = ("eager", "compiled")


def _max_rss_mib() -> float:
    # ru_maxrss is KiB on Linux and bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _first_line(error: Exception) -> str:
    # Compiler errors run to pages; the first line names the problem.
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _measure(
    name: str,
    mode: str,
    *,
    batch_size: int,
    image_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    amp: bool,
    channels_last: bool,
    num_classes: int,
    in_chans: int,
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _max_rss_mib()

    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    model = model.to(device, memory_format=memory_format)
    model.train()
    # lr is small so that random labels never drive the weights to inf/NaN mid-measurement.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch_size, in_chans, image_size, image_size, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    step_model = torch.compile(model) if mode == "compiled" else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(step_model(images), labels)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(device)

    # The warm-up steps carry torch.compile's tracing and code generation; they are timed apart.
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak_mib = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _max_rss_mib() - rss_before
    return {
        "images_per_s": batch_size / step_s,
        "step_ms": step_s * 1e3,
        "warmup_s": warmup_s,
        "peak_mem_mib": peak_mib,
    }


def train_throughput(
    model_names: Sequence[str],
    *,
    batch_size: int = 64,
    image_size: int = 224,
    steps: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    modes: Sequence[str] = MODES,
    amp: bool = False,
    channels_last: bool = False,
    num_classes: int = 1000,
    in_chans: int = 3,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Images/s of training steps (SGD momentum 0.9, cross-entropy) on random batches, one row per model
    and mode ("eager" or "compiled" = ``torch.compile(model)``).

    images/s is ``batch_size`` over the median of ``steps`` timed steps, after ``warmup`` steps whose total
    time is reported apart as ``warmup_s`` (in compiled mode it is mostly compilation). ``amp`` is bf16
    autocast and applies on CUDA only (the row records what was used). Peak memory is
    ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the growth of the process's peak RSS
    (``ru_maxrss``), a process-wide high-water mark: a run that stays under an earlier peak shows 0.
    A mode that fails (e.g. compilation unsupported here) gives a row with ``error`` set instead of raising.
    """
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; valid: {list(MODES)}")
    if warmup < 1 or steps < 1:
        # Compilation must fall in the warm-up, never in the timed steps.
        raise ValueError(f"warmup and steps must be at least 1, got warmup={warmup}, steps={steps}")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use device='cpu'")
    use_amp = amp and target.type == "cuda"
    rows = []
    with torch_threads(threads):
        for name in model_names:
            for mode in modes:
                row: dict[str, Any] = {
                    "model": name,
                    "mode": mode,
                    "device": str(target),
                    "batch_size": batch_size,
                    "image_size": image_size,
                    "amp": use_amp,
                    "channels_last": channels_last,
                    "threads": torch.get_num_threads(),
                    "images_per_s": None,
                    "step_ms": None,
                    "warmup_s": None,
                    "peak_mem_mib": None,
                    "error": None,
                }
                try:
                    row.update(
                        _measure(
                            name,
                            mode,
                            batch_size=batch_size,
                            image_size=image_size,
                            steps=steps,
                            warmup=warmup,
                            device=target,
                            amp=use_amp,
                            channels_last=channels_last,
                            num_classes=num_classes,
                            in_chans=in_chans,
                        )
                    )
                except Exception as error:  # one failing mode must not lose the others
                    row["error"] = _first_line(error)
                finally:
                    if mode == "compiled":
                        torch.compiler.reset()  # compiled graphs of one model must not count against the next
                rows.append(row)
    return rows


def train_throughput_report(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`train_throughput` rows."""
    headers = ["model", "mode", "device", "batch", "size", "amp", "channels_last", "images/s", "step ms"]
    headers += ["warm-up s", "peak MiB", "error"]

    def number(value: float | None, digits: int) -> str | None:
        return None if value is None else f"{value:.{digits}f}"

    table = [
        [
            row["model"],
            row["mode"],
            row["device"],
            row["batch_size"],
            row["image_size"],
            "bf16" if row["amp"] else "no",
            "yes" if row["channels_last"] else "no",
            number(row["images_per_s"], 1),
            number(row["step_ms"], 1),
            number(row["warmup_s"], 2),
            number(row["peak_mem_mib"], 0),
            row["error"],
        ]
        for row in rows
    ]
    return markdown_table(headers, table)
