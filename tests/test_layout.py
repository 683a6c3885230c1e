"""The channel layout of a lowered program (shufflenet.deploy.layout) and the deploy graph built from it:
channel orders come from the program alone, and the laid-out program computes what the model does."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import lowering_ready
from shufflenet.deploy import optimize
from shufflenet.deploy.layout import (
    fold_permuted_reads,
    is_grouped,
    is_run,
    lay_out,
    out_channels,
    pad_channels,
)
from shufflenet.deploy.lower import Conv, Program, Read, lower, run_program
from shufflenet.registry import create_model, list_models


def _scrambled(program: Program, seed: int) -> Program:
    """The same network with every ungrouped conv emitting its rows in a random order, which its readers
    follow: reads become random permutations of the maps' channels."""
    rng = random.Random(seed)
    operations = list(program.operations)
    relabel: dict[int, dict[int, int]] = {}  # map -> old channel -> new channel
    for index, operation in enumerate(operations):
        if not isinstance(operation, Conv) or operation.groups != 1 or index == len(operations) - 1:
            continue
        rows = list(range(out_channels(operation)))
        rng.shuffle(rows)  # new row r is old row rows[r]
        residual = operation.residual
        if residual is not None:
            residual = Read(residual.map, tuple(residual.channels[j] for j in rows))
        operations[index] = replace(
            operation, weight=operation.weight[rows], bias=operation.bias[rows], residual=residual
        )
        offset = operation.target.offset
        moved = relabel.setdefault(operation.target.map, {})
        for new, old in enumerate(rows):
            moved[offset + old] = offset + new

    def follow(read: Read | None) -> Read | None:
        if read is None or read.map not in relabel:
            return read
        return Read(read.map, tuple(relabel[read.map].get(c, c) for c in read.channels))

    result = []
    for operation in operations:
        changes = {"source": follow(operation.source)}
        if getattr(operation, "residual", None) is not None:
            changes["residual"] = follow(operation.residual)
        result.append(replace(operation, **changes))
    return Program(list(program.maps), result, follow(program.output), list(program.pieces))


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("shufflenet_v2_x0_5", {}),
        ("shufflenet_v1_g3_x0_5", {}),
        ("mobilenet_v2_x0_5", {}),
        ("shiftresnet20_ssl", {}),
        ("fenet_x1_0", {}),
    ],
)
def test_layout_of_a_program_with_randomly_permuted_reads_still_computes_it(name, args):
    model = lowering_ready(create_model(name, num_classes=10, small_input=True, **args))
    program = _scrambled(lower(model, (32, 32)), seed=1)
    batch = torch.randn(2, model.in_chans, 32, 32)
    expected = run_program(program, batch)
    with torch.no_grad():
        assert (expected - model(batch)).abs().max() < 1e-4  # the scrambled program is the same network
    assert any(not is_run(op.source.channels) for op in program.operations if isinstance(op, Conv))
    laid = lay_out(program)
    assert (run_program(laid, batch) - expected).abs().max() < 1e-4
    # The layout undoes the scrambling: every conv that is not grouped reads contiguous channels.
    for operation in laid.operations:
        if isinstance(operation, Conv) and not is_grouped(operation):
            assert is_run(operation.source.channels), operation


def test_optimize_takes_its_channel_orders_from_the_program():
    model = lowering_ready(create_model("shufflenet_v2_x1_0", num_classes=10))
    deployed = optimize(model, channel_multiple=4)
    laid = lay_out(pad_channels(lower(model, (224, 224)), 4)[0])
    assert [op.source for op in deployed.program.operations] == [op.source for op in laid.operations]
    steps = [step for segment in deployed.segments() for step in segment.steps]
    assert [step.operation.source for step in steps] == [op.source for op in laid.operations]


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "shufflenet_v2_x2_0"])
def test_padding_keeps_outputs_and_zero_channels_stay_zero(name):
    model = lowering_ready(create_model(name, num_classes=10))
    program = lower(model, (64, 64))
    padded, zeros = pad_channels(program, 4)
    batch = torch.randn(2, 3, 64, 64)
    assert (run_program(padded, batch) - run_program(program, batch)).abs().max() < 1e-4
    assert zeros and sum(feature.channels for feature in padded.maps) > sum(f.channels for f in program.maps)
    for operation in padded.operations:
        if isinstance(operation, Conv) and operation.source.map != 0:
            quantum = 8 if operation.kind == "depthwise" else 4
            assert len(operation.source.channels) % quantum == 0
    # Zero channels are written as zero rows: no weight reads anything into them.
    for operation in padded.operations:
        if isinstance(operation, Conv) and operation.target.map in zeros and operation.groups == 1:
            rows = [c - operation.target.offset for c in zeros[operation.target.map]]
            rows = [r for r in rows if 0 <= r < operation.weight.shape[0]]
            assert not np.any(operation.weight[rows]) and not np.any(operation.bias[rows])


def test_folding_a_permuted_grouped_read_gives_a_dense_conv():
    model = lowering_ready(create_model("shufflenet_v1_g3_x0_5", num_classes=10))
    laid = lay_out(lower(model, (64, 64)))
    permuted = [op for op in laid.operations if is_grouped(op) and not is_run(op.source.channels)]
    assert len(permuted) == 15  # every second 1x1 but the first unit's (no shuffle before it)
    folded = fold_permuted_reads(laid)
    assert not any(is_grouped(op) and not is_run(op.source.channels) for op in folded.operations)
    batch = torch.randn(2, 3, 64, 64)
    assert (run_program(folded, batch) - run_program(laid, batch)).abs().max() < 1e-5


@pytest.mark.parametrize("name", list_models())
def test_every_registered_family_deploys_at_any_input_size(name):
    model = lowering_ready(create_model(name, num_classes=10, small_input=True))
    deployed = optimize(model)  # lowered at one size, run at others
    for size in ((32, 32), (40, 48)):
        batch = torch.randn(2, model.in_chans, *size)
        with torch.no_grad():
            expected = model(batch)
            scale = max(expected.abs().max().item(), 1.0)
            assert (deployed(batch) - expected).abs().max().item() <= 1e-4 * scale
