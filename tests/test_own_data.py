"""Training on an image folder of one's own: the size looked up from the files, the small-image path below
64 px, the memory estimate that refuses a run which cannot fit, and a local process killed by a signal
named as such. Folders of tiny PNGs that the tests write; in-process runs of a few seconds."""

import json
import os
import signal

import pytest
import torch
from PIL import Image

from shufflenet.cli import main
from shufflenet.data import SmallImageDataset, survey_images
from shufflenet.data.datasets import open_dataset
from shufflenet.train import sizing
from shufflenet.train.config import load_config
from shufflenet.train.distributed import DistributedContext, describe_exit, run_local_processes
from shufflenet.train.engine import Trainer, train

CLASSES = ("cat", "dog", "fish")
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def write_folder(root, sizes, per_split=("train", "val")):
    """ImageFolder layout: for each split and class, one RGB PNG per entry of ``sizes`` (w, h)."""
    for split in per_split:
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i, (width, height) in enumerate(sizes):
                colour = (80 * label, 40 * i, 200 - 60 * label)
                Image.new("RGB", (width, height), colour).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def small_folder(tmp_path):
    # Mostly 24 px, two larger: the median, not the mean or the largest, is the typical size.
    return write_folder(tmp_path / "small", [(24, 24)] * 3 + [(40, 40)] * 2)


def tiny_config(root, output, **overrides):
    settings = {
        "data_dir": str(root),
        "output": str(output),
        "epochs": 1,
        "batch_size": 5,
        "cpu_processes": 1,
        "progress": False,
        "log_every": 1,
        **overrides,
    }
    return load_config("own-small-images", settings)


def test_survey_reads_the_typical_size_from_headers(small_folder):
    folder = open_dataset("imagefolder", "train", small_folder, transform=lambda image: image)
    survey = survey_images([path for path, _ in folder.samples])
    assert (survey.height, survey.width, survey.mode, survey.looked_at) == (24, 24, "RGB", 15)
    assert survey_images([path for path, _ in folder.samples], limit=4).looked_at == 4
    assert sizing.training_size(survey) == 24


@pytest.mark.parametrize(
    ("side", "size"), [(28, 28), (30, 32), (33, 32), (64, 64), (100, 96), (500, 224), (6, 8)]
)
def test_training_size_is_rounded_and_capped(side, size):
    assert sizing.training_size(sizing.ImageSurvey(side, side + 10, "RGB", 1)) == size


def test_small_folder_trains_on_the_small_image_path(small_folder, tmp_path, capsys):
    config, message = sizing.adapt_to_data(tiny_config(small_folder, tmp_path / "run"))
    assert message == (
        "imagefolder: 15 train / 15 val images of 3 classes, typically 24x24 RGB: training at 24x24 with the "
        "small-image pipeline and the small-input stem; --set image_size=... to override"
    )
    assert config.image_size == 24 and config.model_args["small_input"] is True
    trainer = Trainer(config, DistributedContext(0, 1, 0, torch.device("cpu"), None))
    assert isinstance(trainer.train_set, SmallImageDataset) and isinstance(trainer.val_set, SmallImageDataset)
    assert trainer.train_set.images.shape == (15, 3, 24, 24)
    assert trainer.normalization["mean"] != IMAGENET_MEAN

    summary = train(tiny_config(small_folder, tmp_path / "cli-run"))
    assert message in capsys.readouterr().out
    contract = json.loads((tmp_path / "cli-run" / "model.json").read_text())
    assert contract["args"]["small_input"] is True
    assert contract["input"]["image_size"] == [24, 24]
    assert tuple(contract["input"]["mean"]) == trainer.normalization["mean"]
    assert summary["steps"] == 3


def test_choices_the_user_made_are_kept(small_folder, tmp_path):
    config = tiny_config(small_folder, tmp_path / "run", image_size=32)
    assert sizing.adapt_to_data(config) == (config, None)
    config = tiny_config(small_folder, tmp_path / "run", model_args={"small_input": False})
    adapted, message = sizing.adapt_to_data(config)
    assert adapted.model_args["small_input"] is False and "stem" not in message


@pytest.fixture
def large_folder(tmp_path):
    return write_folder(tmp_path / "large", [(224, 224)] * 2)


def test_an_impossible_batch_is_refused_with_the_memory_it_needs(large_folder, tmp_path, capsys):
    argv = ["train", "--dataset", "imagefolder", "--data-dir", str(large_folder), "--no-progress"]
    code = main([*argv, "--output", str(tmp_path / "a"), "--batch-size", "100000"])
    err = capsys.readouterr().err
    assert code == 2
    assert "training would need about" in err and "GB is available" in err and "smaller --batch-size" in err
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_too_little_memory_is_refused_before_training(large_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sizing, "available_memory", lambda: 4 * 10**8)
    argv = ["train", "--dataset", "imagefolder", "--data-dir", str(large_folder), "--no-progress"]
    assert main([*argv, "--output", str(tmp_path / "a"), "--batch-size", "6"]) == 2
    err = capsys.readouterr().err
    assert "0.2 GB is available to each" in err and "cpu_processes=1" in err


def test_memory_estimate_grows_with_batch_and_image_size(tmp_path):
    def estimate(batch, size):
        config = load_config("own-small-images", {"batch_size": batch, "image_size": size})
        return sizing.estimate_memory(config, 1, 10)

    baseline = sizing._resident_memory()
    assert estimate(8, 64) - baseline < estimate(32, 64) - baseline < estimate(32, 128) - baseline


def test_exit_codes_are_described_by_signal():
    note = "estimated 9.0 GB per process, 7.5 GB available"
    assert describe_exit(0, -signal.SIGKILL, note) == (
        "rank 0 was killed by SIGKILL, most likely the kernel's out-of-memory killer "
        "(estimated 9.0 GB per process, 7.5 GB available)"
    )
    assert describe_exit(1, -signal.SIGTERM) == "rank 1 was stopped by SIGTERM"
    assert describe_exit(1, -signal.SIGSEGV) == "rank 1 was killed by SIGSEGV"
    assert describe_exit(2, 3) == "rank 2 exited with code 3"


def _killed_on_rank_zero() -> None:
    if os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    signal.pause()  # rank 1 waits, as a trainer would in its next collective, until the launcher stops it


@pytest.mark.slow
def test_a_worker_killed_by_sigkill_is_named(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    note = "estimated 9.0 GB per process, 7.5 GB available"
    with pytest.raises(RuntimeError) as raised:
        run_local_processes(_killed_on_rank_zero, (), 2, memory_note=note)
    message = str(raised.value)
    assert "rank 0 was killed by SIGKILL, most likely the kernel's out-of-memory killer" in message
    assert note in message


def test_evaluate_reads_a_small_folder_run_as_it_was_trained(small_folder, tmp_path):
    from shufflenet.train.checkpoint import load_input_contract
    from shufflenet.train.evaluate import evaluate_checkpoint

    run = tmp_path / "run"
    summary = train(tiny_config(small_folder, run))
    # The same val images, the same decoding and normalization: the same errors as the run's own evaluation.
    for source in (run, run / "checkpoint.pt"):
        contract = load_input_contract(source)
        assert contract.image_size == (24, 24) and contract.mean != IMAGENET_MEAN
    evaluated = evaluate_checkpoint(run / "model.safetensors", data_dir=small_folder)
    assert evaluated["top1_err"] == pytest.approx(summary["top1_err"])
    last_epoch = json.loads((run / "metrics.json").read_text())[-1]
    assert evaluated["loss"] == pytest.approx(last_epoch["val_loss"], rel=1e-4)


def test_small_images_of_ones_own_are_evaluated_as_they_are_decoded_for_training():
    from shufflenet.data import build_transforms
    from shufflenet.data.small_images import decode_images

    pixels = torch.randint(0, 256, (24, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.numpy())
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    decoded = decode_images([image], 24)[0].permute(2, 0, 1).float() / 255
    expected = (decoded - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    own = build_transforms("imagefolder", "val", image_size=24, normalization=(mean, std), resize_only=True)
    assert torch.allclose(own(image), expected, atol=1e-6)
    imagenet_protocol = build_transforms("imagefolder", "val", image_size=24)  # resize 27, crop 24
    assert not torch.allclose(imagenet_protocol(image), expected, atol=0.1)


def test_export_calibrates_an_own_image_model_on_the_images_as_it_was_trained(tmp_path):
    from torchvision.transforms import v2

    from shufflenet.data import InputContract, build_dataset, build_transforms
    from shufflenet.data.transforms import trained_transforms
    from shufflenet.deploy.calibration import export_data

    folder = write_folder(tmp_path / "own", [(24, 24)] * 3)
    contract = InputContract("imagefolder", (24, 24), 3, (0.2, 0.3, 0.4), (0.5, 0.6, 0.7))
    data = export_data("imagefolder", 3, data_dir=str(folder), input_size=(24, 24), calib_samples=3,
                       contract=contract)  # fmt: skip
    first_val_image = build_dataset("imagefolder", "val", folder, transform=v2.Identity())[0][0]
    as_trained = trained_transforms("imagefolder", 24, contract)(first_val_image)
    assert data.input_size == (24, 24) and torch.equal(data.real_inputs[0], as_trained)
    imagenet_protocol = build_transforms("imagefolder", "val", image_size=24)(first_val_image)
    assert not torch.allclose(data.real_inputs[0], imagenet_protocol, atol=0.1)
