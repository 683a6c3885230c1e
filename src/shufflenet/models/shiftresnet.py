"""ShiftResNet (Wu et al., 2018) with the shift layers of Chen et al. 2019 ("All You Need is a Few Shifts",
section 4.1 and Table 1): He et al.'s CIFAR ResNet with every basic block replaced by a conv-shift-conv
unit."""

from __future__ import annotations

from functools import partial

from torch import nn

from shufflenet.blocks import ConvBNAct
from shufflenet.blocks.shift import SHIFT_KINDS, CSCUnit
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


class ShiftResNet(ClassifierNet):
    """ShiftResNet-``depth`` for 32x32 inputs: a 3x3 stem (16 channels, stride 1), three stages of
    :class:`~shufflenet.blocks.CSCUnit` at widths 16/32/64 (the first unit of stages 2 and 3 has stride
    2), GAP and FC.

    ``shift``: ``"ssl"`` (the Sparse Shift Layer of Chen et al. 2019), ``"grouped"`` (ShiftNet's fixed shift)
    or ``"none"`` (Table 1's "1x1 only": the spatial mixing comes only from the three strided steps);
    ``ssl_init`` is the SSLs' start, ``"grouped"`` (the 3x3 window over channel groups) or ``"zero"``.

    Each unit's hidden width is ``expansion`` times its OUTPUT width. With that, the grouped and 1x1-only
    variants have exactly the reference counts (CIFAR-10 head): ShiftResNet-20 e=1/3/6/9 34,906 / 95,642 /
    186,746 / 277,850, ShiftResNet-56 102,106 / 294,554 / 583,226 / 871,898; the SSL variant adds its
    displacements ``(alpha, beta)``, 2 parameters per hidden channel. ``small_input`` is accepted so
    that every family takes the same arguments, and ignored: the network is already CIFAR-sized.
    """

    def __init__(
        self,
        *,
        depth: int = 20,
        expansion: int = DEFAULT_EXPANSION,
        shift: str = "ssl",
        ssl_init: str = "grouped",
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
        self.depth, self.expansion, self.shift = depth, expansion, shift
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
                    )
                )
                pieces.append(TrunkPiece(f"layer{stage_index}.{unit_index}", channels, stride))
                in_channels = channels
            self.add_module(f"layer{stage_index}", nn.Sequential(*units))
        self._set_interface(pieces, None, in_channels)


# Chen et al. 2019, Table 2 lists 96 shifted channels for block2.1 (16 -> 32), i.e. 6x its INPUT width, but
# the reference parameter counts above need 6x the OUTPUT width (192), as ShiftNet's release builds it; the
# counts are the better-checked figure, so the expansion follows them.
MODEL_BUILDERS = {
    f"shiftresnet{depth}_{tag}": partial(ShiftResNet, depth=depth, shift=shift)
    for depth in DEPTHS
    for shift, tag in SHIFT_TAGS.items()
}
