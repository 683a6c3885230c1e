"""ShuffleNet V2 (Ma et al., 2018), built from the architecture table below (paper Table 5), at the table's
four widths or any width between and beyond them (:func:`stage_widths`)."""

from __future__ import annotations

import bisect
import math
from functools import partial

from torch import nn

from shufflenet._validation import require_positive
from shufflenet.blocks import ConvBNAct, ShuffleV2Unit
from shufflenet.blocks.shufflenet_v2 import Layout
from shufflenet.models._base import ClassifierNet, TrunkPiece

# Paper Table 5: Conv1 3x3 s2 (24) -> MaxPool 3x3 s2 -> stages of 4, 8, 4 units (first unit stride 2)
# -> Conv5 1x1 -> GlobalPool -> FC. Output channels per stage and of Conv5, per complexity level.
STEM_CHANNELS = 24
STAGE_NAMES = ("stage2", "stage3", "stage4")
STAGE_REPEATS = (4, 8, 4)
STAGE_WIDTHS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
SCALE_TAGS = {0.5: "x0_5", 1.0: "x1_0", 1.5: "x1_5", 2.0: "x2_0"}
DROPOUT_2X = 0.2  # the authors' release adds dropout before the FC of the 2x net only
# Between the table's widths (stage_widths): every stage doubles the one before, as in each row of Table 5;
# widths stay even because the stride-1 unit splits its input in halves; and stage 2 keeps more than the
# stem's 24 channels, which the first unit's shortcut carries on (paper layout), so its main branch adds
# at least 4.
STAGE_GROWTH = (1, 2, 4)
WIDTH_ROUND_TO = 2
MIN_STAGE2_WIDTH = STEM_CHANNELS + 4


def stage_widths(scale: float) -> tuple[int, int, int, int]:
    """Output widths of stages 2-4 and of conv5 at width multiplier ``scale`` (Ma et al. 2018, Table 5).

    At 0.5x, 1x, 1.5x and 2x these are Table 5's rows exactly. In between, stage 2's width is interpolated
    linearly between the two nearest rows (below 0.5x and above 2x, extrapolated along the nearest
    segment), rounded to an even number, at least :data:`MIN_STAGE2_WIDTH`; stages 3 and 4 double it.
    conv5 is a step, as in the table: 1024 below 2x, 2048 from 2x on.
    """
    require_positive(scale, "scale")
    scales = sorted(STAGE_WIDTHS)
    # The table's segment that holds ``scale``; beyond the table, the segment at that end.
    upper = min(max(bisect.bisect_left(scales, scale), 1), len(scales) - 1)
    low, high = scales[upper - 1], scales[upper]
    low_width, high_width = STAGE_WIDTHS[low][0], STAGE_WIDTHS[high][0]
    stage2 = low_width + (high_width - low_width) * (scale - low) / (high - low)
    stage2 = max(MIN_STAGE2_WIDTH, WIDTH_ROUND_TO * math.floor(stage2 / WIDTH_ROUND_TO + 0.5))
    # conv5 as in the widest row at or below ``scale`` (the narrowest row's below the table).
    head = STAGE_WIDTHS[scales[max(bisect.bisect_right(scales, scale) - 1, 0)]][-1]
    return (*(stage2 * growth for growth in STAGE_GROWTH), head)


class ShuffleNetV2(ClassifierNet):
    """ShuffleNet V2 at width multiplier ``scale``: Table 5's rows at 0.5, 1, 1.5 and 2, the rule of
    :func:`stage_widths` at any other positive ``scale``.

    ``layout="paper"`` (default) follows the authors' release and reaches the paper's FLOPs;
    ``layout="torchvision"`` splits stride-2 units evenly and loads torchvision's
    ``shufflenet_v2_x*`` weights key for key (see :class:`ShuffleV2Unit`). ``drop_rate`` defaults to 0.2
    for the paper's 2x net (and wider, where conv5 is 2048 too) and 0 otherwise. ``small_input=True``
    makes the stem stride 1 without max-pool, for 28-32 px images.
    """

    def __init__(
        self,
        *,
        scale: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        layout: Layout = "paper",
        shuffle: bool = True,
        small_input: bool = False,
        drop_rate: float | None = None,
    ) -> None:
        if drop_rate is None:
            drop_rate = DROPOUT_2X if scale >= max(STAGE_WIDTHS) and layout == "paper" else 0.0
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        *widths, head_channels = stage_widths(scale)
        self.scale, self.layout = scale, layout
        stem_stride = 1 if small_input else 2
        self.conv1 = ConvBNAct(in_chans, STEM_CHANNELS, kernel_size=3, stride=stem_stride)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        pieces = [
            TrunkPiece("conv1", STEM_CHANNELS, stem_stride),
            TrunkPiece("maxpool", STEM_CHANNELS, stem_stride),
        ]
        in_channels = STEM_CHANNELS
        for name, repeats, width in zip(STAGE_NAMES, STAGE_REPEATS, widths, strict=True):
            units = []
            for unit_index in range(repeats):
                stride = 2 if unit_index == 0 else 1
                units.append(ShuffleV2Unit(in_channels, width, stride=stride, layout=layout, shuffle=shuffle))
                in_channels = width
            setattr(self, name, nn.Sequential(*units))
            pieces.append(TrunkPiece(name, width, 2))
        self.conv5 = ConvBNAct(in_channels, head_channels)
        self._set_interface(pieces, "conv5", head_channels)


MODEL_BUILDERS = {
    f"shufflenet_v2_{tag}": partial(ShuffleNetV2, scale=scale) for scale, tag in SCALE_TAGS.items()
}
