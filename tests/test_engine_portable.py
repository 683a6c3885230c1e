"""The engine beyond this CPU's widest build: the plain-C build, saved plans run by the C runner, and the
aarch64 (NEON) build under emulation, each against PyTorch."""

import shutil
import struct

import numpy as np
import pytest
import torch

from shufflenet import create_model
from shufflenet._testing import trained_looking
from shufflenet.deploy import engine
from shufflenet.deploy.engine import (
    ISAS,
    EngineUnavailable,
    build_engine,
    build_runner,
    plan_engine,
    run_saved_plan,
)
from shufflenet.ops import SparseShift

if shutil.which("cc") is None:
    pytest.skip("the engine is compiled on first use: no C compiler (cc) here", allow_module_level=True)

TOLERANCE = 1e-4  # of the largest logit, as in test_engine.py

# One model of each kind of operation the kernels have: V2 (copies, odd panel remainders with 13
# classes), V1 with SE (grouped GEMM, pools, the scale op), MobileNet V2 (ReLU6, residual epilogue, stride-2
# depthwise), FE-Net (shifts as addressing, 2x2 pools), ShiftResNet (strided 1x1 convs, odd sizes).
PORTABLE_CASES = [
    pytest.param("shufflenet_v2_x0_5", {"num_classes": 13}, (64, 64), id="v2_x0_5-13cls"),
    pytest.param("shufflenet_v1_g3_x0_5", {"se": True}, (47, 65), id="v1_g3_x0_5-se-odd"),
    pytest.param(
        "mobilenet_v2_x0_5", {"small_input": True, "in_chans": 1}, (28, 28), id="mobilenet_v2-small"
    ),
    pytest.param("fenet_x1_0", {"num_classes": 7}, (32, 32), id="fenet_x1_0"),
    pytest.param("shiftresnet20_grouped", {"num_classes": 3}, (33, 31), id="shiftresnet20_grouped-odd"),
]


def _model(name, size, **kwargs):
    kwargs.setdefault("num_classes", 10)
    model = create_model(name, **kwargs)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, SparseShift):  # learned-looking displacements, up to a few pixels
                layer.alpha.copy_(torch.randn(layer.channels, generator=generator) * 1.3)
                layer.beta.copy_(torch.randn(layer.channels, generator=generator) * 1.3)
    return trained_looking(model, size)


def _batch_and_reference(model, size):
    batch = torch.randn(2, model.in_chans, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(batch).numpy()
    assert np.abs(reference).max() > 0.3  # far from zero, so the tolerance cannot hide a broken network
    return batch.numpy(), reference


def _assert_matches(out, reference):
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(out, reference, rtol=0, atol=TOLERANCE * scale)


@pytest.mark.parametrize(("name", "kwargs", "size"), PORTABLE_CASES)
def test_plain_c_build_matches_pytorch(name, kwargs, size):
    """The fallback for CPUs without a vector build: the same kernels over arrays of floats (every 1x1 conv
    that can feed its depthwise conv row by row doing so, as big maps do)."""
    model = _model(name, size, **kwargs)
    batch, reference = _batch_and_reference(model, size)
    plan = plan_engine(model, size, lanes=ISAS["generic"][2], fuse_map_bytes=0)
    _assert_matches(engine.Engine(engine.load_library("generic"), plan)(batch), reference)


def test_a_saved_plan_runs_in_the_runner_exactly_as_in_the_library(tmp_path):
    isa = engine.engine_isa()
    model = _model("shufflenet_v2_x0_5", (64, 64))
    batch, reference = _batch_and_reference(model, (64, 64))
    command, _ = build_runner(isa)
    plan = plan_engine(model, (64, 64), lanes=ISAS[isa][2])
    plan.save(tmp_path / "v2.plan")
    from_runner = run_saved_plan(command, tmp_path / "v2.plan", batch)
    from_library = build_engine(model, (64, 64), isa=isa)(batch)
    np.testing.assert_array_equal(from_runner, from_library)  # the same kernels, the same plan
    _assert_matches(from_runner, reference)


def _emulated_runner():
    try:
        return build_runner("neon")[0]
    except EngineUnavailable as error:
        pytest.skip(f"no aarch64 build here: {error}")


@pytest.mark.parametrize(("name", "kwargs", "size"), PORTABLE_CASES)
def test_aarch64_neon_build_matches_pytorch_under_emulation(name, kwargs, size, tmp_path):
    """NEON (4-float vectors: other weight panels, other tile shapes) on qemu-aarch64. This checks
    correctness only: ARM speed is not measured here. Every 1x1 conv that can feed its depthwise conv
    row by row does so (at these sizes the maps are too small for the planner's default)."""
    command = _emulated_runner()
    model = _model(name, size, **kwargs)
    batch, reference = _batch_and_reference(model, size)
    plan = plan_engine(model, size, lanes=ISAS["neon"][2], fuse_map_bytes=0)
    plan.save(tmp_path / "model.plan")
    alone = run_saved_plan(command, tmp_path / "model.plan", batch)
    _assert_matches(alone, reference)
    np.testing.assert_array_equal(run_saved_plan(command, tmp_path / "model.plan", batch, threads=3), alone)


def _saved_plan(tmp_path, lanes):
    model = create_model("shufflenet_v2_x0_5", num_classes=10).eval()
    path = tmp_path / "model.plan"
    plan_engine(model, (32, 32), lanes=lanes).save(path)
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda data: b"NOTAPLAN" + data[8:], "not an engine plan", id="magic"),
        pytest.param(lambda data: data[:-4], "truncated or corrupt plan", id="truncated"),
        pytest.param(
            lambda data: data[:8] + struct.pack("<q", 1) + data[16:], "another engine version", id="abi"
        ),
    ],
)
def test_the_runner_refuses_a_damaged_plan_with_the_reason(damage, message, tmp_path):
    isa = engine.engine_isa()
    command, _ = build_runner(isa)
    path = _saved_plan(tmp_path, ISAS[isa][2])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(EngineUnavailable, match=message):
        run_saved_plan(command, path, np.zeros((1, 3, 32, 32), np.float32))


def test_a_plan_for_another_vector_width_is_refused(tmp_path):
    isa = engine.engine_isa()
    other = 4 if ISAS[isa][2] != 4 else 8
    command, _ = build_runner(isa)
    path = _saved_plan(tmp_path, other)
    with pytest.raises(EngineUnavailable, match="another vector width"):
        run_saved_plan(command, path, np.zeros((1, 3, 32, 32), np.float32))
    model = create_model("shufflenet_v2_x0_5", num_classes=10).eval()
    with pytest.raises(EngineUnavailable, match="plan for this library's instruction set"):
        engine.Engine(engine.load_library(isa), plan_engine(model, (32, 32), lanes=other))


def test_the_runner_refuses_images_of_another_size(tmp_path):
    isa = engine.engine_isa()
    command, _ = build_runner(isa)
    path = _saved_plan(tmp_path, ISAS[isa][2])
    with pytest.raises(EngineUnavailable, match="planned size"):
        run_saved_plan(command, path, np.zeros((1, 3, 31, 32), np.float32))


def test_isas_here_and_the_choice(monkeypatch):
    monkeypatch.delenv("SHUFFLENET_ENGINE_ISA", raising=False)
    monkeypatch.setattr(engine, "_machine", lambda: "x86_64")
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"sse2"})
    assert engine.isas_here() == ["generic"] and engine.engine_isa() == "generic"
    monkeypatch.setattr(engine, "_machine", lambda: "aarch64")
    assert engine.engine_isa() == "neon"
    monkeypatch.setenv("SHUFFLENET_ENGINE_ISA", "avx2")
    with pytest.raises(EngineUnavailable, match="this CPU lacks avx2 fma"):
        engine.engine_isa()
