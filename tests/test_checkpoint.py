import json
import os
import pathlib
import pickle
import random

import numpy as np
import pytest
import torch

from shufflenet.registry import create_model
from shufflenet.train.checkpoint import (
    EXPORT_FORMAT,
    CheckpointError,
    capture_rng_state,
    export_weights,
    load_checkpoint,
    load_exported,
    restore_rng_state,
    save_checkpoint,
)


def _draws():
    return torch.rand(4), random.random(), random.gauss(0, 1), np.random.rand(3), np.random.randn(2)


def _assert_same_draws(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1:3] == b[1:3]
    np.testing.assert_array_equal(a[3], b[3])
    np.testing.assert_array_equal(a[4], b[4])


def test_round_trip_with_model_optimizer_step_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    # Leave cached Gaussians behind so the "gauss_next" / "cached_gaussian" fields are non-trivial.
    random.gauss(0, 1)
    np.random.randn()

    rng = capture_rng_state()
    expected = _draws()
    save_checkpoint(
        tmp_path / "run" / "last.pt",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": 7,
            "rng": rng,
        },
    )
    _draws()  # move every generator on

    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 7
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(state["optimizer"]["state"][0]["momentum_buffer"], momentum)
    restored = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.1)
    restored.load_state_dict(state["optimizer"])
    assert restored.param_groups[0]["lr"] == 0.1

    restore_rng_state(state["rng"])
    _assert_same_draws(_draws(), expected)


def test_rng_state_needs_no_pickled_objects(tmp_path):
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    save_checkpoint(target, {"step": 1, "w": torch.arange(10.0)})

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(target, {"step": 2, "w": torch.zeros(10)})
    monkeypatch.undo()

    state = load_checkpoint(target)
    assert state["step"] == 1
    assert torch.equal(state["w"], torch.arange(10.0))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


class _TouchOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# torch warns that protocol 5 is unusual; beside the point here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle_p2", "pickle_p5", "torch_save"])
def test_pickled_objects_are_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.ones(2)}, "x": _TouchOnLoad(marker)}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2 if writer == "pickle_p2" else 5)

    with pytest.raises(CheckpointError, match="refusing to load") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.randn(1000)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (truncated, empty):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_export_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    args = {"num_classes": 10, "small_input": True}
    model = create_model("shufflenet_v2_x0_5", **args).eval()
    # Non-default BN statistics, so a wrong load would show in the outputs.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)

    weights, sidecar = export_weights(
        model, tmp_path / "out" / "final.safetensors", model_name="shufflenet_v2_x0_5", model_args=args
    )
    assert weights == tmp_path / "out" / "final.safetensors"
    assert sidecar == tmp_path / "out" / "final.json"
    assert json.loads(sidecar.read_text()) == {
        "model": "shufflenet_v2_x0_5",
        "args": args,
        "format": EXPORT_FORMAT,
    }

    loaded = load_exported(weights)
    assert not loaded.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_exported_without_sidecar(tmp_path):
    model = create_model("shufflenet_v2_x0_5", num_classes=10, small_input=True)
    weights, sidecar = export_weights(
        model, tmp_path / "w.safetensors", model_name="shufflenet_v2_x0_5", model_args={"num_classes": 10}
    )
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match=r"w\.json"):
        load_exported(weights)
