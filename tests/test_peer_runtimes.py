"""The mobile frameworks as runtimes (ncnn through pnnx, MNN), OpenVINO at its default precision, and the
correctness gate of the paired benchmark: a runtime that computes something else is reported, never
timed or chosen."""

import warnings

import numpy as np
import pytest
import torch

from shufflenet import create_model
from shufflenet._testing import trained_looking
from shufflenet.bench.latency import LatencyCell, measure_paired, peer_ratios
from shufflenet.deploy.errors import RuntimeUnavailable
from shufflenet.deploy.runtimes import agrees, build_runner

SIZE = (64, 64)


def _model():
    return trained_looking(create_model("shufflenet_v2_x0_5", num_classes=10), SIZE)


def _build(runtime, model, example, tmp_path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_runner(runtime, model, example, threads=1, workdir=tmp_path)
    except RuntimeUnavailable as error:
        pytest.skip(f"{runtime} is not installed here: {error}")


@pytest.mark.parametrize(("runtime", "tolerance"), [("ncnn", 1e-4), ("mnn", 1e-4), ("ncnn_default", 0.05)])
def test_peer_frameworks_compute_the_model(runtime, tolerance, tmp_path):
    """fp32 cells equal eager to fp32 rounding; ncnn's defaults (fp16 weights) to fp16 rounding."""
    model = _model()
    example = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(example).numpy()
    out = _build(runtime, model, example, tmp_path)(example.numpy())
    assert out.shape == reference.shape
    assert agrees(out, reference, tolerance)
    assert not agrees(out, np.roll(reference, 1, axis=1), tolerance)  # the check can fail


def test_agrees_is_relative_to_the_largest_logit():
    reference = np.array([[10.0, -2.0]], np.float32)
    assert agrees(reference + 0.009, reference) and not agrees(reference + 0.011, reference)
    assert not agrees(reference[:, :1], reference)  # another shape is never equal


def test_wrong_cells_are_reported_not_timed_and_ratios_name_the_fastest_peer(monkeypatch):
    """A runtime whose output differs from eager (as OpenVINO 2026.4's on the shift nets) gets an error
    and no time; the ratio compares the engine with the fastest fp32 peer left."""
    from shufflenet.bench import latency

    real = latency.build_runner

    def broken_ort(runtime, model, example, **kwargs):
        run = real(runtime, model, example, **kwargs)
        return (lambda batch: run(batch) + 1.0) if runtime == "ort" else run

    monkeypatch.setattr(latency, "build_runner", broken_ort)
    cells = measure_paired(
        ["shufflenet_v2_x0_5[num_classes=10,small_input=true]"],
        size=(32, 32),
        runtimes=["eager", "ort", "engine"],
        passes=3,
        warmup=1,
        progress=False,
    )
    by_runtime = {cell.runtime: cell for cell in cells}
    assert "wrong output" in by_runtime["ort"].error and by_runtime["ort"].median_ms is None
    assert by_runtime["engine"].median_ms > 0 and by_runtime["engine"].extra["error"] < 1e-4
    assert peer_ratios(cells) == []  # no fp32 peer timed: no ratio
    by_runtime["ort"].error, by_runtime["ort"].median_ms = None, 2 * by_runtime["engine"].median_ms
    ((what, value, _),) = peer_ratios(cells)
    assert "fastest fp32 peer (ort)" in what and value == pytest.approx(0.5)
    # timed cells keep their times pass by pass (peer_ratios' spread); a cell not timed has none
    assert [len(by_runtime[name].extra["pass_ms"]) for name in ("eager", "engine")] == [3, 3]
    assert "pass_ms" not in by_runtime["ort"].extra


def test_the_engines_ratio_comes_with_its_spread_pass_by_pass():
    """The engine's ratio to the fastest fp32 peer says the middle half of the per-pass ratios where both
    cells kept their passes (one run's ratio of medians moves with a noisy machine)."""
    engine = LatencyCell(
        "m", 224, 224, 1, "engine", median_ms=3.0, extra={"pass_ms": [1.0, 2.0, 3.0, 4.0, 5.0]}
    )
    ort = LatencyCell("m", 224, 224, 1, "ort", median_ms=2.0, extra={"pass_ms": [2.0] * 5})
    ((what, value, reading),) = peer_ratios([engine, ort])
    assert "fastest fp32 peer (ort)" in what
    assert value == pytest.approx(1.5) and reading.endswith("pass by pass, the middle half 1.00-2.00")
    ort.extra = {}  # cells from separate runs: no spread to give
    assert peer_ratios([engine, ort])[0][2] == "below 1: ours is faster"


def test_our_deploy_path_never_picks_a_backend_that_computes_something_else(monkeypatch, tmp_path):
    from shufflenet.deploy import runtimes

    def wrong(path, threads):
        return lambda batch: np.zeros((batch.shape[0], 10), np.float32)  # instant, and wrong

    monkeypatch.setitem(runtimes.ONNX_BACKENDS, "openvino", wrong)
    monkeypatch.setitem(runtimes.ONNX_BACKENDS, "ort", wrong)
    model = _model()
    example = torch.randn(1, 3, *SIZE)
    run = build_runner("ours", model, example, threads=1, workdir=tmp_path)
    assert run.backend in ("engine", "torch")
    with torch.no_grad():
        assert agrees(run(example.numpy()), model(example).numpy())


def test_the_bf16_engine_cell_is_checked_loosely_and_ranked_against_every_peer():
    """engine_bf16 is timed where the CPU has AVX512_BF16 (its output within 10% of eager's largest logit),
    else reported unavailable in one line; its ratio is to the fastest peer cell at any precision."""
    from shufflenet.deploy.engine import BFLOAT16_MISSING, EngineUnavailable, load_library

    try:
        has_bf16 = bool(load_library().shufflenet_engine_bf16())
    except EngineUnavailable as error:
        pytest.skip(f"the C engine cannot run here: {error}")
    cells = measure_paired(
        ["shufflenet_v2_x0_5[num_classes=10,small_input=true]"],
        size=(32, 32),
        runtimes=["eager", "engine_bf16"],
        passes=2,
        warmup=1,
        progress=False,
    )
    cell = {cell.runtime: cell for cell in cells}["engine_bf16"]
    if has_bf16:
        assert cell.error is None and 0 < cell.extra["error"] < 0.1 and cell.median_ms > 0
    else:
        assert cell.error == BFLOAT16_MISSING
    times = {"ort": 3.0, "openvino_default": 2.5, "engine": 2.8, "engine_bf16": 2.0}
    ranked = [LatencyCell("m", 224, 224, 1, runtime, median_ms=ms) for runtime, ms in times.items()]
    ((what, value, _),) = [row for row in peer_ratios(ranked) if "engine (bf16)" in row[0]]
    assert "fastest peer at any precision (openvino_default)" in what and value == pytest.approx(2.0 / 2.5)
