"""FE-Net (Chen et al. 2019, "All You Need is a Few Shifts", Fig. 3, Fig. 4 and Table 4): inverted bottlenecks
whose spatial op is a Sparse Shift Layer, grouped in FE-Blocks that mix the feature maps in progressively.

Complexity. Table 4 leaves three things open: where IB-Pool pools (the authors' release expands at the
input resolution, then pools), what the expansion t multiplies (the release: the unit's output width;
MobileNet V2 [30], whose unit this is, and Chen et al. 2019's own Table 2: the input width), and how the
1380-wide head scales with the width. Conv + FC multiply-adds and params (SSL displacements included) at
224x224, 1000 classes, from :func:`shufflenet.profile.profile`, against the paper's 301 M / 3.7 M (1.0x) and
563 M / 5.9 M (1.375x, Table 5); "scaled" is ``1380 * max(1, width)`` (1898 at 1.375x):

=============================== ===================== ===================== =====================
pool, expansion of, head        1.0x MAdds / params   1.375x MAdds / params worst MAdds / params
=============================== ===================== ===================== =====================
after, out, 1932 (as released)  417.9 M / 4.623 M     773.2 M / 6.745 M     +38.9% / +0.92 M
before, out, 1932               307.2 M / 4.623 M     563.7 M / 6.745 M     +2.0% / +0.92 M
before, out, 1380               299.7 M / 3.929 M     553.6 M / 5.998 M     -1.7% / +0.23 M
before, out, scaled             299.7 M / 3.929 M     563.1 M / 6.699 M     -0.4% / +0.80 M
after, in, 1380                 299.7 M / 3.535 M     553.6 M / 5.255 M     -1.7% / -0.65 M
after, in, 1932                 307.2 M / 4.230 M     563.7 M / 6.002 M     +2.0% / +0.53 M
**after, in, scaled** (default) 299.7 M / 3.535 M     563.1 M / 5.956 M     -0.4% / -0.17 M
=============================== ===================== ===================== =====================

Pooling after an input-relative expansion costs exactly what pooling before an output-relative one does
(the expansion is half as wide at four times the positions), so the MAdds alone cannot tell them apart;
the parameters can: only the input-relative expansion with the scaled head lands near both widths
(MAdds -0.4% and 0.0%, params -0.17 M and +0.06 M; every other reading is 0.23 M or more off
somewhere). It also keeps closest to the paper's own words: Fig. 4 makes the pool IB-Pool's spatial op,
in the SSL's place; Table 2 counts t times the input width; and MobileNet V2 scales its head above 1x
only. Each row is ``FENet(pool=..., expand_from=..., head_channels=...)``. No
reading reaches the 3.7 M of 1.0x (between 3.535 M and 3.929 M), so that card keeps the figure in its
note. FE-Net (DW) at the default reading: 318.2 M / 3.583 M (1.0x), 588.6 M / 6.023 M (1.375x); Table 6
gives no complexity for it.

FE-Net with squeeze-and-excitation (Chen et al. 2019, Fig. 7: 566 MFLOPs, 23.5% top-1 error at 1.375x):
the paper does not say where SE sits. Ours puts it in every IB-SSL unit on the expanded channels, after
the SSL, squeezed to a quarter (MobileNet V3's placement): 567.0 M multiply-adds at 1.375x (+0.2%), the
nearest of the placements tried (on the expanded channels squeezed to 1/16: 564.1 M; on the unit's output:
563.2 M; also in IB-Pool after its pool: 567.7 M). SE's 1x1 convs add 3.92 M params (9.88 M in all).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from shufflenet._validation import require_positive
from shufflenet.blocks import ConvBNAct, FEBlock, make_divisible
from shufflenet.blocks.shift import POOL_POSITIONS, SPATIAL_OPS, transition_unit
from shufflenet.models._base import ClassifierNet, TrunkPiece, small_input_strides

# Chen et al. 2019, Table 4 at 1.0x: a 3x3 stride-2 conv with 16 filters (+ BN, no ReLU), then units as
# (kind, expansion t, units n, output channels c, stride s), then a 1x1 conv to 1380 + BN + ReLU, GAP,
# dropout 0.2 and the classifier.
STEM_CHANNELS = 16
UNITS = (
    ("ib_ssl", 4, 1, 16, 1),
    ("ib_pool", 5, 1, 32, 2),
    ("fe_block", 6, 3, 64, 2),
    ("fe_block", 6, 4, 128, 2),
    ("fe_block", 6, 4, 128, 1),
    ("fe_block", 6, 4, 256, 2),
    ("fe_block", 6, 3, 256, 1),
)
HEAD_CHANNELS = 1380
RELEASED_HEAD_CHANNELS = 1932  # the authors' release at 1.0x: 1380 * 1.4
WIDTH_TAGS = {1.0: "x1_0", 1.375: "x1_375"}  # Table 5
SE_WIDTH = 1.375  # Chen et al. 2019, Fig. 7: FE-Net with SE at 566 MFLOPs
DROPOUT = 0.2
# Every FE-Block's input splits into 4 or 8 equal parts, so the base width is kept even.
WIDTH_ROUND_TO = 2


class FENet(ClassifierNet):
    """FE-Net with width multiplier ``width``: base width ``16 * width`` (22 at 1.375x, kept even), every
    channel count of Table 4 scaled with it.

    ``spatial="dw"`` puts a 3x3 depthwise conv + BN where each SSL sits (FE-Net (DW), Table 6).
    ``head_channels`` is the last 1x1 conv's width (default ``1380 * max(1, width)``; the release's 1932
    is :data:`RELEASED_HEAD_CHANNELS`). ``pool`` places IB-Pool's average pool ``"after"`` the expansion
    (default, as released) or ``"before"`` it; ``expand_from`` takes the expansion of the down-sampling
    units relative to their ``"in"`` (default) or ``"out"`` (released) width. The defaults are the
    reading of Table 4 that matches the paper's complexity (module docstring). ``ssl_init``: the SSLs'
    starting displacements, ``"grouped"`` (the 3x3 window over channel groups) or ``"zero"``.
    ``se=True`` adds squeeze-and-excitation to every IB-SSL unit (Fig. 7; placement in the module
    docstring). ``small_input=True`` makes the stem and the first strided unit stride 1 (total stride 8), for
    28-32 px images.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        *,
        width: float = 1.0,
        spatial: str = "ssl",
        head_channels: int | None = None,
        pool: str = "after",
        expand_from: str = "in",
        ssl_init: str = "grouped",
        se: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        drop_rate: float = DROPOUT,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        require_positive(width, "width")
        if spatial not in SPATIAL_OPS:
            raise ValueError(f"spatial must be one of {', '.join(SPATIAL_OPS)}, got {spatial!r}")
        if pool not in POOL_POSITIONS:
            raise ValueError(f"pool must be one of {', '.join(POOL_POSITIONS)}, got {pool!r}")
        if head_channels is None:
            # Scaled above 1x only, as MobileNet V2 treats its 1280; 1.375x gets 1898.
            head_channels = round(HEAD_CHANNELS * max(1.0, width))
        require_positive(head_channels, "head_channels")
        self.width, self.spatial, self.se = width, spatial, se
        base = make_divisible(STEM_CHANNELS * width, WIDTH_ROUND_TO)
        stem_stride, *strides = small_input_strides([2] + [unit[-1] for unit in UNITS], small_input)
        layers: list[nn.Module] = [
            ConvBNAct(in_chans, base, kernel_size=3, stride=stem_stride, activation=None)
        ]
        pieces = [TrunkPiece("features.0", base, stem_stride)]
        in_channels = base
        reading = {
            "spatial": spatial,
            "pool": pool,
            "expand_from": expand_from,
            "ssl_init": ssl_init,
            "se": se,
        }
        for (kind, expansion, units, channels, _), stride in zip(UNITS, strides, strict=True):
            out_channels = channels // STEM_CHANNELS * base
            shape = {"stride": stride, "expansion": expansion, **reading}
            if kind in ("ib_ssl", "ib_pool"):
                layer: nn.Module = transition_unit(in_channels, out_channels, **shape)
            else:
                layer = FEBlock(in_channels, out_channels, units=units, **shape)
            layers.append(layer)
            pieces.append(TrunkPiece(f"features.{len(layers) - 1}", out_channels, stride))
            in_channels = out_channels
        layers.append(ConvBNAct(in_channels, head_channels))
        self.features = nn.Sequential(*layers)
        self._set_interface(pieces, f"features.{len(layers) - 1}", head_channels)


MODEL_BUILDERS = {
    **{f"fenet_{tag}": partial(FENet, width=width) for width, tag in WIDTH_TAGS.items()},
    **{f"fenet_dw_{tag}": partial(FENet, width=width, spatial="dw") for width, tag in WIDTH_TAGS.items()},
    f"fenet_{WIDTH_TAGS[SE_WIDTH]}_se": partial(FENet, width=SE_WIDTH, se=True),
}
