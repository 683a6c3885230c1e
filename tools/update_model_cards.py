"""Rewrite the measured fields (params, mflops) of src/shufflenet/model_cards.yaml for every registered model.

Models are counted at 224x224 with 1000 classes unless their family file says otherwise
(``CARD_INPUT_SIZE``, ``CARD_NUM_CLASSES``: the CIFAR-native ShiftResNets use 32 and 10); the card then
records ``input_size`` and ``num_classes``. Paper fields (paper_mflops, paper_params_m, paper_top1_err,
source, note) are typed from the papers and kept as they are; ``tests/test_registry.py`` checks that the
measured fields match the code.

    python tools/update_model_cards.py
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import yaml

from shufflenet.models import fenet, mobilenet_v1, mobilenet_v2, shiftresnet, shufflenet_v1, shufflenet_v2
from shufflenet.profile import profile
from shufflenet.registry import create_model, list_models

CARDS = Path(__file__).resolve().parents[1] / "src" / "shufflenet" / "model_cards.yaml"
HEADER = """\
# Model cards: one entry per registered model. params and mflops (multiply-adds of conv and FC layers at
# 224x224, 1000 classes) are written by `python tools/update_model_cards.py` and checked by the tests;
# the paper_* fields, source and note are the papers' own figures, typed from the cited table.
# CIFAR-native models (ShiftResNet) are counted at their own input_size and num_classes (32x32, 10
# classes: the size they are built for and the head of the reference parameter counts), given on the card.
"""
FAMILIES = {
    shufflenet_v1: "ShuffleNet V1",
    shufflenet_v2: "ShuffleNet V2",
    mobilenet_v1: "MobileNet V1",
    mobilenet_v2: "MobileNet V2",
    shiftresnet: "ShiftResNet",
    fenet: "FE-Net",
}
DEFAULT_INPUT_SIZE, DEFAULT_NUM_CLASSES = 224, 1000
PAPER_FIELDS = ("paper_mflops", "paper_params_m", "paper_top1_err", "paper_counts", "source", "note")


def family_of(name: str) -> tuple[str, ModuleType]:
    for module, family in FAMILIES.items():
        if name in module.MODEL_BUILDERS:
            return family, module
    raise KeyError(name)


def main() -> None:
    existing = yaml.safe_load(CARDS.read_text()) if CARDS.exists() else {}
    cards = {}
    for name in list_models():
        family, module = family_of(name)
        size = getattr(module, "CARD_INPUT_SIZE", DEFAULT_INPUT_SIZE)
        classes = getattr(module, "CARD_NUM_CLASSES", DEFAULT_NUM_CLASSES)
        stats = profile(create_model(name, num_classes=classes), (size, size))
        old = existing.get(name, {})
        card = {"family": family, "params": stats.params, "mflops": round(stats.mflops, 2)}
        if (size, classes) != (DEFAULT_INPUT_SIZE, DEFAULT_NUM_CLASSES):
            card.update(input_size=size, num_classes=classes)
        card.update({key: old[key] for key in PAPER_FIELDS if old.get(key) is not None})
        cards[name] = card
    CARDS.write_text(HEADER + yaml.safe_dump(cards, sort_keys=False, width=110))
    print(f"wrote {len(cards)} cards to {CARDS}")


if __name__ == "__main__":
    main()
