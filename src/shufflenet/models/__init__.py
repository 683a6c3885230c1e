"""Model families, one file each; every file ends with ``MODEL_BUILDERS``, read by the registry."""

from shufflenet.models._base import ClassifierNet, FeatureExtractor, FeatureInfo
from shufflenet.models.fenet import FENet
from shufflenet.models.mobilenet_v1 import MobileNetV1
from shufflenet.models.mobilenet_v2 import MobileNetV2
from shufflenet.models.shiftresnet import ShiftResNet
from shufflenet.models.shufflenet_v1 import ShuffleNetV1
from shufflenet.models.shufflenet_v2 import ShuffleNetV2

__all__ = [
    "ClassifierNet",
    "FENet",
    "FeatureExtractor",
    "FeatureInfo",
    "MobileNetV1",
    "MobileNetV2",
    "ShiftResNet",
    "ShuffleNetV1",
    "ShuffleNetV2",
]
