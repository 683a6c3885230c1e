"""Export a Fashion-MNIST model trained by `shufflenet train` in fp32 (ONNX, OpenVINO) and int8 (ONNX Runtime
static quantization), and compare test accuracy with the eager model on all 10,000 test images.

    shufflenet train                                     # writes runs/fashion-mnist-quick-shufflenet_v2_x0_5/
    python benchmarks/export_fashion_mnist.py runs/fashion-mnist-quick-shufflenet_v2_x0_5/model.safetensors

Writes benchmarks/results/export_fashion_mnist.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from shufflenet._table import markdown_table
from shufflenet.bench.report import publish_record
from shufflenet.data import build_dataset
from shufflenet.deploy.export import export_model
from shufflenet.train.evaluate import load_for_evaluation

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("weights", help="model.safetensors (or checkpoint.pt) trained on Fashion-MNIST")
    parser.add_argument("--calib-samples", type=int, default=256)
    args = parser.parse_args()
    model, name, model_args = load_for_evaluation(args.weights)
    train_set, test_set = build_dataset("fashion-mnist", "train"), build_dataset("fashion-mnist", "val")
    step = len(train_set) // args.calib_samples
    calibration = [train_set[i][0].unsqueeze(0).numpy() for i in range(0, step * args.calib_samples, step)]
    real = torch.stack([test_set[i][0] for i in range(8)])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt, int8 in (("onnx", False), ("openvino", False), ("onnx", True), ("openvino", True)):
            report = export_model(
                model, Path(folder) / f"m-{fmt}-{int8}", fmt, input_size=(28, 28), real_inputs=real,
                precision="int8" if int8 else "fp32", calibration=calibration, accuracy_data=test_set,
            )  # fmt: skip
            rows.append(
                {
                    "format": fmt,
                    "precision": "int8" if int8 else "fp32",
                    "max_diff_real": report.max_abs_diff_real,
                    "eager_top1": report.accuracy["eager top-1"],
                    "exported_top1": report.accuracy["exported top-1"],
                    "latency_ms": round(report.latency_ms, 3),
                    "eager_ms": round(report.eager_latency_ms, 3),
                }
            )
    table = markdown_table(
        ["format", "precision", "max diff (real)", "eager top-1 %", "exported top-1 %", "change", "ms",
         "eager ms"],
        [
            [
                r["format"], r["precision"], f"{r['max_diff_real']:.1e}", f"{r['eager_top1']:.2f}",
                f"{r['exported_top1']:.2f}", f"{r['exported_top1'] - r['eager_top1']:+.2f}",
                f"{r['latency_ms']:.2f}", f"{r['eager_ms']:.2f}",
            ]
            for r in rows
        ],
    )  # fmt: skip
    body = (
        f"Model: {name} {model_args} from `{args.weights}`; Fashion-MNIST test set (10,000 images); "
        f"int8 calibrated on {args.calib_samples} training images; latency batch 1, 1 thread.\n\n{table}\n"
    )
    publish_record(RESULTS, "export_fashion_mnist", "Export and int8 on Fashion-MNIST", body, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
