"""The one deploy lowering: every registered family lowers, and the reference interpreter of the lowered
program reproduces the model's logits."""

import pytest
import torch
from torch import nn

from conftest import lowering_ready
from shufflenet.deploy.lower import (
    Conv,
    Copy,
    LoweringError,
    Pool,
    Read,
    Shift,
    SqueezeExcite,
    lower,
    run_program,
)
from shufflenet.registry import create_model, list_models


def _check(model: nn.Module, size: tuple[int, int], seed: int = 0) -> None:
    model = lowering_ready(model, seed)
    batch = torch.randn(2, model.in_chans, *size, generator=torch.Generator().manual_seed(seed))
    program = lower(model, size)
    with torch.no_grad():
        expected = model(batch)
    got = run_program(program, batch)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-4 * max(scale, 1.0)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_lowers_and_its_program_gives_the_models_logits(name):
    _check(create_model(name, num_classes=10, small_input=True), (32, 32))


@pytest.mark.parametrize(
    "name, args",
    [
        ("shufflenet_v1_g3_x0_5", {}),
        ("shufflenet_v2_x0_5", {"layout": "torchvision"}),
        ("mobilenet_v2_x0_5", {}),
        ("fenet_x1_0", {}),
    ],
)
def test_the_standard_stems_at_an_odd_input_size(name, args):
    _check(create_model(name, num_classes=7, **args), (97, 131), seed=1)


def test_switches_the_papers_ablate_lower_too():
    _check(create_model("shufflenet_v1_g8_x0_5", num_classes=5, small_input=True, shuffle=False), (32, 32))
    _check(create_model("shufflenet_v1_g3_x0_5", num_classes=5, small_input=True, se=True), (32, 32))
    _check(create_model("shufflenet_v2_x0_5", num_classes=5, small_input=True, shuffle=False), (32, 32))


def test_shuffles_and_splits_are_addressing_not_operations():
    program = lower(create_model("shufflenet_v2_x0_5", num_classes=10, small_input=True).eval(), (32, 32))
    kinds = {type(op).__name__ for op in program.operations}
    assert kinds == {"Conv", "Copy", "GlobalAverage"}  # no shuffle, split or concatenation ops
    # A stride-1 unit: the kept half is one Copy, the branch's last conv writes beside it in the same map.
    copy = next(op for op in program.operations if isinstance(op, Copy))
    writer = next(
        op for op in program.operations if isinstance(op, Conv) and op.target.map == copy.target.map
    )
    assert copy.target.offset == 0 and writer.target.offset == len(copy.source.channels)
    # The next unit reads the joined map in shuffled order: channel k of the shuffle is joined[src[k]].
    reader = next(
        op
        for op in program.operations
        if op.source.map == copy.target.map and op is not copy and op is not writer
    )
    half = program.maps[copy.target.map].channels // 2
    assert reader.source.channels[:4] == (0, half, 1, half + 1)


def test_epilogues_and_shift_operations():
    v1 = lower(create_model("shufflenet_v1_g3_x0_5", num_classes=10, small_input=True).eval(), (32, 32))
    residual_convs = [op for op in v1.operations if isinstance(op, Conv) and op.residual is not None]
    assert residual_convs and all(op.activation == "relu" for op in residual_convs)
    shortcut_pools = [op for op in v1.operations if isinstance(op, Pool) and op.kind == "average"]
    assert shortcut_pools and all(op.target.offset == 0 for op in shortcut_pools)  # concatenated first
    depthwise = [op for op in v1.operations if isinstance(op, Conv) and op.kind == "depthwise"]
    assert any(op.source.channels != tuple(sorted(op.source.channels)) for op in depthwise)  # shuffled reads
    mobilenet_v2 = lower(create_model("mobilenet_v2_x0_5", num_classes=10).eval(), (64, 64))
    assert {op.activation for op in mobilenet_v2.operations if isinstance(op, Conv)} == {"none", "relu6"}
    shift = lower(create_model("shiftresnet20_ssl", num_classes=10).eval(), (32, 32))
    shifts = [op for op in shift.operations if isinstance(op, Shift)]
    assert len(shifts) == 9 and all(len(op.dy) == len(op.source.channels) for op in shifts)
    se = lower(create_model("fenet_x1_375_se", num_classes=10, small_input=True).eval(), (32, 32))
    assert any(isinstance(op, SqueezeExcite) for op in se.operations)


def test_what_the_lowering_refuses():
    model = create_model("shufflenet_v1_g3_x0_5", num_classes=10)
    with pytest.raises(ValueError, match="eval"):
        lower(model.train(), (64, 64))
    with pytest.raises(LoweringError, match="this library's models"):
        lower(nn.Sequential(nn.Conv2d(3, 4, 1)).eval(), (8, 8))
    model.eval().stage2[0].shuffle = nn.GELU()
    with pytest.raises(LoweringError, match="GELU"):
        lower(model, (64, 64))
    assert Read(0, (1, 2)) == Read(0, (1, 2))  # reads compare by value (backends key on them)
