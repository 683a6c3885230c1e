"""COCO-format detection data: an annotation JSON (images, annotations with [x, y, width, height] boxes,
categories) and a folder of images, read through pycocotools as torchvision's CocoDetection does, checked
when loaded so that a malformed file or a box outside its image is one line naming the file and the
annotation. Samples come out as torchvision detection models take them: a float image in [0, 1] and a
target with ``boxes`` (x1, y1, x2, y2 pixels), ``labels`` (1..K, 0 is the background) and ``image_id``."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

# A box may reach past its image's edge by this many pixels (annotation tools round outwards).
EDGE_SLACK = 1.0


class DetectionDataError(ValueError):
    """A COCO-format file that cannot be used as it is; the message names the file and what to fix."""


def _fail(path: Path, what: str) -> DetectionDataError:
    return DetectionDataError(f"{path}: {what}")


def load_coco_annotations(path: str | Path) -> dict[str, Any]:
    """The annotation file ``path`` as a dict, checked: valid JSON with ``images``, ``annotations`` and
    ``categories``; every image with an id, file name, width and height; every annotation of a known image
    and category with a box of positive size inside its image. Raises :class:`DetectionDataError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise _fail(
            path, "no such annotation file; pass the COCO json (e.g. annotations/instances_val.json)"
        ) from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _fail(path, f"not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise _fail(path, "a COCO annotation file is a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(path, f"no {key!r} list: not a COCO-format annotation file")
    images: dict[Any, dict] = {}
    for index, image in enumerate(data["images"]):
        missing = [key for key in ("id", "file_name", "width", "height") if key not in image]
        if missing:
            raise _fail(path, f"image #{index} has no {', '.join(missing)}")
        images[image["id"]] = image
    categories = {category.get("id") for category in data["categories"]}
    for index, annotation in enumerate(data["annotations"]):
        name = f"annotation {annotation.get('id', f'#{index}')}"
        image = images.get(annotation.get("image_id"))
        if image is None:
            raise _fail(
                path, f"{name} refers to image {annotation.get('image_id')!r}, which is not in 'images'"
            )
        if annotation.get("category_id") not in categories:
            raise _fail(path, f"{name} has category {annotation.get('category_id')!r}, not in 'categories'")
        box = annotation.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise _fail(path, f"{name} has no [x, y, width, height] bbox")
        x, y, w, h = box
        where = f"{name} (image {image['file_name']})"
        if w <= 0 or h <= 0:
            raise _fail(path, f"{where}: box {box} has no area")
        if (
            x < -EDGE_SLACK
            or y < -EDGE_SLACK
            or x + w > image["width"] + EDGE_SLACK
            or y + h > image["height"] + EDGE_SLACK
        ):
            raise _fail(path, f"{where}: box {box} lies outside the {image['width']}x{image['height']} image")
    return data


class CocoDetectionSet(Dataset):
    """Images of ``images`` (a folder) annotated by the COCO json ``annotations``, through pycocotools
    (:attr:`coco`, which COCO evaluation takes as the ground truth). ``transforms(image, target)``, if
    given, is a torchvision.transforms.v2 transform that moves boxes with the image. Crowd annotations are
    left out of the targets, as torchvision's reference detection training does."""

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        transforms: Callable[[Any, dict], tuple[Any, dict]] | None = None,
    ) -> None:
        self.root = Path(images)
        self.annotation_file = Path(annotations)
        if not self.root.is_dir():
            raise DetectionDataError(f"{self.root}: no such image folder")
        data = load_coco_annotations(self.annotation_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        # Contiguous labels 1..K in category-id order; 0 is the detectors' background.
        self.category_ids = sorted(self.coco.cats)
        self.label_of = {category: index + 1 for index, category in enumerate(self.category_ids)}
        self.classes = [self.coco.cats[category]["name"] for category in self.category_ids]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / self.coco.imgs[self.ids[index]]["file_name"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path(index)
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, ValueError) as error:
            raise DetectionDataError(f"{path}: cannot read image {image_id} ({error})") from error
        if image.size != (info["width"], info["height"]):
            raise DetectionDataError(
                f"{path}: the image is {image.size[0]}x{image.size[1]}, its annotation file says "
                f"{info['width']}x{info['height']}"
            )
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                boxes.clamp(min=0), format="XYXY", canvas_size=(info["height"], info["width"])
            ),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            "image_id": image_id,
        }
        picture = tv_tensors.Image(F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True))
        if self.transforms is not None:
            picture, target = self.transforms(picture, target)
        return picture.as_subclass(torch.Tensor), target


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches as torchvision's detectors take them: a list of images and a list of targets."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
