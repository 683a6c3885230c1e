"""Typed settings: --set values, recipe YAML and model arguments are converted and checked up front."""

from __future__ import annotations

import typing

import pytest

from shufflenet.cli import main
from shufflenet.registry import create_model
from shufflenet.train.config import FIELDS, RANGES, TYPES, list_recipes, load_config, parse_overrides


def settings(*pairs: str):
    return load_config("fashion-mnist-quick", parse_overrides(list(pairs)))


def test_exponent_numbers_are_floats():
    config = settings("lr=1e-3", "weight_decay=5e-4", "shift_lambda=5E-4", "warmup_epochs=.5", "gamma=+.5e1")
    numbers = (config.lr, config.weight_decay, config.shift_lambda, config.warmup_epochs, config.gamma)
    assert numbers == (0.001, 5e-4, 5e-4, 0.5, 5.0)
    assert all(type(number) is float for number in numbers)


def test_signed_exponents_are_numbers_too():
    with pytest.raises(ValueError, match=r"^gamma must be a number > 0, got -5.0$"):
        settings("gamma=-5e0")
    with pytest.raises(ValueError, match=r"^weight_decay must be a number >= 0, got -0.5$"):
        settings("weight_decay=-.5")


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["iterations=3e5"], {"iterations": 300000}),
        (["epochs=3.0"], {"epochs": 3}),
        (["lr=1"], {"lr": 1.0}),
        (["train_subset=null", "val_subset=none", "ema_decay=~"], {"train_subset": None, "ema_decay": None}),
        (["train_subset=1"], {"train_subset": 1}),
        (["nesterov=false", "compile=yes", "sync_bn=1", "progress=0"], {"compile": True, "sync_bn": True}),
        (["milestones=[3, 6]"], {"milestones": [3, 6]}),
        (["output=2024"], {"output": "2024"}),
        (["model_args.drop_rate=1e-1"], {"model_args": {"small_input": True, "drop_rate": 0.1}}),
        (["model_args.small_input=no"], {"model_args": {"small_input": False}}),
    ],
)
def test_values_are_converted(pairs, expected):
    config = settings(*pairs)
    for key, value in expected.items():
        assert getattr(config, key) == value
        assert type(getattr(config, key)) is type(value)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("epochs=abc", "epochs must be an integer >= 1, got 'abc'"),
        ("epochs=0", "epochs must be an integer >= 1, got 0"),
        ("batch_size=1.5", "batch_size must be an integer >= 1, got 1.5"),
        ("batch_size=true", "batch_size must be an integer >= 1, got True"),
        ("label_smoothing=2", "label_smoothing must be a number in [0, 1), got 2"),
        ("label_smoothing=-0.1", "label_smoothing must be a number in [0, 1), got -0.1"),
        ("lr=0", "lr must be a number > 0, got 0"),
        ("lr=abc", "lr must be a number > 0, got 'abc'"),
        ("lr=.inf", "lr must be a number > 0, got inf"),
        ("lr=", "lr must be a number > 0, got null"),
        ("weight_decay=-5e-4", "weight_decay must be a number >= 0, got -0.0005"),
        ("momentum=1", "momentum must be a number in [0, 1), got 1"),
        ("ema_decay=1.5", "ema_decay must be null or a number in [0, 1), got 1.5"),
        ("train_subset=0", "train_subset must be null or an integer >= 1, got 0"),
        ("val_subset=-5", "val_subset must be null or an integer >= 1, got -5"),
        ("image_size=maybe", "image_size must be null or an integer >= 1, got 'maybe'"),
        ("seed=-1", "seed must be an integer in [0, 4294967295], got -1"),
        ("num_workers=-1", "num_workers must be an integer >= 0, got -1"),
        ("log_every=0", "log_every must be an integer >= 1, got 0"),
        ("milestones=[1, -2]", "milestones must be a list, each an integer >= 0, got [1, -2]"),
        ("milestones=5", "milestones must be a list, each an integer >= 0, got 5"),
        ("progress=maybe", "progress must be true or false, got 'maybe'"),
        ("download=2", "download must be true or false, got 2"),
        ("amp=fp32", "amp must be one of none, bf16, fp16, got 'fp32'"),
        ("optimizer=1", "optimizer must be one of sgd, adamw, got 1"),
        ("device=[1]", "device must be null or text, got [1]"),
        ("model_args=5", "model_args must be a mapping (KEY: VALUE), got 5"),
        (
            "model_args.small_input=maybe",
            "small_input of shufflenet_v2_x0_5 must be true or false, got 'maybe'",
        ),
        ("model_args.scale=big", "scale of shufflenet_v2_x0_5 must be a number, got 'big'"),
        ("model_args.drop_rate=x", "drop_rate of shufflenet_v2_x0_5 must be null or a number, got 'x'"),
        ("model_args.layout=tv", "layout of shufflenet_v2_x0_5 must be one of paper, torchvision, got 'tv'"),
        ("model_args.colour=1", "shufflenet_v2_x0_5 takes no argument colour; valid overrides: scale"),
        ("learning_rate=1", "unknown training setting 'learning_rate'"),
        ("model=vgg16", "unknown model 'vgg16'"),
        ("milestones=[1,2", "--set milestones=[1,2: not a valid value: expected ',' or ']'"),
    ],
)
def test_bad_values_are_one_line_errors(pair, message):
    with pytest.raises(ValueError) as error:
        settings(pair)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_int_model_arguments_reject_fractions():
    overrides = parse_overrides(["model_args.groups=1.5"])
    with pytest.raises(ValueError, match=r"^groups of shufflenet_v1_g3_x1_0 must be an integer, got 1.5$"):
        load_config("fashion-mnist-quick", {**overrides, "model": "shufflenet_v1_g3_x1_0"})
    with pytest.raises(
        ValueError, match=r"^shuffle of shufflenet_v1_g3_x1_0 must be true or false, got 'x'$"
    ):
        create_model("shufflenet_v1_g3_x1_0", shuffle="x")
    assert create_model("shufflenet_v1_g3_x1_0", num_classes=10, groups=3.0, small_input="true") is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: [1\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
        (
            "lr: 0.1\n  epochs: 3\n",
            "is not valid YAML: mapping values are not allowed here (line 2, column 9)",
        ),
        ("- lr\n- epochs\n", "must be a mapping of settings (KEY: VALUE lines), got a list"),
        ("just text\n", "must be a mapping of settings (KEY: VALUE lines), got a str"),
        ("label_smoothing: 2\n", "label_smoothing must be a number in [0, 1), got 2"),
        ("learning_rate: 0.1\n", "unknown training setting 'learning_rate'"),
    ],
)
def test_bad_recipe_files(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_config(str(path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_recipe_files_read_exponents_as_numbers(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\ntrain_subset: 100\n", encoding="utf-8")
    config = load_config(str(path))
    assert (config.lr, config.weight_decay, config.train_subset, config.recipe) == (0.001, 5e-4, 100, "mine")


def test_shipped_recipes_load():
    for name in list_recipes():
        config = load_config(name)
        assert type(config.weight_decay) is float and type(config.epochs) is int


def test_every_number_setting_has_a_range():
    def numeric(hint) -> bool:
        return hint in (int, float) or any(numeric(arg) for arg in typing.get_args(hint))

    from shufflenet.detect.train import DetectConfig

    types = {**TYPES, **typing.get_type_hints(DetectConfig)}  # detection runs' settings share the table
    assert {key for key, hint in types.items() if numeric(hint)} == set(RANGES)
    assert set(FIELDS) <= set(types)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--set", "lr=abc"], "shufflenet train: error: lr must be a number > 0, got 'abc'"),
        (
            ["train", "--set", "model_args.small_input=maybe"],
            "small_input of shufflenet_v2_x0_5 must be true",
        ),
        (["train", "--epochs", "0"], "shufflenet train: error: epochs must be an integer >= 1, got 0"),
        (["train", "--set", "train_subset=0"], "train_subset must be null or an integer >= 1, got 0"),
        (
            ["profile", "shufflenet_v2_x0_5", "--set", "small_input=maybe"],
            "shufflenet profile: error: small_input",
        ),
        (
            ["profile", "shufflenet_v1_g3_x1_0", "--set", "groups=1.5"],
            "groups of shufflenet_v1_g3_x1_0 must be an",
        ),
        (["export", "shufflenet_v2_x0_5", "--set", "shuffle=maybe"], "shufflenet export: error: shuffle of"),
    ],
)
def test_cli_prints_one_line_and_exits_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_bad_recipe_file_through_cli(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lr: [1\n", encoding="utf-8")
    assert main(["train", "--recipe", str(path)]) == 2
    assert f"shufflenet train: error: recipe {path} is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "shufflenet_v2_x0_5", "--input-size", "-5", "224"],
        ["profile", "shufflenet_v2_x0_5", "--input-size", "224", "1.5"],
        ["profile", "shufflenet_v2_x0_5", "--in-chans", "0"],
        ["profile", "shufflenet_v2_x0_5", "--num-classes", "ten"],
        ["export", "shufflenet_v2_x0_5", "--in-chans", "0"],
        ["export", "shufflenet_v2_x0_5", "--input-size", "0", "32"],
    ],
)
def test_model_options_take_positive_integers(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "must be a positive integer, got" in capsys.readouterr().err
