"""Detectors on this library's backbones: the trunk's stage maps (``features_only``), frozen batch norm and
frozen early stages as detection fine-tuning usually has them, an optional feature pyramid, under
torchvision's Faster R-CNN (ShuffleNet, Zhang et al. 2018, section 4.4, Table 7) or RetinaNet."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from shufflenet.models._base import ClassifierNet, FeatureExtractor
from shufflenet.registry import create_model

DETECTORS = ("fasterrcnn", "retinanet", "ssdlite")
# torchvision's detectors normalize their input themselves, with ImageNet's statistics by default.
IMAGENET_NORMALIZATION = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# SSDLite's extra feature levels after the trunk's last map (Sandler et al. 2018, section 6.2, after SSD's).
SSDLITE_EXTRA_CHANNELS = (512, 256, 256, 128)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm2d replaced by a FrozenBatchNorm2d holding the same statistics and
    affine parameters: detection batches are a few images, too few to estimate them."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class Backbone(nn.Module):
    """A registered classifier's trunk as a detection backbone: the maps at ``out_indices`` of its
    ``feature_info`` (by default its last three: strides 8, 16, 32), as an ordered dict, through a feature
    pyramid of ``fpn_channels`` where given (``out_channels`` is what the detector heads read). The first
    ``frozen_maps`` maps' layers (the stem first) do not train. Batch norm is frozen (``freeze_bn``; by
    default when trained ``weights`` are loaded, the usual fine-tuning) or, from scratch, trains."""

    def __init__(
        self,
        name: str,
        *,
        out_indices: tuple[int, ...] | None = None,
        fpn_channels: int | None = 128,
        frozen_maps: int = 1,
        extra_levels: str = "pool",
        weights: str | Path | None = None,
        freeze_bn: bool | None = None,
        **model_args,
    ) -> None:
        super().__init__()
        # The input normalization the trunk was trained with (weights that record one), over RGB.
        self.normalization: tuple[list[float], list[float]] | None = None
        if weights is None:
            classifier, self.model_args = create_model(name, **model_args), dict(model_args)
        elif model_args:
            raise ValueError(
                f"{weights} sets its model's arguments itself; drop {', '.join(sorted(model_args))} "
                "(model_args) or the backbone weights"
            )
        else:
            classifier, self.model_args = trained_classifier(name, weights)
            self.normalization = trained_normalization(weights)
        classifier.reset_classifier(0)  # the detector reads the maps only: no unused weights to train
        if out_indices is None:  # the last three maps: strides 8, 16, 32 (2, 4, 8 with a small-input stem)
            count = len(classifier.feature_info)
            out_indices = tuple(range(max(0, count - 3), count))
        self.body = FeatureExtractor(classifier, out_indices)
        if freeze_bn if freeze_bn is not None else weights is not None:
            freeze_batchnorm(self.body)
        infos = self.body.feature_info
        self.strides = [info.reduction for info in infos]
        self.names = [str(index) for index in range(len(infos))]
        first_trained = self._first_trained_piece(frozen_maps)
        # Layers after the deepest map (ShuffleNet V2's conv5) never run: nothing to train, and data
        # parallelism refuses parameters without gradients.
        last_used = infos[-1].trunk_index
        self.body.model.requires_grad_(False)
        for index, piece in enumerate(self.body.model.trunk_modules()):
            piece.requires_grad_(first_trained <= index <= last_used)
        self.extras = None
        if extra_levels == "ssdlite":
            # SSDLite reads the last two maps (strides 16 and 32) and four more below them, no pyramid.
            self.fpn = None
            ins = [infos[-1].num_chs, *SSDLITE_EXTRA_CHANNELS[:-1]]
            self.extras = nn.ModuleList(
                separable_down(c_in, c_out) for c_in, c_out in zip(ins, SSDLITE_EXTRA_CHANNELS, strict=True)
            )
            self.out_channels = [info.num_chs for info in infos[-2:]] + list(SSDLITE_EXTRA_CHANNELS)
            self.names = [*self.names[-2:], *(f"extra{n}" for n in range(1, 5))]
            self.strides = [*self.strides[-2:], *(self.strides[-1] * 2**n for n in range(1, 5))]
        elif fpn_channels is None:
            self.fpn = None
            self.out_channels = infos[-1].num_chs
            self.names = self.names[-1:]
            self.strides = self.strides[-1:]
        else:
            extra = (
                LastLevelMaxPool() if extra_levels == "pool" else LastLevelP6P7(fpn_channels, fpn_channels)
            )
            self.fpn = FeaturePyramidNetwork(
                [info.num_chs for info in infos], fpn_channels, extra_blocks=extra
            )
            self.out_channels = fpn_channels
            self.names = [*self.names, "pool"] if extra_levels == "pool" else [*self.names, "p6", "p7"]
            self.strides = [*self.strides, self.strides[-1] * 2] + (
                [self.strides[-1] * 4] if extra_levels != "pool" else []
            )

    def _first_trained_piece(self, frozen_maps: int) -> int:
        """The index of the first trunk piece that trains: the one after the ``frozen_maps``-th map of the
        whole trunk (0: everything trains)."""
        everything = self.body.model.feature_info
        if frozen_maps <= 0:
            return 0
        return everything[min(frozen_maps, len(everything)) - 1].trunk_index + 1

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(images)
        if self.extras is not None:
            maps = maps[-2:]
            for block in self.extras:
                maps.append(block(maps[-1]))
            return OrderedDict(zip(self.names, maps, strict=True))
        if self.fpn is None:
            return OrderedDict([(self.names[0], maps[-1])])
        return self.fpn(OrderedDict(zip([str(i) for i in range(len(maps))], maps, strict=True)))


def separable_down(in_channels: int, out_channels: int) -> nn.Sequential:
    """An SSDLite extra level: 1x1 to half the channels, 3x3 depthwise at stride 2, 1x1 out, each with batch
    norm and ReLU6 (Sandler et al. 2018, section 6.2: SSD's extra layers made separable)."""
    middle = out_channels // 2

    def unit(conv: nn.Conv2d) -> list[nn.Module]:
        return [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU6(inplace=True)]

    return nn.Sequential(
        *unit(nn.Conv2d(in_channels, middle, 1, bias=False)),
        *unit(nn.Conv2d(middle, middle, 3, stride=2, padding=1, groups=middle, bias=False)),
        *unit(nn.Conv2d(middle, out_channels, 1, bias=False)),
    )


def trained_classifier(name: str, weights: str | Path) -> tuple[ClassifierNet, dict[str, Any]]:
    """The classifier ``name`` with the trained weights of ``weights`` (a checkpoint.pt or an exported
    model.safetensors, e.g. ImageNet training), reading RGB, and the arguments that build its like: its
    trunk becomes the detector's backbone."""
    from shufflenet.train.evaluate import load_for_evaluation

    model, found, args = load_for_evaluation(weights)
    if found != name:
        raise ValueError(f"{weights} holds a {found}, not {name}; pass --model {found} or other weights")
    args = {key: value for key, value in args.items() if key != "num_classes"}
    return rgb_input(model), {**args, "in_chans": 3}


def trained_normalization(weights: str | Path) -> tuple[list[float], list[float]] | None:
    """(mean, std) per RGB channel that the classifier in ``weights`` was trained with (one channel's
    repeated over three), or None where its file records none."""
    from shufflenet.train.checkpoint import load_input_contract

    contract = load_input_contract(weights)
    if contract is None:
        return None

    def over_rgb(values: Sequence[float]) -> list[float]:
        return [float(v) for v in values] * (3 // len(values))

    return over_rgb(contract.mean), over_rgb(contract.std)


def rgb_input(model: ClassifierNet) -> ClassifierNet:
    """``model`` reading RGB: a first convolution trained on one channel (grayscale data such as
    Fashion-MNIST) gets its kernel on each of three, divided by three, so a gray image (equal channels,
    normalized as in training) gives what it gave; torchvision's detectors always feed three channels."""
    if model.in_chans != 1:
        return model
    first = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    first.weight = nn.Parameter(first.weight.detach().repeat(1, 3, 1, 1) / 3)
    first.in_channels = model.in_chans = 3
    return model


def build_detector(
    backbone: str,
    num_classes: int,
    *,
    detector: str = "fasterrcnn",
    min_size: int = 600,
    max_size: int = 1000,
    fpn_channels: int | None = 128,
    frozen_maps: int = 1,
    weights: str | Path | None = None,
    freeze_bn: bool | None = None,
    box_head: int = 1024,
    proposals: int = 2000,
    rois_per_image: int = 512,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **model_args,
) -> nn.Module:
    """A torchvision ``detector`` (``fasterrcnn``, ``retinanet`` or ``ssdlite``) for ``num_classes`` object
    classes on the registered model ``backbone`` (its ``weights`` file, if given, loaded into the trunk),
    images resized so that their shorter side is ``min_size`` (ShuffleNet's Table 7: 300 or 600) and the
    longer at most ``max_size``; SSDLite (Sandler et al. 2018, section 6.2) resizes to ``min_size`` square,
    has SSD's default boxes on six levels and separable convolutions in its head and extra levels.
    Faster R-CNN and RetinaNet anchors: one size per map, 4x its stride, three aspect ratios. Faster R-CNN's
    box head is two fully connected layers of ``box_head`` units over ``rois_per_image`` sampled regions
    of the RPN's ``proposals`` best (torchvision's defaults: 1024, 512, 2000; a light head for small
    images and CPUs: e.g. 256, 128, 300). Images are normalized by ``image_mean`` and ``image_std``,
    by default as the classifier in ``weights`` was trained (where its file records it), else with
    ImageNet's statistics."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose from {', '.join(DETECTORS)}")
    body = Backbone(
        backbone,
        fpn_channels=fpn_channels,
        frozen_maps=frozen_maps,
        extra_levels={"fasterrcnn": "pool", "retinanet": "p6p7", "ssdlite": "ssdlite"}[detector],
        weights=weights,
        freeze_bn=freeze_bn,
        **model_args,
    )
    if image_mean is None or image_std is None:
        image_mean, image_std = body.normalization or IMAGENET_NORMALIZATION
    if detector == "ssdlite":
        boxes = DefaultBoxGenerator([[2, 3]] * len(body.names), min_ratio=0.2, max_ratio=0.95)
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03)
        head = SSDLiteHead(body.out_channels, boxes.num_anchors_per_location(), num_classes + 1, norm)
        return SSD(
            body,
            boxes,
            (min_size, min_size),
            num_classes + 1,
            image_mean=list(image_mean),
            image_std=list(image_std),
            head=head,
            score_thresh=0.001,
            detections_per_img=300,
            topk_candidates=300,
        )
    sizes = tuple((4 * stride,) for stride in body.strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    common = {
        "min_size": min_size,
        "max_size": max_size,
        "image_mean": list(image_mean),
        "image_std": list(image_std),
    }
    if detector == "retinanet":
        return RetinaNet(body, num_classes + 1, anchor_generator=anchors, **common)
    pooler = MultiScaleRoIAlign([name for name in body.names if name not in ("pool",)], 7, 2)
    return FasterRCNN(
        body,
        None,  # the box predictor's
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_head=TwoMLPHead(body.out_channels * 7 * 7, box_head),
        box_predictor=FastRCNNPredictor(box_head, num_classes + 1),
        rpn_pre_nms_top_n_train=proposals,
        rpn_post_nms_top_n_train=proposals,
        rpn_pre_nms_top_n_test=min(proposals, 1000),
        rpn_post_nms_top_n_test=min(proposals, 1000),
        box_batch_size_per_image=rois_per_image,
        **common,
    )
