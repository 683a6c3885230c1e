"""bf16 in the engine (AVX512_BF16 dot products, float32 sums and maps): the kernels agree with the
lowering's bfloat16 reference (shufflenet.deploy.lower.run_program with bfloat16=True) to float32 rounding,
and with float32 within bfloat16's precision, for every family, threads, the row-by-row fusion and a saved
plan; CPUs or builds without the instructions are refused in one line."""

import numpy as np
import pytest
import torch

from shufflenet import create_model
from shufflenet.deploy import engine
from shufflenet.deploy.engine import (
    BFLOAT16_MISSING,
    EngineUnavailable,
    build_engine,
    build_runner,
    plan_engine,
    run_saved_plan,
)
from shufflenet.deploy.lower import lower, run_program

try:
    LIBRARY = engine.load_library("avx512")
except EngineUnavailable as error:
    LIBRARY = None
    NO_BF16 = f"no AVX-512 engine build here: {error}"
else:
    NO_BF16 = None if LIBRARY.shufflenet_engine_bf16() else "this CPU lacks AVX512_BF16"
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=str(NO_BF16))

SIZE = (40, 40)
MODELS = [
    "shufflenet_v2_x0_5",
    "shufflenet_v1_g3_x0_5",
    "mobilenet_v2_x0_5",
    "mobilenet_v1_x0_5",
    "shufflenet_v1_g3_x2_0_se",
    "fenet_x1_375_se",
    "shiftresnet20_ssl",
    "shufflenet_v1_peer_resnet_13m",
]


def _model_and_batch(name: str):
    # At initialisation: trained_looking's nets (BN statistics of 8 random images, random BN scales) amplify
    # bfloat16's rounding to 5-20% of the largest logit, as random deep nets do int8's; trained nets are
    # judged by their accuracy (benchmarks/engine_precision_accuracy.py).
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    batch = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    return model, batch


def _largest(values: np.ndarray) -> float:
    return float(np.abs(values).max())


@needs_bf16
@pytest.mark.parametrize("name", MODELS)
def test_bf16_engine_agrees_with_the_bfloat16_reference_and_with_float32(name):
    model, batch = _model_and_batch(name)
    program = lower(model, SIZE)
    rounded = run_program(program, batch, bfloat16=True).numpy()
    exact = run_program(program, batch).numpy()
    # fuse_map_bytes 0: every 1x1 conv that can runs row by row with its depthwise conv (bf16 rows too)
    for fuse in (None, 0):
        plan = plan_engine(model, SIZE, lanes=16, precision="bf16", fuse_map_bytes=fuse)
        assert plan.precision == "bf16"
        for threads in (1, 2):
            got = engine.Engine(LIBRARY, plan, threads=threads)(batch.numpy())
            where = f"{name}, fusion {fuse}, {threads} threads"
            # The same bfloat16 products; float32 sums in another order may round a later input the
            # other way, one bfloat16 step (1/256) on a few values.
            assert np.abs(got - rounded).max() <= 5e-3 * _largest(rounded), where
            assert np.abs(got - exact).max() <= 3e-2 * _largest(exact), where
    assert np.abs(rounded - exact).max() > 1e-5 * _largest(exact), "the reference rounds nothing"


@needs_bf16
def test_a_saved_bf16_plan_runs_in_the_runner_as_in_the_library(tmp_path):
    model, batch = _model_and_batch("shufflenet_v2_x0_5")
    plan = plan_engine(model, SIZE, lanes=16, precision="bf16")
    plan.save(tmp_path / "model.plan")
    command, _ = build_runner("avx512")
    np.testing.assert_array_equal(
        run_saved_plan(command, tmp_path / "model.plan", batch.numpy()),
        engine.Engine(LIBRARY, plan)(batch.numpy()),
    )
    assert engine.Plan.load(tmp_path / "model.plan").precision == "bf16"


def test_bfloat16_weight_pairs_round_to_nearest_even_and_pad_an_odd_k():
    one_and_a_bit = np.float32(1 + 2**-8)  # halfway between two bfloat16 values: rounds to even (1.0)
    above = np.float32(1 + 2**-8 + 2**-12)  # above halfway: rounds up
    weights = np.array([[[1.0, -2.0], [one_and_a_bit, above], [3.0, 0.5]]], np.float32)  # 1 x K=3 x N=2
    words = engine._bfloat16_pairs(weights).view(np.uint32)
    assert words.shape == (1, 2, 2)
    halves = np.stack([words & 0xFFFF, words >> 16], axis=-1)  # [g][pair][n][low, high]
    values = (halves.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(values[0, 0, :, 0], [1.0, -2.0])  # input channel 0 in the low half
    np.testing.assert_array_equal(values[0, 0, :, 1], [1.0, np.float32(1 + 2**-7)])  # channel 1 high
    np.testing.assert_array_equal(values[0, 1, :, 0], [3.0, 0.5])
    np.testing.assert_array_equal(values[0, 1, :, 1], [0.0, 0.0])  # past K: zero weight


def test_bf16_is_refused_off_the_avx512_build_and_on_cpus_without_it(monkeypatch):
    model, _ = _model_and_batch("shufflenet_v2_x0_5")
    with pytest.raises(EngineUnavailable, match="AVX-512 build"):
        plan_engine(model, SIZE, lanes=8, precision="bf16")
    library = engine.load_library()
    monkeypatch.setattr(library, "shufflenet_engine_bf16", lambda: 0)
    with pytest.raises(EngineUnavailable, match="AVX512_BF16") as refused:
        build_engine(model, SIZE, precision="bf16")
    assert str(refused.value) == BFLOAT16_MISSING
    if library.shufflenet_engine_lanes() == 16:  # a bf16 plan handed to a library that cannot run it
        plan = plan_engine(model, SIZE, lanes=16, precision="bf16")
        with pytest.raises(EngineUnavailable, match="AVX512_BF16"):
            engine.Engine(library, plan)
