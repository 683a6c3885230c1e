"""shufflenet: paper-faithful efficient CNNs for mobile-class compute, with exact complexity accounting."""

from shufflenet.ops import channel_shuffle
from shufflenet.profile import profile
from shufflenet.registry import (
    create_model,
    list_models,
    load_torchvision_weights,
    model_card,
    model_cards,
)

__version__ = "0.1.0"
__all__ = [
    "channel_shuffle",
    "create_model",
    "list_models",
    "load_torchvision_weights",
    "model_card",
    "model_cards",
    "profile",
]
