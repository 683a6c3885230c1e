"""Training engine: end to end on data the tests write, exact resume after SIGKILL, torchrun equivalence,
failure handling. Runs on CPU in well under a minute each."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_fake_fashion_mnist
from shufflenet.train.checkpoint import load_checkpoint, load_exported
from shufflenet.train.config import TrainConfig, list_recipes, load_config, parse_overrides
from shufflenet.train.engine import TrainingDiverged, lr_factor, parameter_groups, train
from shufflenet.train.evaluate import evaluate_checkpoint

TIMING_COLUMNS = {"images_per_s", "elapsed_s"}
TINY = [
    "model=shufflenet_v2_x0_5",
    "model_args.small_input=true",
    "batch_size=16",
    "epochs=2",
    "lr=0.05",
    "warmup_epochs=0",
    "log_every=1",
    "progress=false",
    "download=false",
    "deterministic=true",
    "cpu_processes=1",  # one process unless a test asks for more (the quick recipe uses 2)
    "eval_every=1",
    "augment=crop-flip",
]


@pytest.fixture
def fashion_dir(tmp_path):
    directory = tmp_path / "fashion"
    write_fake_fashion_mnist(directory, n_train=96, n_test=32)
    return directory


def tiny_config(fashion_dir, output, *extra):
    return load_config(
        "fashion-mnist-quick", parse_overrides([*TINY, f"data_dir={fashion_dir}", f"output={output}", *extra])
    )


def cli(*argv, env_extra=None, driver=None, check=True):
    """Run the CLI in a fresh interpreter (optionally under a driver script that patches the engine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    command = [sys.executable, str(driver)] if driver else [sys.executable, "-m", "shufflenet"]
    result = subprocess.run([*command, *argv], capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def metrics_without_timing(run_dir: Path):
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def assert_resumed_run_equals(resumed_run: Path, reference_run: Path) -> None:
    """The resumed run ends with the uninterrupted run's weights, bit for bit, and its metrics."""
    expected, resumed = (
        load_file(reference_run / "model.safetensors"),
        load_file(resumed_run / "model.safetensors"),
    )
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0)
    assert metrics_without_timing(resumed_run) == metrics_without_timing(reference_run)


def test_recipes_load_and_match_the_papers():
    assert {"fashion-mnist-quick", "fashion-mnist-full", "imagenet-shufflenet-v1", "cifar"} <= set(
        list_recipes()
    )
    for name in list_recipes():
        load_config(name)
    v1 = load_config("imagenet-shufflenet-v1")
    assert (v1.lr, v1.lr_base_batch, v1.iterations, v1.weight_decay) == (0.5, 1024, 300_000, 4e-5)
    assert (v1.schedule, v1.label_smoothing, v1.decay_bn_and_bias, v1.momentum) == ("linear", 0.1, False, 0.9)
    cifar = load_config("cifar")
    assert (cifar.epochs, cifar.milestones, cifar.batch_size, cifar.weight_decay) == (
        164,
        [81, 122],
        128,
        5e-4,
    )


def test_overrides_and_bad_settings():
    config = load_config(
        "cifar", parse_overrides(["lr=0.05", "model_args.small_input=false", "milestones=[1,2]"])
    )
    assert config.lr == 0.05 and config.model_args == {"small_input": False} and config.milestones == [1, 2]
    with pytest.raises(ValueError, match="unknown training setting 'learning_rate'"):
        load_config("cifar", {"learning_rate": 1})
    with pytest.raises(ValueError, match="schedule must be one of"):
        load_config("cifar", {"schedule": "poly"})
    with pytest.raises(ValueError, match="unknown recipe 'cifar1'; did you mean cifar"):
        load_config("cifar1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["lr"])


def test_schedules():
    linear = TrainConfig(schedule="linear")
    assert lr_factor(linear, 0, 100, 10) == 1.0 and lr_factor(linear, 100, 100, 10) == 0.0
    assert lr_factor(linear, 50, 100, 10) == pytest.approx(0.5)
    step = TrainConfig(schedule="step", milestones=[2, 4], gamma=0.1)
    assert [lr_factor(step, s, 60, 10) for s in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.1, 0.01])
    warm = TrainConfig(schedule="cosine", warmup_epochs=1, warmup_min_steps=0)
    assert lr_factor(warm, 0, 100, 10) == pytest.approx(0.1) and lr_factor(warm, 10, 100, 10) == 1.0


def test_no_weight_decay_on_bn_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    decay, no_decay = parameter_groups(model, 4e-5, decay_bn_and_bias=False)
    assert [p.ndim for p in decay["params"]] == [4, 2] and len(no_decay["params"]) == 4  # 2 biases, BN
    assert no_decay["weight_decay"] == 0.0


def test_train_end_to_end_writes_everything(fashion_dir, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(fashion_dir, run, "ema_decay=0.9", "bn_recalibration_batches=2"))
    for name in [
        "checkpoint.pt",
        "metrics.csv",
        "metrics.json",
        "learning_curves.png",
        "confusion_matrix.png",
        "model.safetensors",
        "model.json",
        "summary.json",
    ]:
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    assert summary["params"] == sum(p.numel() for p in load_exported(run / "model.safetensors").parameters())
    assert summary["steps"] == 12 and len(json.loads((run / "metrics.json").read_text())) == 2
    assert 0 <= summary["top1_err"] <= 100 and summary["mflops"] > 0
    evaluated = evaluate_checkpoint(run / "model.safetensors", "fashion-mnist", data_dir=fashion_dir)
    assert evaluated["top1_err"] == pytest.approx(summary["top1_err"])
    assert evaluated["samples"] == 32 and len(evaluated["per_class_accuracy"]) == 10


KILL_DRIVER = """
import os, signal, sys
from shufflenet.train import engine
original = engine.Trainer._train_step

def step(self, *args):
    if self.position.step == {kill_at}:
        os.kill(os.getpid(), signal.{signal_name})
    return original(self, *args)

engine.Trainer._train_step = step
from shufflenet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_driver(tmp_path, kill_at, signal_name="SIGKILL"):
    driver = tmp_path / f"driver_{signal_name}.py"
    driver.write_text(textwrap.dedent(KILL_DRIVER.format(kill_at=kill_at, signal_name=signal_name)))
    return driver


def train_args(fashion_dir, output, *extra):
    sets = [
        arg
        for item in [*TINY, "checkpoint_every=4", "model_args.drop_rate=0.2", *extra]
        for arg in ("--set", item)
    ]
    return ["train", "--data-dir", str(fashion_dir), "--output", str(output), *sets]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(fashion_dir, tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    cli(*train_args(fashion_dir, reference))
    # 6 steps per epoch; checkpoints at steps 4 and 8; killed at step 10, mid-epoch 2, 2 steps after the last.
    killed = cli(*train_args(fashion_dir, interrupted), driver=write_driver(tmp_path, 10), check=False)
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(interrupted / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (8, 1, 2)
    cli(*train_args(fashion_dir, interrupted), "--resume")
    assert_resumed_run_equals(interrupted, reference)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_first(fashion_dir, tmp_path):
    run = tmp_path / "run"
    result = cli(*train_args(fashion_dir, run), driver=write_driver(tmp_path, 3, "SIGINT"), check=False)
    assert result.returncode == 130
    assert "checkpoint saved" in result.stderr and "--resume" in result.stderr
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4  # the step in flight finishes, then it saves
    cli(*train_args(fashion_dir, run), "--resume")
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 12


@pytest.mark.slow
def test_torchrun_and_local_processes_match_one(fashion_dir, tmp_path):
    # float64: a freshly initialised net on random pixels is so ill-conditioned that a rounding difference
    # grows about 1e7-fold over these 12 steps, so float32's different summation order (2 x 8 samples
    # against 16) ends 0.1 apart while float64's 1e-16 ends near 1e-8: the same computation either way.
    single, double = tmp_path / "single", tmp_path / "double"
    args = ["model_args.drop_rate=0.0", "sync_bn=true", "device=cpu", "precision=float64", "lr=0.01"]
    cli(*train_args(fashion_dir, single, *args))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "shufflenet",
        *train_args(fashion_dir, double, *args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(torchrun, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # The same two processes started by the engine itself (cpu_processes) instead of torchrun.
    local = tmp_path / "local"
    cli(*train_args(fashion_dir, local, *args, "cpu_processes=2"))
    assert json.loads((local / "summary.json").read_text())["world_size"] == 2
    expected = load_file(single / "model.safetensors")
    for run in (double, local):
        got = load_file(run / "model.safetensors")
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=f"{run.name}: {key}")
        one, two = metrics_without_timing(single), metrics_without_timing(run)
        for row_one, row_two in zip(one, two, strict=True):
            for key in ("train_loss", "val_loss", "val_top1_err"):
                assert row_two[key] == pytest.approx(row_one[key], abs=1e-4)


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["MARKER"]),))


@pytest.mark.slow
def test_checkpoint_with_code_is_refused_by_the_cli(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    os.environ["MARKER"] = str(marker)
    with evil.open("wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    result = cli("evaluate", "--checkpoint", str(evil), "--dataset", "fashion-mnist", check=False)
    assert result.returncode == 2 and "refusing to load" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_imagefolder_training_with_a_corrupt_file(image_folder, tmp_path):
    root, bad = image_folder
    common = [
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(root),
        "--batch-size",
        "5",  # 10 files: one epoch reads every one
        "--epochs",
        "1",
        "--no-progress",
        "--set",
        "image_size=32",
        "--set",
        "model=mobilenet_v2_x0_35",
        "--set",
        "model_args.small_input=true",
    ]
    failed = cli("train", "--output", str(tmp_path / "a"), *common, check=False)
    assert failed.returncode == 2 and str(bad) in failed.stderr and "--skip-bad-images" in failed.stderr
    cli("train", "--output", str(tmp_path / "b"), *common, "--skip-bad-images")
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert set(summary["per_class_accuracy"]) == {"cat", "dog", "fish"}
    assert summary["skipped_images"] == [str(bad)]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(fashion_dir, tmp_path):
    run = tmp_path / "run"
    diverged = r"diverged at epoch \d+, step \d+: (loss|a weight) (became (nan|inf)|\S+ against)"
    with pytest.raises(TrainingDiverged, match=diverged):
        train(tiny_config(fashion_dir, run, "lr=1.0e+12", "checkpoint_every=1"))
    if (run / "checkpoint.pt").exists():
        state = load_checkpoint(run / "checkpoint.pt")
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
