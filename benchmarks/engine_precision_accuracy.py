"""Top-1 of trained Fashion-MNIST models in PyTorch and on the engine in fp32, bf16 (on CPUs with
AVX512_BF16) and int8, on all 10,000 test images, with the int8 error of each operation (against float32,
on a few test images), the worst listed.

int8 is calibrated on 256 training images, evenly spaced (`deploy.calibration.calibration_batches`).

    python benchmarks/engine_precision_accuracy.py WEIGHTS [WEIGHTS ...] [--output FOLDER]

WEIGHTS: model.safetensors or checkpoint.pt of runs trained on Fashion-MNIST (e.g. `shufflenet train`).
Writes engine_precision_accuracy.{md,csv,json} into FOLDER (default benchmarks/results).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from shufflenet._table import markdown_table
from shufflenet.bench.report import publish_record
from shufflenet.data import build_dataset
from shufflenet.data.transforms import trained_transforms
from shufflenet.deploy.calibration import calibration_batches
from shufflenet.deploy.engine import build_engine, load_library
from shufflenet.deploy.quantize import operation_errors
from shufflenet.train.checkpoint import load_input_contract
from shufflenet.train.evaluate import load_for_evaluation

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("weights", nargs="+", help="trained model.safetensors or checkpoint.pt files")
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    bf16 = bool(load_library().shufflenet_engine_bf16())
    for weights in args.weights:
        model, name, _ = load_for_evaluation(weights)
        model.eval()
        contract = load_input_contract(weights)
        size = contract.image_size[0]
        calibration = calibration_batches("fashion-mnist", size, contract, samples=args.calib_samples)
        engines = {
            "fp32": build_engine(model, (size, size), threads=1),
            "int8": build_engine(model, (size, size), threads=1, precision="int8", calibration=calibration),
        }
        if bf16:
            engines["bf16"] = build_engine(model, (size, size), threads=1, precision="bf16")
        test_set = build_dataset(
            "fashion-mnist", "val", transform=trained_transforms("fashion-mnist", size, contract)
        )
        correct = {"eager": 0} | {precision: 0 for precision in engines}
        total = agree = 0
        first = None
        for images, labels in DataLoader(test_set, batch_size=500):
            first = images[:16] if first is None else first
            with torch.no_grad():
                logits = {"eager": model(images).numpy()}
            logits |= {precision: engine(images.numpy()) for precision, engine in engines.items()}
            for key, values in logits.items():
                correct[key] += int((values.argmax(1) == labels.numpy()).sum())
            agree += int((logits["int8"].argmax(1) == logits["fp32"].argmax(1)).sum())
            total += len(labels)
        errors = operation_errors(engines["int8"].plan.quantized, first)
        worst = sorted(errors, key=lambda row: -row[2])[:3]
        top1 = {key: 100 * value / total for key, value in correct.items()}
        rows.append(
            {
                "model": name,
                "weights": str(weights),
                "input": f"{size}x{size}",
                "eager_top1": round(top1["eager"], 2),
                "engine_fp32_top1": round(top1["fp32"], 2),
                "engine_int8_top1": round(top1["int8"], 2),
                "int8_change": round(top1["int8"] - top1["fp32"], 2),
                "engine_bf16_top1": round(top1["bf16"], 2) if bf16 else None,
                "bf16_change": round(top1["bf16"] - top1["fp32"], 2) if bf16 else None,
                "int8_agrees_with_fp32": round(100 * agree / total, 2),
                "last_layer_error": round(errors[-1][2], 4),
                "worst_layers": "; ".join(f"#{i} {kind} {error:.3f}" for i, kind, error in worst),
            }
        )
        print(rows[-1])

    def bf16_cell(row: dict, key: str, sign: str = "") -> str:
        return "n/a" if row[key] is None else f"{row[key]:{sign}.2f}"

    table = markdown_table(
        ["model", "eager top-1 %", "engine fp32 %", "engine bf16 %", "bf16 - fp32", "engine int8 %",
         "int8 - fp32", "int8 same class %", "int8 logit error", "int8: worst operations (rms error / rms)"],
        [
            [r["model"], f"{r['eager_top1']:.2f}", f"{r['engine_fp32_top1']:.2f}",
             bf16_cell(r, "engine_bf16_top1"), bf16_cell(r, "bf16_change", "+"),
             f"{r['engine_int8_top1']:.2f}", f"{r['int8_change']:+.2f}", f"{r['int8_agrees_with_fp32']:.2f}",
             f"{r['last_layer_error']:.3f}", r["worst_layers"]]
            for r in rows
        ],
    )  # fmt: skip
    body = (
        f"Fashion-MNIST test set ({total:,} images), single crop at each model's trained size; int8 "
        f"calibrated on {args.calib_samples} training images; per-operation error (int8 output against "
        f"float32, rms over rms) on the first 16 test images; bf16 "
        f"{'on this CPU' if bf16 else 'n/a: this CPU lacks AVX512_BF16'}.\n\n{table}\n"
    )
    publish_record(
        args.output, "engine_precision_accuracy", "bf16 and int8 on the engine: accuracy on Fashion-MNIST",
        body, rows,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
