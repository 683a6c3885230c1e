"""Rewrite the measured fields (params, mflops) of src/shufflenet/model_cards.yaml for every registered model.

Paper fields (paper_mflops, paper_params_m, paper_top1_err, source, note) are typed from the papers and
kept as they are; ``tests/test_model_cards.py`` checks that the measured fields match the code.

    python tools/update_model_cards.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

from shufflenet.models import mobilenet_v1, mobilenet_v2, shufflenet_v1, shufflenet_v2
from shufflenet.profile import profile
from shufflenet.registry import create_model, list_models

CARDS = Path(__file__).resolve().parents[1] / "src" / "shufflenet" / "model_cards.yaml"
HEADER = """\
# Model cards: one entry per registered model. params and mflops (multiply-adds of conv and FC layers at
# 224x224, 1000 classes) are written by `python tools/update_model_cards.py` and checked by the tests;
# the paper_* fields, source and note are the papers' own figures, typed from the cited table.
"""
FAMILIES = {
    shufflenet_v1: "ShuffleNet V1",
    shufflenet_v2: "ShuffleNet V2",
    mobilenet_v1: "MobileNet V1",
    mobilenet_v2: "MobileNet V2",
}
PAPER_FIELDS = ("paper_mflops", "paper_params_m", "paper_top1_err", "source", "note")


def family_of(name: str) -> str:
    for module, family in FAMILIES.items():
        if name in module.MODEL_BUILDERS:
            return family
    raise KeyError(name)


def main() -> None:
    existing = yaml.safe_load(CARDS.read_text()) if CARDS.exists() else {}
    cards = {}
    for name in list_models():
        stats = profile(create_model(name), (224, 224))
        old = existing.get(name, {})
        card = {"family": family_of(name), "params": stats.params, "mflops": round(stats.mflops, 2)}
        card.update({key: old[key] for key in PAPER_FIELDS if old.get(key) is not None})
        cards[name] = card
    CARDS.write_text(HEADER + yaml.safe_dump(cards, sort_keys=False, width=110))
    print(f"wrote {len(cards)} cards to {CARDS}")


if __name__ == "__main__":
    main()
