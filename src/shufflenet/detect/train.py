"""Detector training through the classification training engine (:class:`shufflenet.train.engine.Trainer`):
its loop, checkpoints and resume, progress bar, metrics log, divergence check, signal handling and
distributed data parallelism, with the detection parts in place of the classification ones: COCO-format
data with seeded horizontal flips, a torchvision detector on a registered backbone, its summed losses,
COCO mAP on the validation split (ShuffleNet, Zhang et al. 2018, section 4.4, Table 7)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from shufflenet._system import atomic_write, cache_dir, exclusive
from shufflenet.data.loaders import sample_seed
from shufflenet.detect.coco import CocoDetectionSet, collate_detection
from shufflenet.detect.metrics import AP_NAMES, coco_average_precision, detections_over
from shufflenet.detect.model import DETECTORS, build_detector
from shufflenet.detect.synthetic import make_fashion_detection
from shufflenet.profile import profile
from shufflenet.train.config import TrainConfig
from shufflenet.train.distributed import (
    barrier,
    gather_objects,
    is_global_main,
    local_process_count,
    run_local_processes,
)
from shufflenet.train.engine import Trainer, sigterm_raises, train_in_this_process
from shufflenet.train.run_dir import hold_run_directory

# The offline Fashion-MNIST detection set (shufflenet.detect.synthetic); any other dataset is COCO-format.
OFFLINE_SET = "fashion-detect"


@dataclass
class DetectConfig(TrainConfig):
    """A detection run: :class:`TrainConfig`'s knobs (``model`` is the backbone) and the detector's.
    The data is COCO-format under ``data_dir``: images in ``data_dir/SPLIT/`` annotated by
    ``data_dir/annotations/instances_SPLIT.json`` for SPLIT = ``train_split``, ``val_split``."""

    recipe: str = "detect"
    dataset: str = "coco"
    detector: str = "fasterrcnn"
    train_split: str = "train"
    val_split: str = "val"
    min_size: int = 600  # the shorter side images are resized to (Table 7: 300 or 600)
    max_size: int = 1000
    fpn_channels: int | None = 128  # None: the last map alone
    frozen_maps: int = 1  # trunk maps (from the stem) whose layers do not train
    backbone_weights: str | None = None  # a classification checkpoint or model.safetensors
    freeze_bn: bool | None = None  # None: frozen with backbone_weights, trained from scratch
    box_head: int = 1024  # Faster R-CNN: units of its two fully connected layers
    proposals: int = 2000  # Faster R-CNN: the RPN's best regions kept
    rois_per_image: int = 512  # Faster R-CNN: regions sampled per image for the box head's loss
    flip: bool = True
    batch_size: int = 8
    lr: float = 0.02
    weight_decay: float = 1e-4
    channels_last: bool = False

    def __post_init__(self) -> None:
        # Faster R-CNN and RetinaNet shrink an image until its longer side fits max_size: with min_size
        # above it, the shorter side never reaches min_size and the run quietly trains at another size.
        if self.detector != "ssdlite" and self.min_size > self.max_size:
            raise ValueError(
                f"min_size {self.min_size} is above max_size {self.max_size}: the longer side's cap would "
                f"shrink every image below min_size; set max_size to at least min_size "
                f"(e.g. --set max_size={round(self.min_size * 5 / 3)})"
            )

    def detector_args(self) -> dict[str, Any]:
        """:func:`build_detector`'s arguments from this run's settings (the backbone's model_args included;
        batch norm frozen as it trains: with backbone_weights unless ``freeze_bn`` says otherwise; the
        input normalized as the backbone weights were trained, else as ImageNet)."""
        names = ("detector", "min_size", "max_size", "fpn_channels", "frozen_maps")
        if self.detector == "fasterrcnn":
            names += ("box_head", "proposals", "rois_per_image")
        frozen = self.freeze_bn if self.freeze_bn is not None else self.backbone_weights is not None
        return {name: getattr(self, name) for name in names} | {
            "weights": self.backbone_weights,
            "freeze_bn": frozen,
            **self.model_args,
        }

    def data_root(self) -> Path:
        """The COCO-format folder: ``data_dir``; for the offline set (``dataset: fashion-detect``) without
        one, the library's cache, where it is made from Fashion-MNIST on first use."""
        if self.data_dir is not None:
            return Path(self.data_dir)
        if self.dataset != OFFLINE_SET:
            raise ValueError(
                f"dataset {self.dataset!r} needs --data-dir: a folder with SPLIT/ images and annotations/"
            )
        root = cache_dir() / OFFLINE_SET
        # Runs started together (a reproduced table's) make it once: the first, while the others wait.
        with exclusive(root.with_name(f".{OFFLINE_SET}.lock")):
            if not (root / "annotations").is_dir():
                make_fashion_detection(root, overwrite=True)
        return root

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """(image folder, annotation file) of ``split``."""
        root = self.data_root()
        return root / split, root / "annotations" / f"instances_{split}.json"


class DetectionSamples(Dataset):
    """``base``'s samples, flipped left-right at random when indexed by (epoch, index) (the training
    sampler's keys): the draw comes from (seed, epoch, index), so a resumed or distributed run sees the
    same flips. A plain index gives the sample as it is (evaluation)."""

    collate = staticmethod(collate_detection)

    def __init__(self, base: CocoDetectionSet, *, flip: bool = False, seed: int = 0) -> None:
        self.base, self.flip, self.seed = base, flip, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        if isinstance(key, int):
            return self.base[key]
        epoch, index = key
        image, target = self.base[index]
        if self.flip and sample_seed(self.seed, epoch, index) & 1:
            width = image.shape[-1]
            boxes = target["boxes"].as_subclass(torch.Tensor).clone()
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
            image, target = image.flip(-1), {**target, "boxes": boxes}
        return image, target

    def to_device(
        self, batch: Any, device: torch.device, dtype: torch.dtype = torch.float32, **_: Any
    ) -> tuple[list[torch.Tensor], list[dict]]:
        images, targets = batch
        moved = [
            {
                "boxes": t["boxes"].as_subclass(torch.Tensor).to(device),
                "labels": t["labels"].to(device),
                "image_id": t["image_id"],
            }
            for t in targets
        ]
        return [image.to(device, dtype) for image in images], moved


class DetectionTrainer(Trainer):
    """:class:`Trainer` for a detector: the data, the model, the step's loss and the validation metrics
    are detection's; the loop, checkpoints, logging and failure handling are the engine's own."""

    config: DetectConfig

    def _setup_data(self) -> None:
        config = self.config
        if config.detector not in DETECTORS:
            raise ValueError(f"unknown detector {config.detector!r}; choose from {', '.join(DETECTORS)}")
        if self.ctx.is_main:  # the offline set is made once, by the main process, before the others read it
            config.data_root()
        barrier(self.ctx)
        train = CocoDetectionSet(*config.split_paths(config.train_split))
        val = CocoDetectionSet(*config.split_paths(config.val_split))
        if val.classes != train.classes:
            raise ValueError(
                f"{val.annotation_file} has categories {val.classes}, {train.annotation_file} "
                f"{train.classes}; both splits need the same categories"
            )
        self.image_sources = ()
        self.class_names, self.num_classes = train.classes, len(train.classes)
        self.image_size, self.in_chans = config.min_size, 3
        self.train_set = DetectionSamples(train, flip=config.flip, seed=config.seed)
        self.val_set = DetectionSamples(val)

    def _create_model(self) -> nn.Module:
        config = self.config
        model = build_detector(config.model, self.num_classes, **config.detector_args())
        # Recorded in the checkpoint: the detector normalizes its input itself, as this says.
        transform = model.transform
        self.normalization = {"mean": list(transform.image_mean), "std": list(transform.image_std)}
        return model.to(self.ctx.device, self.dtype)

    def _state(self, accumulators: torch.Tensor) -> dict[str, Any]:
        # The trunk's own arguments (a trained classifier's, with backbone_weights): the detector is built
        # again from the checkpoint alone, without the classifier's file.
        trunk = {"backbone_args": self.model.backbone.model_args}
        return {**super()._state(accumulators), "class_names": self.class_names, **trunk}

    def _train_step(self, batch) -> torch.Tensor:
        images, targets = self.train_set.to_device(batch, self.ctx.device, self.dtype)
        losses = self.runnable(images, targets)
        loss = sum(losses.values())
        self._optimize(loss)
        with torch.no_grad():
            objective, seen = loss.detach().double(), len(images)
            self.accumulators[0] += objective * seen
            self.accumulators[1] += objective * seen
            self.accumulators[3] += seen
            self._watch_loss(objective)
        return loss.detach()

    def _train_row(self, sums: list[float]) -> dict[str, Any]:
        objective_sum, _, _, seen = sums
        return {"train_loss": objective_sum / max(seen, 1)}

    def _average_precision(self, model: nn.Module) -> dict[str, float]:
        """COCO AP (%) of ``model`` on the validation split: each process detects on its share, the main
        one scores them all."""
        batches = (self.val_set.to_device(batch, self.ctx.device, self.dtype) for batch in self._val_loader())
        found = detections_over(model, batches, self.val_set.base.category_ids)
        model.train()
        everything = [row for part in gather_objects(found, self.ctx) for row in part]
        return coco_average_precision(self.val_set.base.coco, everything)

    def _validation_row(self) -> dict[str, Any]:
        return {f"val_{name}": value for name, value in self._average_precision(self.model).items()}

    def _finish(self) -> dict[str, Any]:
        final = self.ema.module if self.ema is not None else self.model
        precision = self._average_precision(final)
        config = self.config
        summary = {
            "model": config.model,
            "detector": config.detector,
            "params": sum(p.numel() for p in final.parameters()),
            # the trunk and its feature maps (pyramid, extra levels) on a min_size square: the heads' work
            # depends on the image and on how many regions it yields
            "mflops": profile(final.backbone, (config.min_size, config.min_size)).mflops,
            **precision,
            "min_size": config.min_size,
            "time_s": self._elapsed(),
            "epochs": self.epochs,
            "steps": self.position.step,
            "train_images": len(self.train_set),
            "val_images": len(self.val_set),
            "classes": self.class_names,
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "run_dir": str(self.run_dir),
        }
        if self.ctx.is_main:
            text = json.dumps(summary, indent=2) + "\n"
            atomic_write(self.run_dir / "summary.json", lambda f: f.write(text.encode()))
            self._print(
                f"\n{config.model} {config.detector}: "
                + ", ".join(f"{name} {precision[name]:.1f}" for name in AP_NAMES)
                + f"\nrun directory: {self.run_dir} (checkpoint, metrics, summary.json)"
            )
        return summary


def train_detector(
    config: DetectConfig, *, resume: str | Path | bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train ``config``'s detector to the end (``resume``: continue its run) and return the summary, COCO
    AP included. The run directory is held as :func:`shufflenet.train.engine.train` holds it; on CPU,
    ``config.cpu_processes > 1`` trains data-parallel in that many local processes, as torchrun would."""
    guard = (
        hold_run_directory(config.run_dir(), resume=bool(resume), overwrite=overwrite)
        if is_global_main()
        else contextlib.nullcontext()
    )
    with sigterm_raises(), guard:
        processes = local_process_count(config.cpu_processes, config.device, config.batch_size)
        if processes > 1:
            return run_local_processes(train_in_this_process, (config, resume, DetectionTrainer), processes)
        return train_in_this_process(config, resume, DetectionTrainer)
