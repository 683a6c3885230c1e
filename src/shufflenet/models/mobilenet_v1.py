"""MobileNet V1 (Howard et al., 2017), built from the architecture table below (paper Table 1)."""

from __future__ import annotations

from functools import partial

from torch import nn

from shufflenet._validation import require_positive
from shufflenet.blocks import ConvBNAct, DepthwiseSeparable, make_divisible
from shufflenet.models._base import ClassifierNet, TrunkPiece, small_input_strides

# Paper Table 1: a 3x3 stride-2 conv with 32 filters, then depthwise-separable layers given as
# (output channels, stride), then average pooling and the FC. (The table's second-to-last "s2" is a
# known typo: the released nets keep 7x7 there, i.e. stride 1.)
STEM_CHANNELS = 32
SEPARABLE_LAYERS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
WIDTH_TAGS = {1.0: "x1_0", 0.75: "x0_75", 0.5: "x0_5", 0.25: "x0_25"}  # section 4.2 width multipliers
ROUND_TO = 8


class MobileNetV1(ClassifierNet):
    """MobileNet V1 with width multiplier ``alpha`` (section 4.2); any input resolution (the resolution
    multiplier rho of section 4.3 is the input size). Every layer's width is ``alpha`` times Table 1's,
    rounded to a multiple of 8 as in the reference implementation. ``small_input=True`` makes the stem
    and the first strided layer stride 1 (total stride 8), for 28-32 px images."""

    classifier_name = "classifier"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        require_positive(alpha, "alpha")
        self.alpha = alpha
        stem_channels = make_divisible(STEM_CHANNELS * alpha, ROUND_TO)
        stem_stride, *strides = small_input_strides([2] + [s for _, s in SEPARABLE_LAYERS], small_input)
        layers: list[nn.Module] = [ConvBNAct(in_chans, stem_channels, kernel_size=3, stride=stem_stride)]
        pieces = [TrunkPiece("features.0", stem_channels, stem_stride)]
        in_channels = stem_channels
        for index, ((channels, _), stride) in enumerate(zip(SEPARABLE_LAYERS, strides, strict=True), start=1):
            out_channels = make_divisible(channels * alpha, ROUND_TO)
            layers.append(DepthwiseSeparable(in_channels, out_channels, stride=stride))
            pieces.append(TrunkPiece(f"features.{index}", out_channels, stride))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self._set_interface(pieces, None, in_channels)


MODEL_BUILDERS = {
    f"mobilenet_v1_{tag}": partial(MobileNetV1, alpha=alpha) for alpha, tag in WIDTH_TAGS.items()
}
