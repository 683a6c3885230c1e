"""The quick detection recipe (detect-fashion-quick: Faster R-CNN with a light head and a feature pyramid,
trained from scratch on the offline Fashion-MNIST detection set) on several backbones, through the same
code as `shufflenet detect train`, with COCO AP on the set's 200 validation canvases and a picture of a
few predictions.

    python benchmarks/detect_quick.py [--backbones shufflenet_v2_x0_5 ...] [--epochs N] [--output FOLDER]

Writes detect_quick.{md,csv,json} and detect_quick_predictions.png into FOLDER (default
benchmarks/results); the runs go to runs/detect-quick-BACKBONE.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shufflenet._table import markdown_table
from shufflenet.bench.report import publish_record
from shufflenet.detect.coco import CocoDetectionSet
from shufflenet.detect.evaluate import draw_predictions, load_detector, predict
from shufflenet.detect.metrics import AP_NAMES
from shufflenet.detect.train import DetectConfig, train_detector
from shufflenet.train.config import load_config

RESULTS = Path(__file__).resolve().parent / "results"
BACKBONES = ("shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5", "mobilenet_v2_x0_5")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for backbone in args.backbones:
        overrides = {"model": backbone, "output": f"runs/detect-quick-{backbone}", "progress": False}
        if args.epochs:
            overrides["epochs"] = args.epochs
        config = load_config("detect-fashion-quick", overrides, DetectConfig)
        summary = train_detector(config, overwrite=True)
        rows.append(
            {
                "backbone": backbone,
                "detector": summary["detector"],
                "params_m": round(summary["params"] / 1e6, 2),
                "epochs": summary["epochs"],
                "minutes": round(summary["time_s"] / 60, 1),
                **{name: summary[name] for name in AP_NAMES},
            }
        )
        print(rows[-1])
    first = f"runs/detect-quick-{args.backbones[0]}"
    model, config, classes = load_detector(first)
    val = CocoDetectionSet(*config.split_paths(config.val_split))
    images = [val.image_path(index) for index in range(8)]
    picture = draw_predictions(
        images, predict(model, images), classes, args.output / "detect_quick_predictions.png"
    )
    table = markdown_table(
        ["backbone", "detector", "params (M)", "epochs", "minutes", *AP_NAMES],
        [
            [r["backbone"], r["detector"], f"{r['params_m']:.2f}", str(r["epochs"]), f"{r['minutes']:.1f}",
             *(f"{r[name]:.1f}" for name in AP_NAMES)]
            for r in rows
        ],
    )  # fmt: skip
    body = (
        f"The offline Fashion-MNIST detection set ({len(val)} validation canvases of 128x128, 1-4 items "
        "each, 10 classes), the quick recipe from scratch on this machine's CPU, COCO AP (%) on the "
        f"validation canvases. Predictions of the first backbone (score >= 0.5): `{picture.name}`."
        f"\n\n{table}\n"
    )
    publish_record(
        args.output,
        "detect_quick",
        "Detection: the quick recipe on the offline Fashion-MNIST set",
        body,
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
