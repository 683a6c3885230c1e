"""ShuffleNet V1 (Zhang et al., 2017), built from the architecture table below (paper Table 1)."""

from __future__ import annotations

import math
from functools import partial

from torch import nn

from shufflenet._validation import require_positive
from shufflenet.blocks import ConvBNAct, ShuffleV1Unit, make_divisible
from shufflenet.models._base import ClassifierNet, TrunkPiece

# Paper Table 1, the "1x" network. Conv1 (3x3, stride 2) and MaxPool (3x3, stride 2), then three stages
# whose first unit has stride 2; widths are the stages' output channels for each group count g.
STEM_CHANNELS = 24
MIN_STEM_CHANNELS = 8
STAGE_NAMES = ("stage2", "stage3", "stage4")
STAGE_REPEATS = (4, 8, 4)  # Table 1 "Repeat": 1 stride-2 unit + 3, 7, 3 stride-1 units
STAGE_WIDTHS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
BOTTLENECK_RATIO = 4  # section 3.3: bottleneck channels are 1/4 of the unit's output channels
SCALES = {"x0_25": 0.25, "x0_5": 0.5, "x1_0": 1.0, "x1_5": 1.5, "x2_0": 2.0}  # Table 2 "s x"


def stage_widths(groups: int, scale: float) -> tuple[int, tuple[int, ...]]:
    """Stem and stage widths of "ShuffleNet s x" (section 3.3: every layer's filters scaled by s).

    Rounding rule: each stage width is ``s`` times Table 1's, rounded to the nearest multiple of ``4 g``
    (halves up, never more than 10% below), so the bottleneck, a quarter of it, splits into g groups.
    The stem is 24 times the largest power of two not above ``s`` (the authors' release: 12 at 0.5x, 24
    at 1x and 1.5x, 48 at 2x; 36 at 1.5x would count 299.6 instead of the paper's 292 MFLOPs), at least
    8, rounded up to a multiple of g so that the first unit's branch, ``out - stem``, splits into g
    groups (16 at 0.5x g8, as released). At 1x this is exactly Table 1; at 0.25x it lands on the
    paper's 13 MFLOPs level (Table 2) for every g.
    """
    if groups not in STAGE_WIDTHS:
        raise ValueError(f"groups must be one of {sorted(STAGE_WIDTHS)} (paper Table 1), got {groups}")
    require_positive(scale, "scale")
    stem_target = max(MIN_STEM_CHANNELS, STEM_CHANNELS * 2.0 ** math.floor(math.log2(scale)))
    stem = groups * math.ceil(stem_target / groups)
    widths = tuple(make_divisible(width * scale, BOTTLENECK_RATIO * groups) for width in STAGE_WIDTHS[groups])
    return stem, widths


class ShuffleNetV1(ClassifierNet):
    """ShuffleNet V1 with g groups at scale s (paper Table 1, section 3.3).

    Ablation switches from the paper: ``shuffle=False`` removes every channel shuffle (Table 3),
    ``shallow=True`` keeps half the units of stages 2-4 (Table 5, "shallow"), ``se=True`` adds
    squeeze-and-excitation to each unit (Table 5, "with SE"). ``small_input=True`` makes the stem
    stride 1 without max-pool, for 28-32 px images.
    """

    def __init__(
        self,
        *,
        groups: int = 3,
        scale: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        shuffle: bool = True,
        shallow: bool = False,
        se: bool = False,
        small_input: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        stem, widths = stage_widths(groups, scale)
        self.groups, self.scale = groups, scale
        stem_stride = 1 if small_input else 2
        self.conv1 = ConvBNAct(in_chans, stem, kernel_size=3, stride=stem_stride)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        pieces = [TrunkPiece("conv1", stem, stem_stride), TrunkPiece("maxpool", stem, stem_stride)]
        in_channels = stem
        for stage_index, (name, repeats, width) in enumerate(
            zip(STAGE_NAMES, STAGE_REPEATS, widths, strict=True)
        ):
            units = []
            for unit_index in range(repeats // 2 if shallow else repeats):
                is_first_unit_of_net = stage_index == 0 and unit_index == 0
                units.append(
                    ShuffleV1Unit(
                        in_channels,
                        width,
                        mid_channels=width // BOTTLENECK_RATIO,
                        groups=groups,
                        stride=2 if unit_index == 0 else 1,
                        first_pointwise_groups=1 if is_first_unit_of_net else groups,
                        shuffle=shuffle,
                        se=se,
                    )
                )
                in_channels = width
            setattr(self, name, nn.Sequential(*units))
            pieces.append(TrunkPiece(name, width, 2))
        self._set_interface(pieces, None, in_channels)


MODEL_BUILDERS = {
    f"shufflenet_v1_g{groups}_{tag}": partial(ShuffleNetV1, groups=groups, scale=scale)
    for groups in STAGE_WIDTHS
    for tag, scale in SCALES.items()
}
# Table 5 compares this 26-layer net with the 0.5x one at its budget (40 MFLOPs); halving the units of
# 0.5x leaves 21.6 M, so the width is raised to 0.75x (41.6 M), the nearest scale to that budget.
MODEL_BUILDERS["shufflenet_v1_g3_x0_5_shallow"] = partial(ShuffleNetV1, groups=3, scale=0.75, shallow=True)
MODEL_BUILDERS["shufflenet_v1_g3_x2_0_se"] = partial(ShuffleNetV1, groups=3, scale=2.0, se=True)
