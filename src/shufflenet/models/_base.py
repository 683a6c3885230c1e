"""The one model interface every family shares (timm's names): ``forward_features``,
``forward_head(x, pre_logits=False)``, ``reset_classifier``, ``feature_info`` and a features-only wrapper."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrunkPiece:
    """One step of the feature trunk: a submodule's dotted name, its output channels and its stride."""

    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class FeatureInfo:
    """A feature map the trunk can hand out: where it comes from, its channels and its total stride."""

    module: str
    num_chs: int
    reduction: int
    trunk_index: int


def feature_taps(pieces: Sequence[TrunkPiece]) -> list[FeatureInfo]:
    """The last piece before each down-sampling step, plus the last piece: one map per resolution, the
    stage outputs that detection necks use (reductions 2, 4, 8, 16, 32 at the default stems)."""
    taps = []
    reduction = 1
    for index, piece in enumerate(pieces):
        reduction *= piece.stride
        is_last = index == len(pieces) - 1
        if is_last or pieces[index + 1].stride > 1:
            taps.append(FeatureInfo(piece.name, piece.channels, reduction, index))
    return taps


# ``small_input=True`` takes out the first two 2x down-samplings of every family: a 28-32 px image then
# reaches the stages at the resolution a 112-128 px image reaches them in the standard network (stride 8, not
# 32). ShuffleNet drops its stem stride and max-pool, MobileNet its stem stride and first strided layer: the
# same two steps, so the families' costs at 28 px keep their ratios at 224 px, which comparisons "at equal
# complexity" (Zhang et al. 2018, Table 5; Ma et al. 2018, Table 8) rest on.
SMALL_INPUT_DROPPED_STRIDES = 2


def small_input_strides(strides: Sequence[int], small_input: bool) -> list[int]:
    """The network's strides in order; with ``small_input`` its first two stride-2 steps become 1."""
    to_drop = SMALL_INPUT_DROPPED_STRIDES if small_input else 0
    result = []
    for stride in strides:
        if stride > 1 and to_drop:
            to_drop -= 1
            stride = 1
        result.append(stride)
    return result


def init_weights(model: nn.Module) -> None:
    """He-normal (fan out) convolutions, unit BN, small-normal classifier: the MobileNet V2 reference
    initialisation, used for every family so results compare on equal footing."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


class ClassifierNet(nn.Module):
    """Base class: a trunk of named pieces, an optional head conv, global average pooling, dropout and a
    linear classifier named ``classifier_name`` (``fc`` or ``classifier``, as torchvision names it)."""

    classifier_name = "fc"

    def __init__(self, *, num_classes: int, in_chans: int, drop_rate: float) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 removes the classifier), got {num_classes}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate

    def _set_interface(self, pieces: Sequence[TrunkPiece], head_conv: str | None, num_features: int) -> None:
        """Record the trunk and build the head; subclasses call this at the end of ``__init__``."""
        self.pieces = tuple(pieces)
        self.head_conv_name = head_conv
        self.feature_info = feature_taps(self.pieces)
        self.total_stride = self.feature_info[-1].reduction
        self.num_features = num_features
        self.head_drop = nn.Dropout(self.drop_rate) if self.drop_rate > 0 else nn.Identity()
        setattr(self, self.classifier_name, self._new_classifier(self.num_classes))
        init_weights(self)

    def _new_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        linear = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(linear.weight, 0.0, 0.01)
        nn.init.zeros_(linear.bias)
        return linear

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for inputs this network cannot take: wrong rank, channels, or too small."""
        if x.dim() != 4:
            raise ValueError(f"expected an NCHW batch (4 dimensions), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"input has {x.shape[1]} channels but the model was built with in_chans={self.in_chans}; "
                f"create it with in_chans={x.shape[1]}"
            )
        height, width = x.shape[-2:]
        if min(height, width) < self.total_stride:
            raise ValueError(
                f"input {height}x{width} is smaller than the network's total stride {self.total_stride}; "
                f"use inputs of at least {self.total_stride}x{self.total_stride}, or small_input=True "
                "for 28-32 px images"
            )

    def trunk_modules(self) -> list[nn.Module]:
        """The trunk pieces in order (resolved by name, so graph rewrites that swap modules are seen)."""
        return [self.get_submodule(piece.name) for piece in self.pieces]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unpooled feature map after the trunk and the head conv (if any)."""
        self.check_input(x)
        for module in self.trunk_modules():
            x = module(x)
        if self.head_conv_name is not None:
            x = self.get_submodule(self.head_conv_name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then (unless ``pre_logits``) dropout and the classifier."""
        # A sum, then a scale, rather than mean(): mean's gradient is materialized NCHW, which a channels_last
        # net then has to convert in the head's ReLU backward (~3% of a small net's training step on CPU);
        # the sum's gradient is a broadcast view that any layout reads directly.
        x = x.sum((2, 3)) * (1.0 / (x.shape[2] * x.shape[3]))
        if pre_logits:
            return x
        return self.get_classifier()(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 gives pooled features)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        reference = next(self.parameters())
        classifier = self._new_classifier(num_classes).to(reference.device, reference.dtype)
        setattr(self, self.classifier_name, classifier)


class FeatureExtractor(nn.Module):
    """``features_only=True``: returns the trunk's maps at ``out_indices`` (indices into the model's
    ``feature_info``), stopping after the deepest one asked for."""

    def __init__(self, model: ClassifierNet, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        available = model.feature_info
        if out_indices is None:
            out_indices = range(len(available))
        bad = [index for index in out_indices if not 0 <= index < len(available)]
        if bad:
            raise ValueError(
                f"out_indices {bad} out of range; this model has {len(available)} feature maps "
                f"(indices 0..{len(available) - 1})"
            )
        self.model = model
        self.out_indices = tuple(sorted(set(out_indices)))
        self.feature_info = [available[index] for index in self.out_indices]
        self._tap_positions = {info.trunk_index for info in self.feature_info}

    def channels(self) -> list[int]:
        return [info.num_chs for info in self.feature_info]

    def reductions(self) -> list[int]:
        return [info.reduction for info in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.model.check_input(x)
        outputs = []
        last = max(self._tap_positions)
        for index, module in enumerate(self.model.trunk_modules()[: last + 1]):
            x = module(x)
            if index in self._tap_positions:
                outputs.append(x)
        return outputs
