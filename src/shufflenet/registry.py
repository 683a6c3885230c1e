"""One registry for every family: ``create_model``, ``list_models``, model cards and torchvision weights."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from shufflenet._settings import convert
from shufflenet._validation import state_dict_mismatch
from shufflenet.models import fenet, mobilenet_v1, mobilenet_v2, shiftresnet, shufflenet_v1, shufflenet_v2
from shufflenet.models._base import ClassifierNet, FeatureExtractor
from shufflenet.ops import remove_shifts

_BUILDERS: dict[str, Callable[..., ClassifierNet]] = {
    **shufflenet_v1.MODEL_BUILDERS,
    **shufflenet_v2.MODEL_BUILDERS,
    **mobilenet_v1.MODEL_BUILDERS,
    **mobilenet_v2.MODEL_BUILDERS,
    **shiftresnet.MODEL_BUILDERS,
    **fenet.MODEL_BUILDERS,
}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"shufflenet_v1_g3_*"``)."""
    return sorted(name for name in _BUILDERS if fnmatch.fnmatchcase(name, pattern))


def _unknown_name_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, _BUILDERS, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `shufflenet models` for the list"
    return ValueError(f"unknown model {name!r}; {hint}")


def model_arguments(name: str) -> dict[str, Any]:
    """The arguments model ``name``'s builder takes, each with its declared type (``scale: float``, ...)."""
    if name not in _BUILDERS:
        raise _unknown_name_error(name)
    builder = _BUILDERS[name]
    hints = typing.get_type_hints(builder.func.__init__)
    return {key: hints.get(key, Any) for key in inspect.signature(builder.func).parameters}


def check_model_args(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` of model ``name``'s builder arguments, each converted to the type the builder declares
    (``"maybe"`` is no bool, ``1.5`` no int); a ValueError for an unknown model, argument or bad value."""
    if name not in _BUILDERS:
        raise _unknown_name_error(name)
    builder = _BUILDERS[name]
    accepted = inspect.signature(builder.func).parameters
    unknown = sorted(set(overrides) - set(accepted) - {"remove_shifts"})
    if unknown:
        valid = ", ".join(p for p in accepted if p not in ("num_classes", "in_chans"))
        raise ValueError(f"{name} takes no argument {', '.join(unknown)}; valid overrides: {valid}")
    hints = {**typing.get_type_hints(builder.func.__init__), "remove_shifts": list[str] | None}
    return {key: convert(f"{key} of {name}", value, hints.get(key, Any)) for key, value in overrides.items()}


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    features_only: bool = False,
    out_indices: tuple[int, ...] | list[int] | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """Build a registered model, e.g. ``create_model("shufflenet_v1_g3_x1_0", num_classes=10)``.

    ``overrides`` change the builder's arguments (``groups``, ``scale``, ``shuffle``, ``layout``,
    ``small_input``, ``drop_rate``, ...). ``remove_shifts=[layer names]`` replaces those shift layers by
    identities (Chen et al. 2019, Table 3), for any model that has them. ``features_only=True`` returns a
    :class:`FeatureExtractor` giving the maps at ``out_indices`` (default: all, one per resolution).
    """
    overrides = check_model_args(name, overrides)
    removed_shifts = overrides.pop("remove_shifts", None) or ()
    model = _BUILDERS[name](num_classes=num_classes, in_chans=in_chans, **overrides)
    remove_shifts(model, removed_shifts)
    if features_only:
        return FeatureExtractor(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices only applies with features_only=True")
    return model


PAPER_COUNTS = ("conv", "conv+fc")


@dataclass(frozen=True)
class ModelCard:
    """A registered model's figures: ours (params and MFLOPs, counted at ``input_size`` squared with
    ``num_classes`` classes: 224 and 1000 except for CIFAR-native models) beside the paper's.

    ``mflops`` counts conv and FC multiply-adds. ``paper_counts`` says which layers ``paper_mflops``
    counts: ``"conv+fc"`` (the default, as ours) or ``"conv"`` (Zhang et al. 2018, Tables 1 and 2 leave out
    the FC, while its Table 5 includes it); :meth:`mflops_as_paper_counts` is ours counted the same way.
    """

    name: str
    family: str
    params: int
    mflops: float
    input_size: int = 224
    num_classes: int = 1000
    paper_mflops: float | None = None
    paper_counts: str = "conv+fc"
    paper_params_m: float | None = None
    paper_top1_err: float | None = None
    source: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if self.paper_counts not in PAPER_COUNTS:
            raise ValueError(
                f"model card {self.name}: paper_counts must be one of {', '.join(PAPER_COUNTS)}, "
                f"got {self.paper_counts!r}"
            )

    def mflops_as_paper_counts(self) -> float:
        """Our MFLOPs counted as the paper's row counts them: ``mflops`` less the FC layer's
        multiply-adds (features x classes) where ``paper_counts`` is ``"conv"``."""
        if self.paper_counts == "conv+fc":
            return self.mflops
        features = create_model(self.name, num_classes=0).num_features
        return self.mflops - features * self.num_classes / 1e6


def model_cards() -> dict[str, ModelCard]:
    """Every registered model's card, read from the ``model_cards.yaml`` shipped with the package."""
    text = resources.files("shufflenet").joinpath("model_cards.yaml").read_text(encoding="utf-8")
    entries = yaml.safe_load(text)
    return {name: ModelCard(name=name, **fields) for name, fields in entries.items()}


def model_card(name: str) -> ModelCard:
    """The card of one registered model."""
    cards = model_cards()
    if name not in cards:
        raise _unknown_name_error(name)
    return cards[name]


# torchvision names a few layers differently; each family's renames, theirs -> ours.
_TORCHVISION_RENAMES: dict[type, dict[str, str]] = {
    shufflenet_v2.ShuffleNetV2: {},
    mobilenet_v2.MobileNetV2: {"classifier.1.": "classifier."},
}


def load_torchvision_weights(
    model: torch.nn.Module, state_dict_or_path: Mapping[str, torch.Tensor] | str | Path
) -> torch.nn.Module:
    """Load a torchvision ``shufflenet_v2_x*`` or ``mobilenet_v2`` state_dict (or a file holding one,
    read with ``weights_only=True``) into the matching model of ours, checking every key and shape."""
    target = model.model if isinstance(model, FeatureExtractor) else model
    renames = _TORCHVISION_RENAMES.get(type(target))
    if renames is None:
        raise ValueError(
            f"torchvision has no counterpart of {type(target).__name__}; "
            "compatible models: shufflenet_v2_* with layout='torchvision', mobilenet_v2_*"
        )
    if isinstance(state_dict_or_path, (str, Path)):
        state_dict = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    else:
        state_dict = state_dict_or_path
    renamed = {}
    for key, value in state_dict.items():
        for theirs, ours in renames.items():
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
        renamed[key] = value
    mismatch = state_dict_mismatch(target.state_dict(), renamed)
    if mismatch:
        hint = (
            "build it with layout='torchvision'"
            if getattr(target, "layout", None) == "paper"
            else "check the model name, width and num_classes"
        )
        raise ValueError(f"torchvision weights do not fit {type(target).__name__}: {mismatch}; {hint}")
    target.load_state_dict(renamed)
    return model
