"""int8 in the engine: the kernels equal the integer reference (shufflenet.deploy.quantize.run_quantized) bit
for bit on every instruction set here, the plain-C build and aarch64 under emulation; the quantization
itself keeps each operation's error to a few steps of the uint8 grid; maps it cannot read right are
refused."""

import numpy as np
import pytest
import torch

from shufflenet import create_model
from shufflenet._testing import trained_looking
from shufflenet.deploy import engine
from shufflenet.deploy.engine import ISAS, EngineUnavailable, build_runner, plan_engine, run_saved_plan
from shufflenet.deploy.lower import Copy, Pool, Shift, lower, run_program
from shufflenet.deploy.quantize import (
    calibrate,
    dequantize,
    quantize,
    quantize_image,
    run_quantized,
)
from shufflenet.ops import SparseShift

try:
    engine.load_library()
except EngineUnavailable as error:
    pytest.skip(f"the C engine cannot run on this machine: {error}", allow_module_level=True)

ISAS_HERE = engine.isas_here()  # the vector builds this CPU runs, and plain C
SIZE = (40, 40)
FAMILIES = ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5", "mobilenet_v2_x0_5", "mobilenet_v1_x0_5"]
# Squeeze-excite, shifts read by addressing and made real, the Table 4 peers' dense 3x3 convs.
OTHERS = ["shufflenet_v1_g3_x2_0_se", "fenet_x1_375_se", "shiftresnet20_ssl", "shufflenet_v1_peer_resnet_13m"]


def _model_and_images(name: str, size=SIZE):
    model = create_model(name, num_classes=10)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # learned-looking shifts: most 0 or 1 pixel, some more, either way
        for layer in model.modules():
            if isinstance(layer, SparseShift):
                layer.alpha.copy_(torch.randn(layer.channels, generator=generator) * 1.3)
                layer.beta.copy_(torch.randn(layer.channels, generator=generator) * 1.3)
    model = trained_looking(model, size)
    generator = torch.Generator().manual_seed(3)
    calibration = [torch.randn(2, 3, *size, generator=generator) for _ in range(2)]
    # Other images than the calibration's: values past the measured ranges are clamped, as in use.
    batch = torch.randn(3, 3, *size, generator=generator).numpy()
    return model, calibration, batch


@pytest.mark.parametrize("name", FAMILIES + OTHERS)
def test_int8_engine_equals_the_integer_reference_on_every_isa(name):
    model, calibration, batch = _model_and_images(name)
    expected = None
    for isa in ISAS_HERE:
        library = engine.load_library(isa)
        plan = plan_engine(
            model, SIZE, lanes=library.shufflenet_engine_lanes(), precision="int8", calibration=calibration
        )
        if expected is None:
            expected = run_quantized(plan.quantized, batch)
        for threads in (1, 2):
            got = engine.Engine(library, plan, threads=threads)(batch)
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} on {isa}, {threads} threads")


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "fenet_x1_375_se"])
def test_int8_plan_runs_on_aarch64_under_emulation_exactly(name, tmp_path):
    try:
        command, _ = build_runner("neon")
    except EngineUnavailable as error:
        pytest.skip(f"no aarch64 build here: {error}")
    model, calibration, batch = _model_and_images(name)
    plan = plan_engine(model, SIZE, lanes=ISAS["neon"][2], precision="int8", calibration=calibration)
    plan.save(tmp_path / "model.plan")
    np.testing.assert_array_equal(
        run_saved_plan(command, tmp_path / "model.plan", batch), run_quantized(plan.quantized, batch)
    )


def test_each_operation_errs_by_a_few_grid_steps_on_its_calibration_images():
    """The first conv (image quantized, weights per channel) and the first depthwise conv against float32
    on the calibration batch: errors of a few steps of each channel's grid, not a wrong scale or zero
    point (which would be off by the whole range)."""
    model, calibration, _ = _model_and_images("mobilenet_v2_x0_5")
    program = lower(model, SIZE)
    quantized = quantize(program, calibrate(program, calibration))
    batch = calibration[0]
    exact: dict[int, np.ndarray] = {}
    run_program(program, batch, lambda target, value: exact.setdefault(len(exact), value.numpy()))
    approximate: dict[int, np.ndarray] = {}
    run_quantized(quantized, batch.numpy(), lambda index, target, value: approximate.setdefault(index, value))
    for index in (0, 1):
        op = program.operations[index]
        scale = quantized.maps[op.target.map].scale[None, :, None, None]
        steps = np.abs(approximate[index] - exact[index]) / scale
        assert steps.max() < 4 + 2 * index, f"operation {index}: {steps.max():.1f} steps"
        assert np.sqrt((steps**2).mean()) < 1.0


def test_uint8_parameters_hold_zero_exactly_and_move_with_copies_and_max_pools():
    model, calibration, _ = _model_and_images("shufflenet_v2_x0_5")
    program = lower(model, SIZE)
    quantized = quantize(program, calibrate(program, calibration))
    for params in quantized.maps:
        assert params.zero.min() >= 0 and params.zero.max() <= 255 and (params.scale > 0).all()
    image = quantized.maps[0]
    assert np.abs(dequantize(quantize_image(np.zeros((1, 3, 2, 2), np.float32), image), image)).max() == 0
    moved = [
        op for op in program.operations if isinstance(op, Copy) or (isinstance(op, Pool) and op.kind == "max")
    ]
    assert moved
    for op in moved:
        source = quantized.maps[op.source.map].take(op.source.channels)
        width = len(op.source.channels)
        target = quantized.maps[op.target.map].take(range(op.target.offset, op.target.offset + width))
        np.testing.assert_array_equal(target.scale, source.scale)
        np.testing.assert_array_equal(target.zero, source.zero)


def test_int8_refuses_a_bordered_map_whose_zero_point_is_not_zero(monkeypatch):
    """A shift reads its input through a border of 0 bytes: right only where 0 stands for 0."""
    model, calibration, _ = _model_and_images("shiftresnet20_ssl")
    quantize_program = engine.quantize_model_program

    def shifted_zero_points(program, images):
        quantized = quantize_program(program, images)
        shift = next(op for op in program.operations if isinstance(op, Shift))
        quantized.maps[shift.source.map].zero[0] = 3
        return quantized

    monkeypatch.setattr(engine, "quantize_model_program", shifted_zero_points)
    with pytest.raises(EngineUnavailable, match="never negative"):
        plan_engine(model, SIZE, lanes=16, precision="int8", calibration=calibration)


def test_int8_needs_calibration_images_and_a_known_precision():
    model = create_model("shufflenet_v2_x0_5", num_classes=10).eval()
    with pytest.raises(ValueError, match="calibration"):
        plan_engine(model, SIZE, lanes=16, precision="int8")
    with pytest.raises(ValueError, match="precision 'int4'"):
        plan_engine(model, SIZE, lanes=16, precision="int4")
