"""Export every registered model in every format and verify it (ONNX, OpenVINO IR, torch.export).

    python benchmarks/export_all.py                    # all models, all formats, 224x224
    python benchmarks/export_all.py --formats onnx --models 'shufflenet_v2_*'
    python benchmarks/export_all.py --output benchmarks/results/zen3-avx2   # one folder per machine

Each export is the deploy graph (BN and shuffles folded), loaded back from the written file and compared
with the eager model on random inputs and on real images (Fashion-MNIST test images resized to 224x224,
three channels) where the Fashion-MNIST files are found. Random weights with non-trivial BN statistics
(measured on random and those real inputs) and a classifier scaled to give O(1) logits (no pretrained
weights are reachable here).
Writes export_all.{md,csv,json} into --output (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from shufflenet import create_model, list_models
from shufflenet._table import markdown_table
from shufflenet._testing import trained_looking
from shufflenet.bench.report import publish_record
from shufflenet.deploy.export import FORMATS, ExportError, adapt_images, export_model

RESULTS = Path(__file__).resolve().parent / "results"


def real_images(size: tuple[int, int]) -> torch.Tensor | None:
    try:
        from shufflenet.data import build_dataset

        test = build_dataset("fashion-mnist", "val", download=False)
    except (FileNotFoundError, ValueError, RuntimeError):
        return None
    return adapt_images(torch.stack([test[index][0] for index in range(4)]), 3, size)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="*", help="shell-style pattern (default: all)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help="folder for export_all.md/.csv/.json (default: %(default)s)",
    )
    args = parser.parse_args()
    size = (args.size, args.size)
    real = real_images(size)
    rows = []
    jobs = [(name, fmt) for name in list_models(args.models) for fmt in args.formats]
    with tempfile.TemporaryDirectory() as folder:
        for name, fmt in tqdm(jobs, desc="export", unit="export"):
            torch.manual_seed(0)
            # O(1) logits on random and real inputs, so that an absolute tolerance of 1e-4 means something
            model = trained_looking(create_model(name), size, images=real)
            row = {"model": name, "format": fmt}
            try:
                report = export_model(
                    model, Path(folder) / name, fmt, input_size=size, real_inputs=real, latency_repeats=10
                )
                row.update(
                    random_diff=report.max_abs_diff_random,
                    real_diff=report.max_abs_diff_real,
                    latency_ms=round(report.latency_ms, 2),
                    eager_ms=round(report.eager_latency_ms, 2),
                    verified=report.passed,
                    error="",
                )
            except ExportError as error:
                row.update(
                    random_diff=None,
                    real_diff=None,
                    latency_ms=None,
                    eager_ms=None,
                    verified=False,
                    error=str(error),
                )
            rows.append(row)
    table = markdown_table(
        ["model", "format", "max diff (random)", "max diff (real)", "exported ms", "eager ms", "verified"],
        [
            [
                r["model"],
                r["format"],
                "" if r["random_diff"] is None else f"{r['random_diff']:.1e}",
                "" if r["real_diff"] is None else f"{r['real_diff']:.1e}",
                "" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}",
                "" if r["eager_ms"] is None else f"{r['eager_ms']:.2f}",
                "yes" if r["verified"] else f"NO: {r['error']}",
            ]
            for r in rows
        ],
    )
    verified = sum(r["verified"] for r in rows)
    body = (
        f"{verified} of {len(rows)} exports verified (max |exported - eager| <= 1e-4, fp32, batch 1, "
        f"{size[0]}x{size[1]}, 1 thread; real inputs: "
        f"{'Fashion-MNIST test images resized' if real is not None else 'not found'}).\n\n{table}\n"
    )
    publish_record(args.output, "export_all", "Verified export of every registered model", body, rows)
    return 0 if verified == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
