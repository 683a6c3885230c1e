"""Benchmark records: every result file carries the command, date, hardware and library versions."""

from __future__ import annotations

import csv
import datetime
import io
import json
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from shufflenet._system import atomic_write, cpu_info, usable_cores

VERSIONED_PACKAGES = ("torch", "torchvision", "onnxruntime", "openvino", "onnx", "numpy")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    return cpu_info().get("model name") or platform.processor() or "unknown"


def vector_extensions() -> str:
    """The SIMD extensions that decide CPU kernel speed (AVX2, AVX-512, VNNI, AMX), from /proc/cpuinfo."""
    info = cpu_info()
    if "flags" not in info:
        return "unknown"
    flags = info["flags"].split()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
    return " ".join(flag for flag in wanted if flag in flags) or "none of AVX2/AVX-512"


def environment(command: Sequence[str]) -> dict[str, Any]:
    """Command line, UTC date, hardware and the versions of the libraries that affect the numbers."""
    import torch

    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "command": " ".join(shlex.quote(part) for part in command),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": vector_extensions(),
        "cpu_cores": usable_cores(),
        "gpu": gpu,
        "versions": versions,
    }


def environment_markdown(env: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    lines = [
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- hardware: {env['cpu']} ({env.get('cpu_flags', '')}), {env['cpu_cores']} cores"
        + (f"; GPU {env['gpu']}" if env["gpu"] else ""),
        f"- versions: {versions}",
    ]
    return "\n".join(lines)


def write_record(
    folder: Path, stem: str, title: str, body: str, rows: Sequence[dict], env: dict
) -> dict[str, Path]:
    """Write ``stem``.md (title, environment, body), ``stem``.csv (rows) and ``stem``.json (environment
    and rows) into ``folder``, each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown = f"# {title}\n\n{environment_markdown(env)}\n\n{body.rstrip()}\n"
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    document = json.dumps({**env, "rows": list(rows)}, indent=2, default=str) + "\n"
    paths = {"md": folder / f"{stem}.md", "csv": folder / f"{stem}.csv", "json": folder / f"{stem}.json"}
    for key, text in (("md", markdown), ("csv", buffer.getvalue()), ("json", document)):
        atomic_write(paths[key], lambda handle, text=text: handle.write(text.encode("utf-8")))
    return paths


def script_command(argv: Sequence[str] | None = None) -> list[str]:
    """The command line of the benchmark script running: its path and ``argv`` (``sys.argv``'s if None)."""
    return [Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]


def save_record(
    folder: Path, stem: str, title: str, body: str, rows: Sequence[dict], argv: Sequence[str] | None = None
) -> dict[str, Path]:
    """:func:`write_record` with the environment of :func:`script_command`, then where it went (the script
    prints its body itself, with or without a record)."""
    written = write_record(folder, stem, title, body, rows, environment(script_command(argv)))
    print(f"wrote {written['md']}")
    return written


def publish_record(folder: Path, stem: str, title: str, body: str, rows: Sequence[dict]) -> dict[str, Path]:
    """A benchmark script's record: :func:`write_record` with the environment of this command line
    (``python`` and ``sys.argv``), the body printed, then where it went."""
    written = write_record(folder, stem, title, body, rows, environment(["python", *sys.argv]))
    print(body)
    print(f"wrote {written['md']}")
    return written


def format_ratio(what: str, value: float, reading: str, *, bold: bool = False) -> str:
    """One headline comparison as a Markdown list item: what, the ratio, and how to read it."""
    number = f"**{value:.2f}**" if bold else f"{value:.2f}"
    return f"- {what}: {number} ({reading})"


def write_latency_results(
    cells: Sequence, table: str, ratios: Sequence[tuple[str, float | None, str]], folder: Path, *, command
) -> dict[str, Path]:
    """The latency benchmark's record: the table, the headline comparisons, every cell."""
    ratio_lines = "\n".join(format_ratio(*ratio, bold=True) for ratio in ratios)
    batches = ", ".join(str(size) for size in sorted({cell.batch for cell in cells}))
    body = f"median ms (p90 ms) per batch of {batches}\n\n{table}\n\n## Ratios\n\n{ratio_lines}\n"
    rows = [{key: value for key, value in asdict(cell).items() if key != "extra"} for cell in cells]
    return write_record(
        folder, "latency", "Latency: ours beside the usual runtimes", body, rows, environment(command)
    )


def report_latency(
    cells: Sequence,
    table: str,
    ratios: Sequence[tuple[str, float | None, str]],
    output: Path | None,
    *,
    command: Sequence[str],
) -> None:
    """Print a latency benchmark's table, the cells that failed (and why) and its ratios; with ``output``,
    also write its record there (:func:`write_latency_results`)."""
    print(table)
    for cell in cells:
        if cell.error:
            print(f"- {cell.model} on {cell.runtime}, {cell.threads} thread(s): {cell.error}")
    for ratio in ratios:
        print(format_ratio(*ratio))
    if output:
        for path in write_latency_results(cells, table, ratios, output, command=command).values():
            print(f"wrote {path}")
