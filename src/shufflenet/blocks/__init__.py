"""One module per paper unit."""

from shufflenet.blocks.common import ConvBNAct, SqueezeExcite, make_divisible
from shufflenet.blocks.mobilenet import DepthwiseSeparable, InvertedResidual
from shufflenet.blocks.peers import ResNetUnit, ResNeXtUnit, VGGUnit
from shufflenet.blocks.shift import CSCUnit, FEBlock, InvertedBottleneck, PoolBottleneck, fe_block_split
from shufflenet.blocks.shufflenet_v1 import ShuffleV1Unit
from shufflenet.blocks.shufflenet_v2 import ShuffleV2Unit

__all__ = [
    "CSCUnit",
    "ConvBNAct",
    "DepthwiseSeparable",
    "FEBlock",
    "InvertedBottleneck",
    "InvertedResidual",
    "PoolBottleneck",
    "ResNeXtUnit",
    "ResNetUnit",
    "ShuffleV1Unit",
    "ShuffleV2Unit",
    "SqueezeExcite",
    "VGGUnit",
    "fe_block_split",
    "make_divisible",
]
