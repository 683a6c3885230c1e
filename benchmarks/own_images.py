"""Training on a small ImageFolder of one's own, with nothing but `shufflenet train --dataset imagefolder
--data-dir DIR`: the first thing a user tries. The folders are built from real images available offline
(Fashion-MNIST, Debian's dataset-fashion-mnist): two disjoint sets of 1,800 images (1,440 train / 360 val),
each saved as 32 px RGB PNGs with its own tint, so the defaults are seen on more than the set they were
chosen on. Each set trains with the CLI's defaults in a fresh process; the record holds its wall time,
top-1 error and the lines the CLI printed about what it detected and chose.

    python benchmarks/own_images.py --output benchmarks/results/own-images
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import v2

from shufflenet._table import markdown_table
from shufflenet.bench.report import save_record
from shufflenet.data import build_dataset

SETS = {"set-a": (0, (1.0, 0.9, 0.8)), "set-b": (1800, (0.8, 1.0, 0.9))}  # first image, RGB tint
IMAGES_PER_SET = 1800


def write_image_folder(source: str | None, folder: Path, first: int, tint: tuple[float, ...]) -> None:
    """``IMAGES_PER_SET`` Fashion-MNIST training images from ``first`` on as 32 px tinted RGB PNGs, every
    fifth one in val/, the rest in train/, one folder per class."""
    images = build_dataset("fashion-mnist", "train", source, transform=v2.Identity(), download=False)
    for k in range(IMAGES_PER_SET):
        image, label = images[first + k]
        split = "val" if k % 5 == 0 else "train"
        rgb = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR).convert("RGB"), dtype=np.float32)
        pixels = (rgb * np.asarray(tint, dtype=np.float32)).clip(0, 255).astype(np.uint8)
        target = folder / split / images.classes[label].replace("/", "-")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target / f"{first + k}.png")


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--source", help="Fashion-MNIST folder (default: the system copy)")
    parser.add_argument("--output", type=Path, help="write own_images.md/.csv/.json into this folder")
    args = parser.parse_args(argv)
    rows, logs = [], {}
    with tempfile.TemporaryDirectory() as work:
        for name, (first, tint) in SETS.items():
            folder, run = Path(work) / name, Path(work) / f"run-{name}"
            write_image_folder(args.source, folder, first, tint)
            command = ["shufflenet", "train", "--dataset", "imagefolder", "--data-dir", str(folder)]
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "shufflenet", *command[1:], "--output", str(run), "--no-progress"],
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - started
            if result.returncode != 0:
                print(result.stdout, result.stderr, sep="\n")
                return result.returncode
            summary = json.loads((run / "summary.json").read_text())
            announced = ("recipe:", "imagefolder:")
            chosen = [line for line in result.stdout.splitlines() if line.startswith(announced)]
            logs[name] = chosen
            rows.append(
                {
                    "set": name,
                    "command": " ".join([*command[:-1], "DIR"]),
                    "model": summary["model"],
                    "epochs": summary.get("epochs"),
                    "top1_err": summary["top1_err"],
                    "wall_s": round(wall, 1),
                    "images_per_s": summary.get("images_per_s"),
                }
            )
            print(f"{name}: top-1 error {summary['top1_err']:.2f}% in {wall:.0f} s")
    headers = ["set", "model", "top-1 err %", "wall time (s)", "images/s (last epoch)"]
    table = markdown_table(
        headers,
        [[r["set"], r["model"], f"{r['top1_err']:.2f}", f"{r['wall_s']:.0f}", f"{r['images_per_s']:.0f}"]
         for r in rows],
    )  # fmt: skip
    chosen_lines = "\n".join(f"- {name}: {' / '.join(lines)}" for name, lines in logs.items())
    body = f"`{rows[0]['command']}`, nothing else set.\n\n{table}\n\nWhat the CLI chose:\n\n{chosen_lines}\n"
    print(body)
    if args.output:
        title = "Training on a small ImageFolder of one's own, with the defaults"
        save_record(args.output, "own_images", title, body, rows, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
