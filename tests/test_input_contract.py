"""A model's input contract travels with it (model.json), and evaluate/export honour it and the data flags."""

import dataclasses
import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from conftest import write_fake_fashion_mnist
from shufflenet.cli import main
from shufflenet.data import InputContract, build_dataset
from shufflenet.data import datasets as datasets_module
from shufflenet.registry import create_model
from shufflenet.train.checkpoint import export_weights, load_exported, load_input_contract, save_checkpoint
from shufflenet.train.config import load_config, parse_overrides
from shufflenet.train.engine import train
from shufflenet.train.evaluate import resolve_input

TINY = [
    "model=shufflenet_v2_x0_5",
    "model_args.small_input=true",
    "batch_size=16",
    "epochs=1",
    "progress=false",
    "download=false",
    "cpu_processes=1",
    "log_every=1",
]
FASHION_LINE = "input 28x28, 1 channel, Fashion-MNIST normalization from {}"


@pytest.fixture(autouse=True)
def _no_other_copy(tmp_path, monkeypatch):
    # No test may read or fill the user's cache, nor find the system's Fashion-MNIST by accident.
    monkeypatch.setenv("SHUFFLENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SEARCH_PATH", (tmp_path / "nowhere",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Fashion-MNIST run (28x28, one channel) and its data folder, trained in this process."""
    root = tmp_path_factory.mktemp("trained")
    write_fake_fashion_mnist(root / "fm", n_train=32, n_test=16)
    overrides = parse_overrides([*TINY, f"data_dir={root / 'fm'}", f"output={root / 'run'}"])
    train(load_config("fashion-mnist-quick", overrides))
    return root / "run", root / "fm"


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run, without its training-time confusion matrix."""
    run, data = trained
    copy = tmp_path / "runs" / "fm"
    shutil.copytree(run, copy)
    (copy / "confusion_matrix.png").unlink()
    return copy, data


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the contract ------------------------------------------------------------------------------------------


def test_contract_written_and_read_back(tmp_path):
    model = create_model("shufflenet_v2_x0_5", num_classes=3, in_chans=3, small_input=True)
    args = {"num_classes": 3, "in_chans": 3, "small_input": True}
    weights, sidecar = export_weights(
        model, tmp_path / "run" / "model.safetensors", model_name="shufflenet_v2_x0_5", model_args=args,
        dataset="imagefolder", image_size=64, class_names=["cat", "dog", "fish"],
    )  # fmt: skip
    contract = load_input_contract(weights)
    assert contract == InputContract(
        "imagefolder", (64, 64), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ("cat", "dog", "fish"),
        str(sidecar),
    )  # fmt: skip
    assert json.loads(sidecar.read_text())["input"]["image_size"] == [64, 64]
    assert load_input_contract(sidecar) == contract
    assert load_input_contract(tmp_path / "run") == contract  # a run directory: its model.json
    assert contract.describe() == f"input 64x64, 3 channels, ImageNet normalization from {sidecar}"
    assert load_exported(weights).num_classes == 3


def test_old_sidecar_still_loads_without_a_contract(tmp_path):
    model = create_model("shufflenet_v2_x0_5", num_classes=10, small_input=True)
    weights, sidecar = export_weights(
        model, tmp_path / "w.safetensors", model_name="shufflenet_v2_x0_5",
        model_args={"num_classes": 10, "small_input": True},
    )  # fmt: skip
    assert "input" not in json.loads(sidecar.read_text())
    assert load_input_contract(weights) is None
    assert not load_exported(weights).training


def test_contract_from_a_checkpoint_records_its_training_config(tmp_path):
    state = {"config": {"dataset": "cifar10", "image_size": None}, "model_args_resolved": {"in_chans": 3}}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    contract = load_input_contract(tmp_path)  # no model.json: the checkpoint
    assert (contract.dataset, contract.image_size, contract.channels, contract.class_names) == (
        "cifar10", (32, 32), 3, ()
    )  # fmt: skip
    assert contract.describe().endswith(f"CIFAR-10 normalization from {tmp_path / 'checkpoint.pt'}")
    save_checkpoint(tmp_path / "bare.pt", {"model": {}})
    assert load_input_contract(tmp_path / "bare.pt") is None


def test_resolve_input_defaults_to_the_contract_and_refuses_contradictions():
    contract = dataclasses.replace(InputContract.for_dataset("fashion-mnist"), source="m.json")
    assert resolve_input(contract, None, None) == ("fashion-mnist", 28, [contract.describe()])
    assert resolve_input(contract, None, 28)[1] == 28
    with pytest.raises(ValueError, match=r"--image-size 32 contradicts the 28x28 input .*m\.json"):
        resolve_input(contract, None, 32)
    with pytest.raises(ValueError, match="takes 1-channel input but cifar10 images have 3"):
        resolve_input(contract, "cifar10", None)
    wide = InputContract.for_dataset("cifar10", 64)
    _, size, notes = resolve_input(wide, "cifar100", None)
    assert size == 64 and notes[-1] == "note: evaluating on cifar100, but the model was trained on cifar10"
    with pytest.raises(ValueError, match="pass --dataset"):
        resolve_input(None, None, None)
    assert resolve_input(None, "cifar10", None) == ("cifar10", None, [])


def test_a_trained_run_records_its_contract(trained):
    run, _ = trained
    contract = load_input_contract(run / "model.safetensors")
    assert (contract.dataset, contract.image_size, contract.channels) == ("fashion-mnist", (28, 28), 1)
    assert contract.class_names[0] == "T-shirt/top" and len(contract.class_names) == 10
    assert contract.mean == (0.2860,) and contract.std == (0.3530,)


# --- evaluate ----------------------------------------------------------------------------------------------


def test_evaluate_without_dataset_uses_the_contract_and_plots_into_the_run(run_copy, capsys):
    run, data = run_copy
    code, out, err = cli(capsys, "evaluate", "--checkpoint", run, "--data-dir", data)
    assert code == 0, err
    assert out.splitlines()[0] == FASHION_LINE.format(run / "model.json")
    assert "| shufflenet_v2_x0_5 | PyTorch | fashion-mnist |      16 |" in out
    assert "evaluate: 100%" in err  # the progress bar
    assert (run / "confusion_matrix.png").is_file()
    assert not (run.parent / "confusion_matrix.png").exists()


def test_evaluate_a_file_in_a_run_plots_beside_it(run_copy, capsys):
    run, data = run_copy
    code, out, err = cli(
        capsys, "evaluate", "--checkpoint", run / "checkpoint.pt", "--data-dir", data, "--no-progress",
        "--format", "json",
    )  # fmt: skip
    assert code == 0 and "evaluate:" not in err
    assert err.splitlines()[0] == FASHION_LINE.format(run / "checkpoint.pt")  # stdout stays JSON only
    summary = json.loads(out)
    assert summary["dataset"] == "fashion-mnist" and summary["input_size"] == [28, 28]
    assert summary["confusion_matrix_png"] == str(run / "confusion_matrix.png")
    assert (run / "confusion_matrix.png").is_file() and not (run.parent / "confusion_matrix.png").exists()


def test_evaluate_on_the_engine_in_fp32_and_int8(run_copy, capsys):
    """The engine reports what PyTorch reports in fp32; int8 is calibrated on the run's training images
    and evaluated the same way."""
    from shufflenet.deploy.engine import EngineUnavailable, load_library

    try:
        load_library()
    except EngineUnavailable as error:
        pytest.skip(f"the C engine cannot run here: {error}")
    run, data = run_copy
    results = {}
    cells = [("torch", "fp32"), ("engine", "fp32"), ("engine", "int8")]
    if load_library().shufflenet_engine_bf16():
        cells.append(("engine", "bf16"))
    for runtime, precision in cells:
        code, out, err = cli(
            capsys, "evaluate", "--checkpoint", run, "--data-dir", data, "--no-progress", "--format", "json",
            "--runtime", runtime, "--precision", precision, "--calib-samples", "8",
        )  # fmt: skip
        assert code == 0, err
        results[runtime, precision] = json.loads(out)
    engine_int8 = results["engine", "int8"]
    assert (engine_int8["runtime"], engine_int8["precision"], engine_int8["samples"]) == (
        "engine",
        "int8",
        16,
    )
    torch_fp32, engine_fp32 = results["torch", "fp32"], results["engine", "fp32"]
    assert engine_fp32["top1_err"] == torch_fp32["top1_err"]
    assert abs(engine_fp32["loss"] - torch_fp32["loss"]) < 1e-4
    assert abs(engine_int8["loss"] - engine_fp32["loss"]) < 0.1 * engine_fp32["loss"]
    if ("engine", "bf16") in results:
        assert results["engine", "bf16"]["precision"] == "bf16"
        assert abs(results["engine", "bf16"]["loss"] - engine_fp32["loss"]) < 0.02 * engine_fp32["loss"]
    code, out, err = cli(capsys, "evaluate", "--checkpoint", run, "--data-dir", data, "--format", "table",
                         "--runtime", "engine", "--precision", "int8", "--no-progress")  # fmt: skip
    assert code == 0 and "| shufflenet_v2_x0_5 | engine int8 | fashion-mnist |      16 |" in out


def test_evaluate_refuses_int8_off_the_engine(trained, capsys):
    run, data = trained
    code, _, err = cli(capsys, "evaluate", "--checkpoint", run, "--data-dir", data, "--precision", "int8")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--precision int8 runs on the engine: add --runtime engine" in err


def test_evaluate_refuses_an_inconsistent_image_size(trained, capsys):
    run, data = trained
    code, _, err = cli(capsys, "evaluate", "--checkpoint", run, "--data-dir", data, "--image-size", "32")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--image-size 32 contradicts the 28x28 input the model was trained at" in err


def test_evaluate_with_a_missing_data_dir_does_not_fall_back(trained, tmp_path, monkeypatch, capsys):
    run, data = trained
    # A valid system copy exists, but the user named another folder: that one is used or it is an error.
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SEARCH_PATH", (data,))
    argv = ["evaluate", "--checkpoint", run, "--data-dir", tmp_path / "typo", "--no-progress"]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"no Fashion-MNIST idx files in --data-dir {tmp_path / 'typo'} (it does not exist)" in err


def imagefolder_model(tmp_path):
    model = create_model("shufflenet_v2_x0_5", num_classes=3, in_chans=3, small_input=True)
    weights, _ = export_weights(
        model, tmp_path / "run" / "model.safetensors", model_name="shufflenet_v2_x0_5",
        model_args={"num_classes": 3, "in_chans": 3, "small_input": True},
        dataset="imagefolder", image_size=32, class_names=["cat", "dog", "fish"],
    )  # fmt: skip
    return weights


def test_evaluate_accepts_skip_bad_images(image_folder, tmp_path, capsys):
    root, _ = image_folder
    bad = root / "val" / "fish" / "broken.png"
    bad.write_bytes(random.Random(1).randbytes(300))
    weights = imagefolder_model(tmp_path)
    argv = ["evaluate", "--checkpoint", weights, "--data-dir", root, "--no-progress", "--batch-size", "4"]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and str(bad) in err and "--skip-bad-images" in err
    code, out, _ = cli(capsys, *argv, "--skip-bad-images", "--format", "json")
    summary = json.loads(out)
    assert code == 0 and summary["samples"] == 9 and summary["skipped_images"] == [str(bad)]
    assert summary["input_size"] == [32, 32] and set(summary["per_class_accuracy"]) == {"cat", "dog", "fish"}
    assert (tmp_path / "run" / "confusion_matrix.png").is_file()


# --- --data-dir --------------------------------------------------------------------------------------------

EXPECTED = {
    "fashion-mnist": ("no Fashion-MNIST idx files", "train-images-idx3-ubyte"),
    "cifar10": ("cifar10 not found", "cifar-10-batches-py/ (data_batch_1"),
    "cifar100": ("cifar100 not found", "cifar-100-python/ (train, test, meta)"),
    "imagefolder": ("no val/ folder", "val/<class>/*.jpg, one folder per class"),
}


@pytest.mark.parametrize("dataset", list(EXPECTED))
@pytest.mark.parametrize(
    ("state", "make"),
    [
        ("(it does not exist)", lambda d: None),
        ("(it is empty)", lambda d: d.mkdir()),
        ("; expected", lambda d: (d.mkdir(), (d / "notes.txt").write_text("not a dataset"))),
    ],
    ids=["missing", "empty", "unrelated"],
)
def test_data_dir_without_the_dataset_is_one_line_naming_what_belongs_there(tmp_path, dataset, state, make):
    directory = tmp_path / "data"
    make(directory)
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(dataset, "val", directory)
    message = str(info.value)
    what, expected = EXPECTED[dataset]
    assert message.startswith(f"{what} in --data-dir {directory}") and "\n" not in message
    assert state in message and expected in message


def test_imagefolder_split_without_class_folders(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "a.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"^no class folders in val/ in --data-dir"):
        build_dataset("imagefolder", "val", tmp_path)


def test_cifar_batches_folder_itself_is_accepted(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # The files are there, so the error (torchvision's checksum) is no longer "not found in --data-dir".
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found under .*download=False"):
        build_dataset("cifar10", "val", folder)


@pytest.mark.parametrize("dataset", ["cifar10", "imagefolder"])
def test_export_calib_with_an_empty_data_dir_exits_2(dataset, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(
        capsys, "export", "shufflenet_v2_x0_5", "--calib", dataset, "--data-dir", tmp_path / "empty",
        "--output", tmp_path / "x.onnx",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "(it is empty); expected" in err
    assert not (tmp_path / "x.onnx").exists()


def test_without_data_dir_the_system_copy_is_still_used(tmp_path, monkeypatch):
    write_fake_fashion_mnist(tmp_path / "system")
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SEARCH_PATH", (tmp_path / "system",))
    assert len(build_dataset("fashion-mnist", "val", download=False)) == 10


# --- export ------------------------------------------------------------------------------------------------


def test_export_refuses_an_inconsistent_input_size(trained, tmp_path, capsys):
    run, _ = trained
    weights, output = run / "model.safetensors", tmp_path / "x.onnx"
    code, _, err = cli(capsys, "export", weights, "--input-size", "224", "224", "--output", output)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--input-size 224 224 contradicts the 28x28 input the model was trained at" in err
    assert f"({run / 'model.json'}); drop --input-size" in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_export_of_a_trained_run_takes_real_28x28_inputs(trained, tmp_path, capsys):
    import onnxruntime

    run, data = trained
    output = tmp_path / "fm.onnx"
    code, out, err = cli(capsys, "export", run / "model.safetensors", "--output", output)
    assert code == 0, err
    assert out.splitlines()[0] == FASHION_LINE.format(run / "model.json")
    assert out.rstrip().endswith("verified")
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.shape[-2:] == [28, 28]
    val = build_dataset("fashion-mnist", "val", data)
    images = torch.stack([val[i][0] for i in range(4)])
    model = load_exported(run / "model.safetensors")
    for image in images:  # batch 1, as exported
        (logits,) = session.run(None, {graph_input.name: image[None].numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(image[None]).numpy(), atol=1e-4)


def test_export_to_the_engine_writes_a_verified_plan_with_its_contract(
    trained, tmp_path, capsys, monkeypatch
):
    """fp32: the saved plan, loaded back, agrees with eager within 1e-4; int8: calibrated on the run's data,
    judged by accuracy, each operation's error reported; the input contract beside each plan."""
    from shufflenet.deploy.engine import EngineUnavailable, Plan, load_library

    try:
        load_library()
    except EngineUnavailable as error:
        pytest.skip(f"the C engine cannot run here: {error}")
    run, data = trained
    weights = run / "model.safetensors"
    code, out, err = cli(capsys, "export", weights, "--format", "engine", "--output", tmp_path / "fm.plan")
    assert code == 0, err
    assert (
        out.rstrip().endswith("verified") and "wrote " + str(tmp_path / "fm.plan") + " + fm.plan.json" in out
    )
    code, out, err = cli(
        capsys, "export", weights, "--format", "engine", "--precision", "int8", "--calib", "fashion-mnist",
        "--data-dir", data, "--calib-samples", "8", "--output", tmp_path / "fm.int8.plan",
    )  # fmt: skip
    assert code == 0, err
    assert "int8 error per operation" in out and "int8: judged by accuracy" in out
    sidecar = json.loads((tmp_path / "fm.int8.plan.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["model"] == "shufflenet_v2_x0_5"
    assert sidecar["input"]["dataset"] == "fashion-mnist" and sidecar["input"]["image_size"] == [28, 28]
    plan = Plan.load(tmp_path / "fm.int8.plan")
    assert plan.input_shape == (1, 28, 28)
    monkeypatch.chdir(tmp_path)  # the default name keeps ".int8" beside the format's suffix
    code, _, err = cli(
        capsys, "export", weights, "--format", "engine", "--int8", "--calib", "fashion-mnist",
        "--data-dir", data, "--calib-samples", "8",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "exports" / "shufflenet_v2_x0_5.int8.plan").is_file()
    code, _, err = cli(capsys, "export", weights, "--format", "engine", "--int8", "--precision", "fp32")
    assert code == 2 and "contradict each other" in err
    code, _, err = cli(capsys, "export", weights, "--format", "onnx", "--precision", "bf16")
    assert code == 2 and "--precision bf16 runs on the engine: add --format engine" in err
    if not load_library().shufflenet_engine_bf16():
        return
    code, out, err = cli(
        capsys, "export", weights, "--format", "engine", "--precision", "bf16", "--calib", "fashion-mnist",
        "--data-dir", data, "--accuracy-samples", "16",
    )  # fmt: skip
    assert code == 0, err
    assert "bf16: judged by accuracy" in out and "int8 error" not in out
    written = tmp_path / "exports" / "shufflenet_v2_x0_5.bf16.plan"
    assert Plan.load(written).precision == "bf16"
    assert json.loads(written.with_name(written.name + ".json").read_text())["precision"] == "bf16"
