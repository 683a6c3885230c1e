"""An offline detection set from real images: Fashion-MNIST items placed at random scales and positions on
larger canvases, several per canvas, their boxes from the placement, written in COCO format (the same
files and code path as real COCO). Train canvases take items from Fashion-MNIST's training split, val
canvases from its test split."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shufflenet.data import build_dataset

# A pixel of a resized item above this value is the item (Fashion-MNIST's background is 0).
ITEM_THRESHOLD = 24
# At most this much of a placed item's box may be covered by the others'.
MOST_OVERLAP = 0.25


@dataclass(frozen=True)
class CanvasSpec:
    """How the canvases are made: ``size`` x ``size`` pixels, ``items`` = (fewest, most) per canvas, each
    item resized to a square side in ``scale`` = (smallest, largest) pixels."""

    size: int = 128
    items: tuple[int, int] = (1, 4)
    scale: tuple[int, int] = (24, 64)


def _place(
    rng: np.random.Generator, spec: CanvasSpec, placed: list[tuple[int, int, int]]
) -> tuple[int, int, int] | None:
    """(x, y, side) of a new item whose square covers at most MOST_OVERLAP of itself and of each placed
    one, or None after 30 tries."""
    for _ in range(30):
        side = int(rng.integers(spec.scale[0], spec.scale[1] + 1))
        x, y = (int(v) for v in rng.integers(0, spec.size - side + 1, size=2))
        clear = True
        for px, py, ps in placed:
            overlap = max(0, min(x + side, px + ps) - max(x, px)) * max(
                0, min(y + side, py + ps) - max(y, py)
            )
            if overlap > MOST_OVERLAP * min(side, ps) ** 2:
                clear = False
                break
        if clear:
            return x, y, side
    return None


def _canvas(
    rng: np.random.Generator, spec: CanvasSpec, pictures: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """One canvas (uint8, size x size) over faint noise and its (COCO box, label) pairs."""
    canvas = rng.integers(0, 20, size=(spec.size, spec.size)).astype(np.uint8)
    boxes: list[tuple[list[float], int]] = []
    placed: list[tuple[int, int, int]] = []
    for _ in range(int(rng.integers(spec.items[0], spec.items[1] + 1))):
        where = _place(rng, spec, placed)
        if where is None:
            break
        x, y, side = where
        index = int(rng.integers(len(pictures)))
        item = np.asarray(Image.fromarray(pictures[index]).resize((side, side), Image.BILINEAR))
        rows, cols = np.nonzero(item > ITEM_THRESHOLD)
        if rows.size == 0:
            continue
        region = canvas[y : y + side, x : x + side]
        np.maximum(region, item, out=region)
        placed.append(where)
        # The tight box of the item's own pixels: [x, y, width, height] in pixels, edges inclusive.
        box = [
            x + int(cols.min()),
            y + int(rows.min()),
            int(cols.max() - cols.min()) + 1,
            int(rows.max() - rows.min()) + 1,
        ]
        boxes.append(([float(v) for v in box], int(labels[index])))
    return canvas, boxes


def _write_split(
    folder: Path,
    split: str,
    count: int,
    spec: CanvasSpec,
    pictures: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    seed: int,
) -> Path:
    rng = np.random.default_rng(seed)
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        canvas, boxes = _canvas(rng, spec, pictures, labels)
        name = f"{image_id:06d}.png"
        Image.fromarray(canvas).save(folder / split / name)
        images.append({"id": image_id, "file_name": name, "width": spec.size, "height": spec.size})
        for box, label in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(classes)]
    path = folder / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def make_fashion_detection(
    output: str | Path,
    *,
    data_dir: str | Path | None = None,
    train_images: int = 800,
    val_images: int = 200,
    spec: CanvasSpec = CanvasSpec(),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the offline detection set into ``output``: ``train/`` and ``val/`` PNG canvases and
    ``annotations/instances_{train,val}.json`` (COCO format, categories 1..10: Fashion-MNIST's classes).
    Fashion-MNIST comes from ``data_dir`` or where the library finds it. The folder appears whole or not
    at all; an existing one is replaced only with ``overwrite``. Returns ``output``."""
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; choose another folder or pass overwrite")
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for split, count, source, offset in (
            ("train", train_images, "train", 0),
            ("val", val_images, "val", 1),
        ):
            data = build_dataset("fashion-mnist", source, data_dir)
            pictures, labels = np.asarray(data.data), np.asarray(data.targets)
            _write_split(staging, split, count, spec, pictures, labels, list(data.classes), seed * 2 + offset)
        if output.exists():
            shutil.rmtree(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
