"""Defaults that hold on small data: the warm-up floor and cap, the divergence stop, validation every epoch
on a small set, the plain train loss beside the optimized one, and the recipe for your own small images.
Tiny in-process runs on data the tests write; a few seconds each."""

import argparse
import json
import math

import pytest

from conftest import write_fake_fashion_mnist
from shufflenet.cli import train as train_cli
from shufflenet.train import engine
from shufflenet.train.checkpoint import load_checkpoint
from shufflenet.train.config import TrainConfig, list_recipes, load_config
from shufflenet.train.engine import TrainingDiverged, lr_factor, train, warmup_steps
from test_train import tiny_config as train_tiny_config


@pytest.fixture
def fashion_dir(tmp_path):
    directory = tmp_path / "fashion"
    write_fake_fashion_mnist(directory, n_train=64, n_test=16)
    return directory


def tiny_config(fashion_dir, output, *extra):
    # test_train's tiny run with the evaluation schedule left to its default (every epoch on a small set).
    return train_tiny_config(fashion_dir, output, "lr_base_batch=16", "eval_every=null", *extra)


def test_warmup_has_a_floor_in_steps():
    # 0.3 epochs of 12 steps would be 4 steps: the floor makes it 100.
    config = TrainConfig(warmup_epochs=0.3, warmup_min_steps=100, warmup_max_fraction=0.25)
    assert warmup_steps(config, total_steps=1000, steps_in_epoch=12) == 100
    assert lr_factor(config, 0, 1000, 12) == pytest.approx(0.01)
    assert lr_factor(config, 49, 1000, 12) == pytest.approx(0.5)
    assert lr_factor(config, 99, 1000, 12) == lr_factor(config, 100, 1000, 12) == 1.0
    # A warm-up longer than the floor is kept as asked.
    assert warmup_steps(TrainConfig(warmup_epochs=2), 10_000, 469) == 938


def test_warmup_is_capped_by_a_fraction_of_the_run():
    config = TrainConfig(warmup_epochs=0.3, warmup_min_steps=100, warmup_max_fraction=0.25)
    assert warmup_steps(config, total_steps=120, steps_in_epoch=12) == 30
    assert lr_factor(config, 0, 120, 12) == pytest.approx(1 / 30)
    assert lr_factor(config, 29, 120, 12) == 1.0
    assert lr_factor(config, 119, 120, 12) < 0.01  # cosine: the decay still ends near 0


def test_no_warmup_when_none_is_asked_and_the_defaults():
    assert warmup_steps(TrainConfig(warmup_epochs=0), 300_000, 1251) == 0  # the papers' ImageNet schedules
    assert lr_factor(TrainConfig(schedule="constant"), 0, 100, 10) == 1.0
    defaults = TrainConfig()
    assert (defaults.warmup_min_steps, defaults.warmup_max_fraction, defaults.eval_every) == (100, 0.25, None)
    for key, bad in [("warmup_min_steps", -1), ("warmup_max_fraction", 1.5), ("eval_every", 0)]:
        with pytest.raises(ValueError, match=key):
            load_config("fashion-mnist-quick", {key: bad})


def test_absurd_learning_rate_stops_with_the_fix_and_keeps_the_last_good_checkpoint(fashion_dir, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(fashion_dir, run, "lr=20", "epochs=3", "checkpoint_every=1", "weight_decay=0")
    with pytest.raises(TrainingDiverged) as failure:
        train(config)
    message = str(failure.value)
    assert "training diverged at epoch" in message and "\n" not in message
    assert "lower the learning rate, e.g. --lr 5," in message and "--set warmup_epochs=3" in message
    assert "last good checkpoint" in message
    state = load_checkpoint(run / "checkpoint.pt")
    stopped_at = int(message.split("step ")[1].split(":")[0])
    assert 0 < state["step"] < stopped_at
    start, running = state["loss_watch"].tolist()
    assert math.isfinite(running) and running <= engine.DIVERGENCE_RATIO * start  # good when it was saved


def test_loss_far_above_its_start_stops_the_run(fashion_dir, tmp_path, monkeypatch):
    # A ratio below 1 counts any loss above the first step's as diverged: the finite-loss path, on any data.
    monkeypatch.setattr(engine, "DIVERGENCE_RATIO", 0.0)
    with pytest.raises(
        TrainingDiverged, match=r"diverged at epoch 1, step 1: loss \S+ against \S+ at the start"
    ):
        train(tiny_config(fashion_dir, tmp_path / "run"))


def test_small_val_set_is_evaluated_every_epoch_with_comparable_losses(fashion_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(fashion_dir, run, "label_smoothing=0.5"))
    rows = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all("val_top1_err" in row and "val_loss" in row for row in rows)
    # train_loss is plain cross-entropy, as val_loss; the smoothed objective is its own column.
    assert all(row["train_objective"] != pytest.approx(row["train_loss"]) for row in rows)
    assert "train_objective" in (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert (run / "learning_curves.png").stat().st_size > 0


def test_large_val_set_is_evaluated_at_the_end_and_plain_loss_equals_objective(
    fashion_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(engine, "SMALL_VAL_SET", 10)  # the 16 test images count as a large set
    run = tmp_path / "run"
    train(tiny_config(fashion_dir, run, "label_smoothing=0"))
    rows = json.loads((run / "metrics.json").read_text())
    assert ["val_top1_err" in row for row in rows] == [False, True]
    assert all(row["train_objective"] == pytest.approx(row["train_loss"]) for row in rows)


def test_own_small_images_recipe_loads_and_validates():
    config = load_config("own-small-images")
    assert "own-small-images" in list_recipes() and config.dataset == "imagefolder"
    assert config.lr_base_batch == config.batch_size and config.warmup_epochs > 0
    assert config.eval_every is None  # small validation sets: every epoch
    for name in list_recipes():  # a recipe's lr follows its batch when --batch-size changes it
        recipe = load_config(name)
        assert recipe.lr_base_batch in (None, recipe.batch_size), name


@pytest.mark.parametrize(
    ("argv", "recipe"),
    [
        (["--dataset", "imagefolder", "--data-dir", "d"], "own-small-images"),
        (
            ["--dataset", "imagefolder", "--data-dir", "d", "--recipe", "imagenet-shufflenet-v2"],
            "imagenet-shufflenet-v2",
        ),
        ([], "fashion-mnist-quick"),
    ],
)
def test_imagefolder_without_a_recipe_picks_the_small_images_recipe(argv, recipe, monkeypatch):
    chosen = []
    monkeypatch.setattr(engine, "train", lambda config, **kwargs: chosen.append(config.recipe))
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.run(parser.parse_args(argv)) == 0
    assert chosen == [recipe]
