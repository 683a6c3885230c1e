"""The C inference engine (shufflenet.deploy.engine) against PyTorch: same logits for every ShuffleNet
variant and awkward input size, no state between calls, clear refusals, and a cached compiled library."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from shufflenet import create_model
from shufflenet._testing import trained_looking
from shufflenet.deploy import engine
from shufflenet.deploy.engine import EngineUnavailable, build_engine, load_library
from shufflenet.deploy.engine_abi import OPCODES, fields, make_op
from shufflenet.deploy.runtimes import RuntimeUnavailable
from shufflenet.ops import SparseShift

try:
    load_library()
except EngineUnavailable as error:  # no AVX2/FMA or no C compiler: the engine is optional, so is this file
    pytest.skip(f"the C engine cannot run on this machine: {error}", allow_module_level=True)

# The instruction sets the engine compiles for that this CPU runs (its default, the widest, first).
# The plain-C build is checked on fewer models in test_engine_portable.py.
ISAS_HERE = [isa for isa in engine.isas_here() if isa != "generic"]

# float32 with a different summation order (folded BN, FMA, tiled GEMM) than PyTorch: the observed
# difference is ~3e-5 of the largest logit, so 1e-4 of it (at least 1e-4 absolute) leaves headroom while
# any wrong tap, channel or border value (an O(0.1) activation error) is far outside it.
TOLERANCE = 1e-4


def _model(name: str, size: tuple[int, int], **kwargs) -> nn.Module:
    """A model with measured BN statistics, random affine BN and O(1) logits, in eval mode.
    ``trained_looking`` calls ``randomize_batchnorm``, so folding is exercised away from the identity.
    Sparse shifts get learned-looking displacements: most 0 or 1, some 2-4 pixels, in either direction."""
    kwargs.setdefault("num_classes", 10)
    model = create_model(name, **kwargs)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, SparseShift):
                layer.alpha.copy_(torch.randn(layer.channels, generator=generator) * 1.3)
                layer.beta.copy_(torch.randn(layer.channels, generator=generator) * 1.3)
    return trained_looking(model, size)


def _batch(model: nn.Module, size: tuple[int, int], n: int = 2, seed: int = 0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.in_chans, *size, generator=generator).numpy()


def _reference(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch)).float().numpy()


def _assert_matches(out: np.ndarray, reference: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(out, reference, rtol=0, atol=TOLERANCE * scale)


CASES = [
    # ShuffleNet V2: both layouts (paper: unequal stride-2 branches), no shuffle, and x2.0 whose widths
    # (122, 244, 488, ...) are not multiples of 8 or 16. 3, 5, 7 or 13 classes here and below give the
    # classifier's GEMM panels odd remainders, which ShuffleNet widths rarely do (partial stores).
    pytest.param("shufflenet_v2_x0_5", {"num_classes": 13}, (64, 64), id="v2_x0_5-paper-13cls"),
    pytest.param("shufflenet_v2_x0_5", {"layout": "torchvision"}, (64, 64), id="v2_x0_5-torchvision"),
    pytest.param("shufflenet_v2_x1_0", {}, (64, 64), id="v2_x1_0-paper"),
    pytest.param(
        "shufflenet_v2_x1_0", {"layout": "torchvision", "num_classes": 3}, (64, 64), id="v2_x1_0-tv-3cls"
    ),
    pytest.param("shufflenet_v2_x0_5", {"shuffle": False}, (64, 64), id="v2_x0_5-noshuffle"),
    pytest.param("shufflenet_v2_x2_0", {"num_classes": 5}, (64, 64), id="v2_x2_0-paper-5cls"),
    pytest.param("shufflenet_v2_x2_0", {"layout": "torchvision"}, (64, 64), id="v2_x2_0-torchvision"),
    # ShuffleNet V1: every group count of Table 1 (g1 has no shuffle at all), and the Table 3 ablation.
    *[pytest.param(f"shufflenet_v1_g{g}_x0_5", {}, (64, 64), id=f"v1_g{g}_x0_5") for g in (1, 2, 3, 4, 8)],
    pytest.param("shufflenet_v1_g3_x1_0", {"num_classes": 7}, (64, 64), id="v1_g3_x1_0-7cls"),
    pytest.param("shufflenet_v1_g3_x0_5", {"shuffle": False}, (64, 64), id="v1_g3_x0_5-noshuffle"),
    # MobileNet V1 (stride-2 depthwise convs, no pool) and V2 (ReLU6, linear bottlenecks, residual adds
    # without an activation, the expansion-1 first block), from the same lowering.
    pytest.param("mobilenet_v1_x0_5", {"num_classes": 7}, (64, 64), id="mobilenet_v1_x0_5"),
    pytest.param("mobilenet_v2_x0_5", {}, (64, 64), id="mobilenet_v2_x0_5"),
    pytest.param(
        "mobilenet_v2_x1_4", {"small_input": True, "in_chans": 1}, (28, 28), id="mobilenet_v2-small"
    ),
    # FE-Net (DW): FE-Blocks (a copied part beside each residual unit's output, residuals read from a
    # channel offset), 2x2 average pools after or before the expansion, odd sizes dropping a row.
    pytest.param("fenet_dw_x1_0", {}, (64, 64), id="fenet_dw_x1_0"),
    pytest.param(
        "fenet_dw_x1_375", {"pool": "before", "num_classes": 5}, (47, 65), id="fenet_dw-pool-first-odd"
    ),
    # ShiftResNet with 1x1 convolutions only (Chen et al. 2019, Table 1): stride-2 1x1 convs, projection
    # shortcuts added in the epilogue.
    pytest.param("shiftresnet20_1x1", {}, (32, 32), id="shiftresnet20_1x1"),
    pytest.param("shiftresnet20_1x1", {"num_classes": 3}, (33, 31), id="shiftresnet20_1x1-odd"),
    # Shifts as addressing (Chen et al. 2019): the expansion writes into a zero-bordered map, the next 1x1
    # conv reads each channel at its displacement, at stride 1 and 2 (ShiftResNet's first stage units).
    pytest.param("shiftresnet20_ssl", {}, (32, 32), id="shiftresnet20_ssl"),
    pytest.param("shiftresnet20_grouped", {"num_classes": 3}, (33, 31), id="shiftresnet20_grouped-odd"),
    pytest.param("fenet_x1_0", {}, (64, 64), id="fenet_x1_0"),
    pytest.param("fenet_x1_375", {"pool": "before"}, (47, 65), id="fenet_x1_375-pool-first-odd"),
    # FE-Net's squeeze-excite reads a shifted map: the shift is made real there (a gather), then SE runs.
    pytest.param("fenet_x1_375_se", {"num_classes": 5}, (47, 65), id="fenet_x1_375_se-odd"),
    # Squeeze-and-excitation (Zhang et al. 2018, Table 5): before the residual add at stride 1, before the
    # concatenation's ReLU at stride 2.
    pytest.param("shufflenet_v1_g3_x0_5", {"se": True}, (64, 64), id="v1_g3_x0_5-se"),
    pytest.param("shufflenet_v1_g3_x2_0_se", {"num_classes": 3}, (47, 65), id="v1_g3_x2_0_se-odd"),
    # Stride-1 stem without max pool, one input channel (Fashion-MNIST style).
    pytest.param("shufflenet_v2_x0_5", {"small_input": True, "in_chans": 1}, (28, 28), id="v2-small-28"),
    pytest.param("shufflenet_v1_g3_x0_5", {"small_input": True, "in_chans": 1}, (28, 28), id="v1-small-28"),
    # Odd sizes: pixel counts not multiples of the 6-row GEMM tile, maps narrower than the depthwise
    # conv's blocks of outputs, odd borders for the stride-2 convs and pools, down to 1-pixel-wide maps.
    pytest.param("shufflenet_v2_x0_5", {}, (47, 65), id="v2_x0_5-47x65"),
    pytest.param("shufflenet_v2_x2_0", {"layout": "torchvision"}, (65, 47), id="v2_x2_0-65x47"),
    pytest.param("shufflenet_v1_g3_x0_5", {}, (65, 47), id="v1_g3-65x47"),
    pytest.param("shufflenet_v1_g8_x0_5", {}, (47, 65), id="v1_g8-47x65"),
    pytest.param("shufflenet_v2_x0_5", {"small_input": True}, (33, 31), id="v2-small-33x31"),
    pytest.param("shufflenet_v1_g2_x0_5", {}, (33, 32), id="v1_g2-33x32"),
]


def test_weight_panels_follow_the_kernels_cutting_rule():
    """Panels of two vectors; 2.5 or 3 vectors' worth remaining make one (AVX2: a 4x20 / 4x24 tile); a
    last narrower panel is padded to a half vector, at least 16 floats. engine.c's panel_width and
    panel_stride walk the same cuts over the packed weights."""
    avx2, avx512 = 8, 16
    assert engine._panels(16, avx2) == [(0, 16)]
    assert engine._panels(20, avx2) == [(0, 20)] and engine._panels(24, avx2) == [(0, 24)]
    assert engine._panels(40, avx2) == [(0, 16), (16, 40)]
    assert engine._panels(58, avx2) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert engine._panels(116, avx2)[-2:] == [(80, 96), (96, 116)]
    assert engine._panels(10, avx2) == [(0, 16)]
    assert engine._panels(32, avx512) == [(0, 32)]
    assert engine._panels(40, avx512) == [(0, 40)] and engine._panels(48, avx512) == [(0, 48)]
    assert engine._panels(58, avx512) == [(0, 32), (32, 64)]  # 26 left: a 32-wide tile
    assert engine._panels(116, avx512) == [(0, 32), (32, 64), (64, 96), (96, 120)]  # 20 left: 24 wide
    assert engine._panels(10, avx512) == [(0, 16)] and engine._panels(80, avx512) == [(0, 32), (32, 80)]


def test_weights_and_buffers_start_on_cache_lines():
    """NumPy puts large arrays 16 bytes past a page; the engine's arena and buffers must start on a
    64-byte line, or every other vector access straddles two lines."""
    plan = build_engine(create_model("shufflenet_v1_g3_x0_5").eval(), (64, 64))
    starts = [plan._floats.ctypes.data] + [buffer.ctypes.data for buffer in plan._buffers]
    assert all(start % 64 == 0 for start in starts)
    assert engine._aligned_floats(5).tolist() == [0.0] * 5


@pytest.mark.parametrize("isa", ISAS_HERE)
@pytest.mark.parametrize(("name", "kwargs", "size"), CASES)
def test_engine_matches_pytorch(name, kwargs, size, isa):
    """Every instruction set this CPU runs (AVX-512 tiles are wider, with masked tails), same logits."""
    model = _model(name, size, **kwargs)
    batch = _batch(model, size)
    reference = _reference(model, batch)
    # Logits must be far from zero, else the absolute tolerance would hide a broken network.
    assert np.abs(reference).max() > 0.3
    out = build_engine(model, size, isa=isa)(batch)
    assert out.shape == reference.shape and out.dtype == np.float32
    _assert_matches(out, reference)


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5", "fenet_x1_0"])
def test_batch_rows_equal_single_calls_and_calls_do_not_leak_state(name):
    """Every sample runs the same ops on the same buffers (V1 adds its residual in place, V2 gathers its
    kept half), so a batch, single calls and repeated calls must agree bit for bit."""
    size = (35, 41)
    model = _model(name, size)
    batch = _batch(model, size, n=3)
    other = _batch(model, size, n=1, seed=1)
    kept = batch.copy()
    run = build_engine(model, size)
    first = run(batch)
    singles = np.concatenate([run(batch[i : i + 1]) for i in range(3)])
    run(other)
    again = run(batch)
    np.testing.assert_array_equal(singles, first)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(batch, kept)  # the input is read, never written
    assert not np.array_equal(first[0], first[1])  # distinct samples, distinct rows
    _assert_matches(first, _reference(model, batch))


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("shufflenet_v2_x0_5", {}, (64, 64)),  # copies, pools, pixel-split GEMMs, a panel-split head
        ("shufflenet_v1_g3_x0_5", {"se": True}, (47, 65)),  # grouped GEMMs, the scale op, odd rows
        ("mobilenet_v2_x0_5", {}, (64, 64)),  # stride-2 depthwise convs, in-place residuals
        ("shiftresnet20_ssl", {}, (33, 31)),  # shifted reads: one line per output row
        ("fenet_x1_0", {}, (32, 32)),  # bordered writes, 2x2 pools
    ],
)
def test_threads_split_the_work_and_give_the_single_thread_logits_bit_for_bit(name, kwargs, size):
    """Each output element is computed by the same code whichever thread owns it, so any thread count,
    more threads than cores included (the barrier must yield), gives exactly the one-thread logits."""
    model = _model(name, size, **kwargs)
    batch = _batch(model, size, n=2)
    alone = build_engine(model, size, threads=1)(batch)
    _assert_matches(alone, _reference(model, batch))
    for threads in (2, 3, 5):
        run = build_engine(model, size, threads=threads)
        assert run.threads == threads
        np.testing.assert_array_equal(run(batch), alone)
        np.testing.assert_array_equal(run(batch), alone)  # the pool wakes again for a second call


@pytest.mark.parametrize("isa", ISAS_HERE)
@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("mobilenet_v2_x0_5", (47, 65)),  # expansions into stride-1 and stride-2 depthwise convs
        ("mobilenet_v1_x0_5", (41, 37)),  # the stem conv (one image line per row) into a depthwise conv
        ("shufflenet_v1_g3_x0_5", (35, 41)),  # grouped 1x1 convs, read through index tables
        ("fenet_dw_x1_0", (32, 32)),
    ],
)
def test_fused_expansions_give_the_unfused_logits_bit_for_bit(name, size, isa):
    """A 1x1 conv run row by row into the depthwise conv's ring, and the 1x1 conv after it row by row from
    the depthwise conv's row, compute each output with the same code as over whole maps, at any thread
    count (each thread makes the map rows its output rows need)."""
    model = _model(name, size)
    batch = _batch(model, size, n=2)
    library = load_library(isa)
    lanes = library.shufflenet_engine_lanes()
    fused = engine.plan_engine(model, size, lanes=lanes, fuse_map_bytes=0)
    whole = engine.plan_engine(model, size, lanes=lanes, fuse_map_bytes=1 << 62)
    markers = [op for op in fused.ops if op.code == OPCODES["expand_depthwise"]]
    assert markers and not any(op.code == OPCODES["expand_depthwise"] for op in whole.ops)
    assert any(fields(op)[1].project for op in markers)  # three operations at once somewhere
    assert len(fused.ops) == len(whole.ops) + len(markers)
    expected = engine.Engine(library, whole, threads=1)(batch)
    _assert_matches(expected, _reference(model, batch))
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(engine.Engine(library, fused, threads=threads)(batch), expected)


def test_multiply_adds_per_operation_sum_to_the_papers_count():
    """The profile's GMAC/s reads each operation's multiply-adds: over the planned convs and classifier they
    add up to the model's count as the papers count it, and a fused run's marker counts those it runs."""
    from shufflenet.profile import profile

    size = (64, 64)
    model = _model("mobilenet_v2_x0_5", size)
    library = load_library("generic")
    lanes = library.shufflenet_engine_lanes()
    whole = engine.Engine(library, engine.plan_engine(model, size, lanes=lanes, fuse_map_bytes=1 << 62))
    counted = sum(whole.multiply_adds(index) for index in range(whole.operations))
    assert counted == pytest.approx(profile(model, input_size=size).mflops * 1e6, rel=1e-6)
    fused = engine.Engine(library, engine.plan_engine(model, size, lanes=lanes, fuse_map_bytes=0))
    markers = [i for i, op in enumerate(fused.plan.ops) if op.code == OPCODES["expand_depthwise"]]
    assert markers
    for index in markers:
        span = 3 if fields(fused.plan.ops[index])[1].project else 2
        members = sum(fused.multiply_adds(index + step) for step in range(1, span + 1))
        assert fused.multiply_adds(index) == members > 0


def test_only_a_map_that_nothing_else_reads_is_made_row_by_row():
    """The ring replaces the 1x1 conv's map: a map read again later (or one too small) keeps being written."""
    model = _model("mobilenet_v2_x0_5", (64, 64))
    plan = engine.plan_engine(model, (64, 64), lanes=16, fuse_map_bytes=1 << 62)
    ops = plan.ops
    marker = OPCODES["expand_depthwise"]
    first = next(i for i in range(len(ops) - 1) if engine._fusable(ops, i, 0))
    expanded = fields(ops[first])[1].target
    assert engine._fuse_expansions(ops[first : first + 2], 0, plan.ints)[0].code == marker
    # The stem conv, depthwise conv and 1x1 conv of the first unit: the last comes along, unless its input
    # map is read again later.
    assert engine._projects(ops, first, plan.ints)
    read = fields(ops[first + 1])[1].target

    def global_average(source: int) -> object:
        return make_op(
            "global_average",
            source=source,
            pixels=1,
            source_stride=8,
            channels=8,
            target=source + 1,
            value_bytes=4,
            integers=0,
        )

    assert not engine._projects([*ops[first : first + 3], global_average(read)], 0, plan.ints)
    reader = global_average(expanded)
    assert not engine._fusable([*ops[first : first + 2], reader], 0, 0)
    depthwise = fields(ops[first + 1])[1]
    map_bytes = 4 * depthwise.source_stride * depthwise.height * depthwise.width
    assert engine._fusable(ops, first, map_bytes) and not engine._fusable(ops, first, map_bytes + 4)


def test_threads_default_to_the_usable_cores_and_must_be_positive():
    from shufflenet._system import usable_cores

    model = _model("shufflenet_v2_x0_5", (32, 32))
    assert build_engine(model, (32, 32)).threads == usable_cores()
    with pytest.raises(ValueError, match="threads must be at least 1"):
        build_engine(model, (32, 32), threads=0)


@pytest.mark.slow
def test_every_registered_model_runs_on_the_engine_as_in_pytorch():
    """All families and their ablations, the Table 4 peers' dense 3x3 convs included, against the model in
    float64: the engine sums each output in one FMA chain, so on the 20-layer plain VGG-like net its
    float32 error is about twice PyTorch's (both under 1e-4 of the largest logit)."""
    import copy

    from shufflenet import list_models

    far = {}
    for name in list_models():
        model = _model(name, (64, 64))
        batch = _batch(model, (64, 64), n=1)
        with torch.no_grad():
            exact = copy.deepcopy(model).double()(torch.from_numpy(batch).double()).numpy()
        out = build_engine(model, (64, 64), threads=2)(batch)
        error = float(np.abs(out - exact).max()) / max(1.0, float(np.abs(exact).max()))
        if error > TOLERANCE:
            far[name] = error
    assert not far


def test_engine_accepts_float64_and_non_contiguous_batches():
    """The batch is converted to contiguous float32 before its pointer goes to C."""
    size = (32, 32)
    model = _model("shufflenet_v2_x0_5", size)
    batch = _batch(model, size)
    run = build_engine(model, size)
    expected = run(batch)
    strided = np.repeat(batch, 2, axis=3)[..., ::2]  # the same values, every other float in memory
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(run(strided), expected)
    np.testing.assert_array_equal(run(batch.astype(np.float64)), expected)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: __import__("torchvision").models.shufflenet_v2_x0_5(), "this library's models", id="tv"
        ),
        pytest.param(lambda: create_model("shufflenet_v2_x0_5", num_classes=0), "num_classes", id="no-head"),
    ],
)
def test_unsupported_models_are_refused_with_the_reason(build, message):
    with pytest.raises(EngineUnavailable, match=message):
        build_engine(build().eval(), (64, 64))


def test_training_mode_and_too_small_inputs_are_refused():
    """BN is folded from running statistics (eval semantics), and the model's own input check applies."""
    model = create_model("shufflenet_v1_g3_x0_5", num_classes=10)
    with pytest.raises(ValueError, match="eval"):
        build_engine(model.train(), (64, 64))
    with pytest.raises(ValueError, match="smaller than the network's total stride"):
        build_engine(model.eval(), (16, 16))


def test_profile_names_every_operation_and_times_it():
    model = _model("shufflenet_v2_x0_5", (64, 64))
    planned = build_engine(model, (64, 64))
    rows = planned.profile(_batch(model, (64, 64), n=1), repeats=2)
    assert len(rows) == planned.operations
    kinds = {name.split()[0] for name, _ in rows}
    assert {"pad", "pointwise", "depthwise", "max", "copy", "global"} <= kinds
    assert all(seconds > 0 for _, seconds in rows)


def test_engine_unavailable_is_a_runtime_unavailable():
    """Callers that fall back on RuntimeUnavailable (the benchmark, export verification) catch it too."""
    assert issubclass(EngineUnavailable, RuntimeUnavailable)


@pytest.mark.parametrize(
    "shape",
    [(2, 3, 32, 33), (2, 3, 33, 32), (2, 1, 32, 32), (3, 32, 32), (1, 2, 3, 32, 32)],
    ids=["width", "height", "channels", "no-batch-axis", "5d"],
)
def test_wrong_batch_shape_raises_value_error_naming_the_plan(shape):
    run = build_engine(_model("shufflenet_v2_x0_5", (32, 32)), (32, 32))
    with pytest.raises(ValueError, match=re.escape("(3, 32, 32)")):
        run(np.zeros(shape, np.float32))


@pytest.mark.slow
def test_library_is_compiled_once_into_the_cache(tmp_path, monkeypatch):
    """Compiling takes seconds, so a fresh process must reuse the file: one ``engine-*.so`` in the cache
    (built in a temporary folder beside it, which must be gone), loaded again without a compile."""
    monkeypatch.setenv("SHUFFLENET_CACHE", str(tmp_path))
    monkeypatch.setattr(engine, "_LIBRARIES", {})
    library = load_library()
    built = list(tmp_path.glob("engine-*.so"))
    assert len(built) == 1 and re.fullmatch(r"engine-avx(2|512)-[0-9a-f]+\.so", built[0].name), built
    assert not [path for path in tmp_path.iterdir() if path.is_dir()]
    assert load_library() is library  # the module keeps it
    mtime = built[0].stat().st_mtime_ns

    real_run = engine.subprocess.run

    def no_compile(command, *args, **kwargs):
        assert str(engine.SOURCE) not in map(str, command), "the cached library was compiled again"
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(engine, "_LIBRARIES", {})  # as in a new process
    monkeypatch.setattr(engine.subprocess, "run", no_compile)
    load_library()
    assert list(tmp_path.glob("engine-*.so")) == built and built[0].stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param(lambda mp: mp.setenv("CC", "no-such-compiler-xyz"), "C compiler", id="no-compiler"),
        pytest.param(lambda mp: mp.setenv("CC", "false"), "compiling engine.c failed", id="compile-fails"),
        pytest.param(
            lambda mp: mp.setenv("SHUFFLENET_ENGINE_ISA", "sse9"),
            "SHUFFLENET_ENGINE_ISA='sse9'",
            id="bad-isa",
        ),
        pytest.param(
            lambda mp: (
                mp.setattr(engine, "_cpu_flags", lambda: {"avx2", "fma"}),
                mp.setenv("SHUFFLENET_ENGINE_ISA", "avx512"),
            ),
            "lacks avx512f avx512vl",
            id="isa-not-on-this-cpu",
        ),
    ],
)
def test_load_library_says_why_it_cannot_run(setup, message, tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLENET_CACHE", str(tmp_path))
    monkeypatch.setattr(engine, "_LIBRARIES", {})
    setup(monkeypatch)
    with pytest.raises(EngineUnavailable, match=message):
        load_library()
    assert not list(tmp_path.glob("**/*.so"))  # a failed build leaves nothing to be loaded later


def test_the_widest_instruction_set_the_cpu_has_is_the_default(monkeypatch):
    monkeypatch.delenv("SHUFFLENET_ENGINE_ISA", raising=False)
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx2", "fma"})
    assert engine.engine_isa() == "avx2"
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512vl"})
    assert engine.engine_isa() == "avx512"
    monkeypatch.setenv("SHUFFLENET_ENGINE_ISA", "avx2")
    assert engine.engine_isa() == "avx2"


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5"])
def test_shuffle_is_addressing_not_dropped(name):
    """The engine turns each shuffle into read order; with the same weights, shuffling and not shuffling
    must give different logits, each equal to its own PyTorch model."""
    size = (64, 64)
    shuffled = _model(name, size)
    plain = create_model(name, num_classes=10, shuffle=False)
    plain.load_state_dict(shuffled.state_dict())  # a shuffle has no parameters: the same weights
    plain.eval()
    batch = _batch(shuffled, size)
    out_shuffled = build_engine(shuffled, size)(batch)
    out_plain = build_engine(plain, size)(batch)
    _assert_matches(out_shuffled, _reference(shuffled, batch))
    _assert_matches(out_plain, _reference(plain, batch))
    assert np.abs(out_shuffled - out_plain).max() > 100 * TOLERANCE


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x1_0", "shufflenet_v2_x1_0"])
def test_the_plan_follows_the_lowering_and_reuses_buffers_as_maps_die(name):
    from shufflenet.deploy.lower import lower

    model = create_model(name).eval()
    plan = build_engine(model, (224, 224))
    program = lower(model, (224, 224))
    every_map = sum(m.channels * m.height * m.width for m in program.maps[1:])
    held = sum(buffer.size for buffer in plan._buffers)
    # A few buffers in turn (input, padded image, and a ping-pong of feature maps), not one per map.
    assert len(plan._buffers) <= 7 and held < every_map / 3


def test_shifts_are_addressing_not_operations():
    """Chen et al. 2019, Fig. 2e: a shift moves no data in the engine, shifted channels included."""
    from shufflenet.deploy.lower import Shift, lower

    model = _model("shiftresnet20_ssl", (32, 32))
    program = lower(model, (32, 32))
    shifts = sum(isinstance(op, Shift) for op in program.operations)
    plan = build_engine(model, (32, 32))
    assert shifts == 9 and plan.operations == len(program.operations) - shifts + 1  # + the input's padding
