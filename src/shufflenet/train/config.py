"""Training configuration: recipes shipped as YAML (the papers' settings), overridable key by key."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from shufflenet._settings import Interval, convert, parse_yaml, yaml_problem
from shufflenet.registry import check_model_args


@dataclass
class TrainConfig:
    """Every knob of a run. Recipes set a subset; ``--set key=value`` changes any one."""

    recipe: str = "custom"
    model: str = "shufflenet_v2_x0_5"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = True
    skip_bad_images: bool = False
    image_size: int | None = None  # None: the dataset's native size
    augment: str = "crop-flip"  # small-image datasets: crop-flip | crop-flip-erase | flip | none
    train_subset: int | None = None  # first N training samples only (quick experiments, tests)
    val_subset: int | None = None
    epochs: int = 10
    iterations: int | None = None  # optimizer steps; when set, epochs follow from it
    batch_size: int = 128  # global, over all processes
    eval_batch_size: int | None = None
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    lr_base_batch: int | None = None  # when set, lr is for this batch and scales linearly with batch_size
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_bn_and_bias: bool = False  # the authors' release applies no weight decay to BN and biases
    schedule: str = "cosine"  # linear | cosine | step | exponential | constant
    warmup_epochs: float = 0.0
    # A warm-up asked for (warmup_epochs > 0) lasts at least warmup_min_steps, at most warmup_max_fraction
    # of the run: 0.3 epochs of a small set is 3 steps, too few to keep a high learning rate from diverging.
    warmup_min_steps: int = 100
    warmup_max_fraction: float = 0.25
    milestones: list[int] = field(default_factory=list)  # epochs, for schedule: step
    gamma: float = 0.1  # step: factor at each milestone; exponential: factor per epoch
    label_smoothing: float = 0.0
    shift_lambda: float = 0.0  # Chen et al. 2019, eq. 4: lambda times the shift penalty of every SSL
    shift_norm: str = "l1"  # l1 (eq. 4) | l2 (section 4.1: slightly better on CIFAR)
    freeze_shifts_epoch: float | None = None  # SSL displacements stop training here (authors: half-way)
    ema_decay: float | None = None
    bn_recalibration_batches: int = 0
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    precision: str = "float32"  # float64: for numerical checks (e.g. 1 process vs N), not for speed
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    deterministic: bool = False
    device: str | None = None
    cpu_processes: int = 1  # on CPU (outside torchrun): data-parallel single-threaded local processes
    num_workers: int = 0
    seed: int = 0
    eval_every: int | None = None  # epochs; None: every epoch for a val set of <= 5,000 images, else the last
    checkpoint_every: int = 0  # steps; 0 = at epoch ends only
    log_every: int = 20  # steps
    output: str | None = None  # run directory; default runs/<recipe>-<model>
    progress: bool = True

    def run_dir(self) -> Path:
        """Where this run writes its checkpoint, metrics, plots and weights."""
        return Path(self.output) if self.output else Path("runs") / f"{self.recipe}-{self.model}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)
CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("linear", "cosine", "step", "exponential", "constant"),
    "amp": ("none", "bf16", "fp16"),
    "precision": ("float32", "float64"),
    "augment": ("crop-flip", "crop-flip-erase", "flip", "none"),
    "shift_norm": ("l1", "l2"),
}
_POSITIVE, _NON_NEGATIVE, _FRACTION = Interval(0, low_open=True), Interval(0), Interval(0, 1, high_open=True)
# Every number's range (for a list: each item's); the field's type says whether null is allowed too.
RANGES = {
    "image_size": Interval(1),
    "train_subset": Interval(1),  # 0 would mean "no subset" to the data code: the whole set, silently
    "val_subset": Interval(1),
    "epochs": Interval(1),
    "iterations": Interval(1),
    "batch_size": Interval(1),
    "eval_batch_size": Interval(1),
    "lr": _POSITIVE,
    "lr_base_batch": Interval(1),
    "momentum": _FRACTION,
    "weight_decay": _NON_NEGATIVE,
    "warmup_epochs": _NON_NEGATIVE,
    "warmup_min_steps": _NON_NEGATIVE,
    "warmup_max_fraction": Interval(0, 1),
    "milestones": _NON_NEGATIVE,
    "gamma": _POSITIVE,
    "label_smoothing": _FRACTION,
    "shift_lambda": _NON_NEGATIVE,
    "freeze_shifts_epoch": _NON_NEGATIVE,
    "ema_decay": _FRACTION,
    "bn_recalibration_batches": _NON_NEGATIVE,
    "cpu_processes": Interval(1),
    "num_workers": _NON_NEGATIVE,
    "seed": Interval(0, 2**32 - 1),  # numpy's seed range
    "eval_every": Interval(1),
    "checkpoint_every": _NON_NEGATIVE,
    "log_every": Interval(1),
    # detection runs (shufflenet.detect.train.DetectConfig)
    "min_size": Interval(1),
    "max_size": Interval(1),
    "fpn_channels": Interval(1),
    "frozen_maps": _NON_NEGATIVE,
    "box_head": Interval(1),
    "proposals": Interval(1),
    "rois_per_image": Interval(1),
}


DETECTION_RECIPE_PREFIX = "detect-"


def list_recipes(detection: bool = False) -> list[str]:
    """Names of the classification recipes shipped with the package (``detection``: the detection ones,
    named detect-*)."""
    folder = resources.files("shufflenet.train").joinpath("recipes")
    names = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
    return [name for name in names if name.startswith(DETECTION_RECIPE_PREFIX) == detection]


def _read_recipe(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"recipe file {path} not found; give a path to a YAML file or a recipe name")
        text = path.read_text(encoding="utf-8")
        name = path.stem
    else:
        shipped = list_recipes(name_or_path.startswith(DETECTION_RECIPE_PREFIX))
        if name_or_path not in shipped:
            close = difflib.get_close_matches(name_or_path, shipped, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(shipped)}"
            raise ValueError(f"unknown recipe {name_or_path!r}; {hint}")
        text = (
            resources.files("shufflenet.train").joinpath("recipes", f"{name_or_path}.yaml").read_text("utf-8")
        )
        name = name_or_path
    try:
        values = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {name_or_path} is not valid YAML: {yaml_problem(error)}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        kind = type(values).__name__
        raise ValueError(
            f"recipe {name_or_path} must be a mapping of settings (KEY: VALUE lines), got a {kind}"
        )
    values.setdefault("recipe", name)
    return values


def _check_key(key: str, fields: Mapping[str, Any]) -> None:
    if key not in fields:
        close = difflib.get_close_matches(key, fields, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid settings: {', '.join(fields)}"
        raise ValueError(f"unknown training setting {key!r}; {hint}")


def check_setting(key: str, value: Any, config_class: type = TrainConfig) -> Any:
    """``value`` converted to setting ``key``'s type (of ``config_class``, a TrainConfig or a subclass)
    and checked against its range or choices."""
    types = TYPES if config_class is TrainConfig else typing.get_type_hints(config_class)
    _check_key(key, types)
    return convert(key, value, types[key], RANGES.get(key), CHOICES.get(key, ()))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "model_args.small_input=true"]`` -> a dict; values are parsed as YAML scalars, with
    ``1e-3`` a number. Types are checked by :func:`load_config` (or ``create_model``), which know them."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r} (e.g. --set lr=0.05)")
        try:
            value = parse_yaml(text) if text else None
        except yaml.YAMLError as error:
            raise ValueError(f"--set {pair}: not a valid value: {yaml_problem(error)}") from None
        if key.startswith("model_args."):
            overrides.setdefault("model_args", {})[key.removeprefix("model_args.")] = value
        else:
            overrides[key] = value
    return overrides


def load_config(
    recipe: str = "fashion-mnist-quick",
    overrides: dict[str, Any] | None = None,
    config_class: type = TrainConfig,
) -> TrainConfig:
    """The recipe's settings with ``overrides`` applied on top (``model_args`` merge key by key), each
    converted to its type and checked, model arguments against the model's builder; a ``config_class``
    (TrainConfig or a subclass: a detection run's) holding them."""
    if config_class is TrainConfig and Path(recipe).stem.startswith(DETECTION_RECIPE_PREFIX):
        raise ValueError(
            f"{recipe} is a detection recipe: train it with `shufflenet detect train --recipe {recipe}`"
        )
    values = _read_recipe(recipe)
    for key, value in (overrides or {}).items():
        if key == "model_args":
            value = {**check_setting(key, values.get(key, {})), **check_setting(key, value)}
        values[key] = value
    settings = {key: check_setting(key, value, config_class) for key, value in values.items()}
    model = settings.get("model", FIELDS["model"].default)
    settings["model_args"] = check_model_args(model, settings.get("model_args", {}))
    return config_class(**settings)
