"""MobileNet V2 (Sandler et al., 2018), built from the architecture table below (paper Table 2)."""

from __future__ import annotations

from functools import partial

from torch import nn

from shufflenet._validation import require_positive
from shufflenet.blocks import ConvBNAct, InvertedResidual, make_divisible
from shufflenet.models._base import ClassifierNet, TrunkPiece, small_input_strides

# Paper Table 2: a 3x3 stride-2 conv with 32 filters, then bottleneck sequences given as
# (expansion t, output channels c, repeats n, first stride s), then a 1x1 conv to 1280, pooling and FC.
STEM_CHANNELS = 32
BOTTLENECKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
HEAD_CHANNELS = 1280
WIDTH_TAGS = {1.0: "x1_0", 1.4: "x1_4", 0.75: "x0_75", 0.5: "x0_5", 0.35: "x0_35"}  # section 6.1
ROUND_TO = 8
DROPOUT = 0.2


class MobileNetV2(ClassifierNet):
    """MobileNet V2 with width multiplier ``alpha``: ReLU6, linear bottlenecks, inverted residuals.

    Widths are ``alpha`` times Table 2's, rounded to a multiple of 8; the final 1x1 conv keeps 1280
    channels for ``alpha < 1`` (section 6.1) and scales above 1. Layers sit in ``features`` and
    ``classifier`` like torchvision's ``mobilenet_v2``, so its weights load (see
    :func:`shufflenet.registry.load_torchvision_weights`). ``small_input=True`` makes the stem and the
    first strided bottleneck stride 1 (total stride 8), for 28-32 px images.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        drop_rate: float = DROPOUT,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        require_positive(alpha, "alpha")
        self.alpha = alpha
        stem_channels = make_divisible(STEM_CHANNELS * alpha, ROUND_TO)
        head_channels = make_divisible(HEAD_CHANNELS * max(1.0, alpha), ROUND_TO)
        stem_stride, *first_strides = small_input_strides([2] + [s for *_, s in BOTTLENECKS], small_input)
        layers: list[nn.Module] = [
            ConvBNAct(in_chans, stem_channels, kernel_size=3, stride=stem_stride, activation=nn.ReLU6)
        ]
        pieces = [TrunkPiece("features.0", stem_channels, stem_stride)]
        in_channels = stem_channels
        for (expansion, channels, repeats, _), first_stride in zip(BOTTLENECKS, first_strides, strict=True):
            out_channels = make_divisible(channels * alpha, ROUND_TO)
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                layers.append(InvertedResidual(in_channels, out_channels, stride=stride, expansion=expansion))
                pieces.append(TrunkPiece(f"features.{len(layers) - 1}", out_channels, stride))
                in_channels = out_channels
        layers.append(ConvBNAct(in_channels, head_channels, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self._set_interface(pieces, f"features.{len(layers) - 1}", head_channels)


MODEL_BUILDERS = {
    f"mobilenet_v2_{tag}": partial(MobileNetV2, alpha=alpha) for alpha, tag in WIDTH_TAGS.items()
}
