"""ShiftResNet (Wu et al., 2018) with the shift layers of Chen et al. 2019 ("All You Need is a Few Shifts",
section 4.1 and Table 1): He et al.'s CIFAR ResNet with every basic block replaced by a conv-shift-conv
unit."""

from __future__ import annotations

from functools import partial

from torch import nn

from shufflenet.blocks import ConvBNAct
from shufflenet.blocks.shift import EXPANSION_BASES, SHIFT_KINDS, CSCUnit
from shufflenet.models._base import ClassifierNet, TrunkPiece

# He et al.'s CIFAR ResNet (section 4.2): a 3x3 conv with 16 filters at 32x32, then three stages of
# (depth - 2) / 6 units each, as (output channels, first stride); GAP and FC.
STEM_CHANNELS = 16
STAGES = ((16, 1), (32, 2), (64, 2))
DEPTHS = (20, 56)  # Chen et al. 2019, Table 1
# Expansion rates of ShiftNet's ablation; Chen et al. 2019 run their ablations at 6.
EXPANSIONS = (1, 3, 6, 9)
DEFAULT_EXPANSION = 6
SHIFT_TAGS = {"ssl": "ssl", "grouped": "grouped", "none": "1x1"}
# CIFAR-native: the model cards count these networks at 32x32 with a CIFAR-10 head.
CARD_INPUT_SIZE, CARD_NUM_CLASSES = 32, 10


class ShiftResNet(ClassifierNet):
    """ShiftResNet-``depth`` for 32x32 inputs: a 3x3 stem (16 channels, stride 1), three stages of
    :class:`~shufflenet.blocks.CSCUnit` at widths 16/32/64 (the first unit of stages 2 and 3 has stride
    2), GAP and FC.

    ``shift``: ``"ssl"`` (the Sparse Shift Layer of Chen et al. 2019), ``"grouped"`` (ShiftNet's fixed shift)
    or ``"none"`` (Table 1's "1x1 only": the spatial mixing comes only from the three strided steps);
    ``ssl_init`` is the SSLs' start, ``"grouped"`` (the 3x3 window over channel groups) or ``"zero"``.

    ``expand_from`` sets what each unit's hidden (shifted) width multiplies; the two differ only in the
    first unit of stages 2 and 3:

    - ``"in"`` (default, every registered model): ``expansion`` times the unit's INPUT width, as Chen et
      al. 2019, Table 2 lists ShiftResNet-20's shift layers (96, 96, 96, 96, 192, 192, 192, 384, 384
      channels at expansion 6). With a CIFAR-10 head the grouped and 1x1-only networks then have 163,130
      (ShiftResNet-20) and 559,610 (-56) parameters and 27.44 / 84.07 M multiply-adds, i.e. 54.9 / 168.1
      MFLOPs counted as 2x multiply-adds, against Table 1's 0.16 M / 53 M and 0.55 M / 166 M.
    - ``"out"``: ``expansion`` times the OUTPUT width, as the ShiftNet release builds it; this reproduces
      the reference counts (CIFAR-10 head): ShiftResNet-20 e=1/3/6/9 34,906 / 95,642 / 186,746 /
      277,850, ShiftResNet-56 102,106 / 294,554 / 583,226 / 871,898.

    The SSL variant adds its displacements ``(alpha, beta)``, 2 parameters per shifted channel (3,456
    at ShiftResNet-20, e=6, ``"in"``). ``small_input`` is accepted so that every family takes the same
    arguments, and ignored: the network is already CIFAR-sized.
    """

    def __init__(
        self,
        *,
        depth: int = 20,
        expansion: int = DEFAULT_EXPANSION,
        shift: str = "ssl",
        ssl_init: str = "grouped",
        expand_from: str = "in",
        num_classes: int = 10,
        in_chans: int = 3,
        small_input: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (e.g. {', '.join(map(str, DEPTHS))}), got {depth}")
        if expansion < 1:
            raise ValueError(
                f"expansion must be a positive integer (the paper uses 1, 3, 6, 9), got {expansion}"
            )
        if shift not in SHIFT_KINDS:
            raise ValueError(f"shift must be one of {', '.join(SHIFT_KINDS)}, got {shift!r}")
        if expand_from not in EXPANSION_BASES:
            raise ValueError(
                f"expand_from must be 'in' (Chen et al. 2019, Table 2: the expansion times each unit's "
                f"input width) or 'out' (the ShiftNet release: times its output width), got {expand_from!r}"
            )
        self.depth, self.expansion, self.shift, self.expand_from = depth, expansion, shift, expand_from
        units_per_stage = (depth - 2) // 6
        self.stem = ConvBNAct(in_chans, STEM_CHANNELS, kernel_size=3)
        pieces = [TrunkPiece("stem", STEM_CHANNELS, 1)]
        in_channels = STEM_CHANNELS
        for stage_index, (channels, first_stride) in enumerate(STAGES, start=1):
            units = []
            for unit_index in range(units_per_stage):
                stride = first_stride if unit_index == 0 else 1
                units.append(
                    CSCUnit(
                        in_channels,
                        channels,
                        stride=stride,
                        expansion=expansion,
                        shift=shift,
                        ssl_init=ssl_init,
                        expand_from=expand_from,
                    )
                )
                pieces.append(TrunkPiece(f"layer{stage_index}.{unit_index}", channels, stride))
                in_channels = channels
            self.add_module(f"layer{stage_index}", nn.Sequential(*units))
        self._set_interface(pieces, None, in_channels)


# Table 1's three ShiftResNet rows (1x1 only, grouped shift, SSL) at each depth differ only in the shift
# step; all take the expansion from the unit's input width, as Chen et al. 2019, Table 2 counts the shifted
# channels, so they share one structure and Table 1's params / FLOPs.
MODEL_BUILDERS = {
    f"shiftresnet{depth}_{tag}": partial(ShiftResNet, depth=depth, shift=shift, expand_from="in")
    for depth in DEPTHS
    for shift, tag in SHIFT_TAGS.items()
}
