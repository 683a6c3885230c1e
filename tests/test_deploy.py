import copy
import importlib
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from shufflenet import create_model, list_models
from shufflenet._testing import trained_looking
from shufflenet.blocks import ShuffleV2Unit
from shufflenet.deploy import fold_conv_bn, optimize
from shufflenet.deploy.export import FP32_TOLERANCE, ExportError, export_model
from shufflenet.deploy.lower import Conv, Copy
from shufflenet.ops import SegmentShift, SparseShift

graph_module = importlib.import_module("shufflenet.deploy.graph")


def _trained_looking(model: nn.Module) -> nn.Module:
    """Random BN statistics and a classifier with O(1) logits, so output differences are meaningful."""
    randomize_batchnorm(model)
    with torch.no_grad():
        model.get_classifier().weight.normal_(0, 0.5)
    return model.eval()


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return (a(x) - b(x)).abs().max().item()


def _steps(deployed: nn.Module) -> list:
    """Every step of the deploy graph (one per operation of its laid-out program), in order."""
    return [step for segment in deployed.segments() for step in segment.steps]


def _split_reads(deployed: nn.Module) -> list[tuple[tuple[int, int], list[tuple[int, int]], int]]:
    """For each ShuffleNet V2 stride-1 unit (a map read in parts by a copy, the kept half, and by a conv,
    the transformed half): the conv's slice, the copy's runs, and the map's width."""
    steps = _steps(deployed)
    found = []
    for copy_step in steps:
        if not isinstance(copy_step.operation, Copy):
            continue
        plan = copy_step.source
        runs = list(plan.runs) if plan.kind == "runs" else [(plan.start, plan.stop)]
        (conv_plan,) = [
            step.source
            for step in steps
            if isinstance(step.operation, Conv)
            and step.source.map == plan.map
            and step.source.kind != "whole"
        ]
        width = deployed.program.maps[plan.map].channels
        found.append(((conv_plan.start, conv_plan.stop) if conv_plan.kind == "slice" else None, runs, width))
    return found


def test_fold_conv_bn_equals_conv_then_bn():
    conv = nn.Conv2d(6, 8, 3, padding=1, groups=2, bias=True)
    bn = randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(8)))[0].eval()
    x = torch.randn(2, 6, 9, 9)
    fused = fold_conv_bn(conv, bn)
    assert torch.allclose(fused(x), bn(conv(x)), atol=1e-5)


CASES = [
    ("shufflenet_v2_x0_5", {}),
    ("shufflenet_v2_x1_0", {"layout": "torchvision"}),
    ("shufflenet_v2_x0_5", {"shuffle": False}),
    ("shufflenet_v1_g3_x0_5", {}),
    ("shufflenet_v1_g8_x0_25", {}),
    ("shufflenet_v1_g3_x0_5", {"shuffle": False}),
    ("shufflenet_v1_g3_x0_75_shallow", {"se": True}),
    ("mobilenet_v2_x1_0", {}),
    ("mobilenet_v1_x0_25", {}),
]


@pytest.mark.parametrize("form", ["fold", "explicit", "gather"])
@pytest.mark.parametrize(("name", "args"), CASES)
def test_optimize_keeps_outputs_and_removes_batchnorm(name, args, form):
    model = _trained_looking(create_model(name, num_classes=10, **args))
    deployed = optimize(model, v1_shuffle=form)
    x = torch.randn(2, 3, 64, 64)
    assert _max_diff(model, deployed, x) < 1e-4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original must be untouched"
    assert not any(p.requires_grad for p in deployed.parameters())


def test_v2_deploy_runs_no_shuffle_and_reads_contiguous_slices(monkeypatch):
    model = _trained_looking(create_model("shufflenet_v2_x1_0", num_classes=10))
    deployed = optimize(model)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the deploy graph must not shuffle")

    monkeypatch.setattr("shufflenet.blocks.shufflenet_v2.channel_shuffle", forbidden)
    monkeypatch.setattr(graph_module, "channel_shuffle", forbidden)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = deployed(x)
    steps = _steps(deployed)
    # No read shuffles or gathers: every read is the whole map, a slice or (a copy's) slices.
    assert {step.source.kind for step in steps} <= {"whole", "slice", "runs"}
    writers = {}
    for step in steps:
        writers.setdefault(step.target, []).append(step)
    assert sum(len(parts) > 1 for parts in writers.values()) == 16  # one concatenation per unit
    split = _split_reads(deployed)
    assert len(split) == 13 and all(transformed is not None for transformed, _, _ in split)
    # Each transformed half is one (start, stop) slice, exactly what its conv reads.
    for step in steps:
        if isinstance(step.operation, Conv) and step.source.kind == "slice":
            assert step.source.stop - step.source.start == step.operation.weight.shape[1]
    monkeypatch.undo()
    with torch.inference_mode():
        assert (model(x) - expected).abs().max() < 1e-4


def _trunk_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Every conv after the stem (whose input is the image)."""
    modules = model.named_modules()
    return [m for name, m in modules if isinstance(m, nn.Conv2d) and not name.startswith("conv1")]


# Half widths 58/116 (x1_0) and 122/244 (x2_0) are not multiples of 4 or 8; x0_5's are.
PADDED_CASES = [
    ("shufflenet_v2_x1_0", {}),
    ("shufflenet_v2_x1_0", {"layout": "torchvision"}),
    ("shufflenet_v2_x1_0", {"shuffle": False}),
    ("shufflenet_v2_x2_0", {}),
    ("shufflenet_v2_x0_5", {}),
]


@pytest.mark.parametrize(("name", "args"), PADDED_CASES)
def test_v2_channel_padding_aligns_every_conv_and_keeps_outputs(name, args):
    model = _trained_looking(create_model(name, num_classes=10, **args))
    deployed = optimize(model, channel_multiple=4)
    assert _max_diff(model, deployed, torch.randn(2, 3, 64, 64)) < 1e-4
    # ONNX Runtime's NCHWc kernels need input widths that are multiples of 4 (depthwise: padded to 8).
    for conv in _trunk_convs(deployed):
        assert conv.in_channels % (8 if conv.groups > 1 else 4) == 0, conv
    originals = [m for m in model.modules() if isinstance(m, ShuffleV2Unit) and m.stride == 1]
    split = _split_reads(deployed)
    for (transformed, kept_runs, width), original in zip(split, originals, strict=True):
        # One transformed slice, disjoint from the kept ones and with them covering the input (ONNX
        # Runtime fuses them into one Split); the kept ones hold just the real half: no zero channels.
        pieces = sorted([*kept_runs, transformed])
        assert pieces[0][0] == 0 and pieces[-1][1] == width
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
        kept = sum(b - a for a, b in kept_runs)
        assert kept == original.branch2[0].in_channels
    unpadded = optimize(model, channel_multiple=1)
    shapes = [conv.weight.shape for conv in _trunk_convs(unpadded)]
    # 1: today's graph, unpadded (the classifier is a 1x1 conv on the pooled map)
    expected = [conv.weight.shape for conv in _trunk_convs(model)]
    assert shapes == [*expected, (*model.fc.weight.shape, 1, 1)]


def _second_pointwise(deployed: nn.Module) -> list:
    """The steps of each V1 unit's second 1x1 conv: the convs that read a depthwise conv's output."""
    steps = _steps(deployed)
    depthwise_maps = {
        step.target
        for step in steps
        if isinstance(step.operation, Conv) and step.operation.kind == "depthwise"
    }
    return [s for s in steps if isinstance(s.operation, Conv) and s.source.map in depthwise_maps]


def test_v1_fold_has_no_shuffle_and_explicit_shuffles_after_the_stride():
    model = _trained_looking(create_model("shufflenet_v1_g3_x0_5", num_classes=10))
    folded = optimize(model, v1_shuffle="fold")
    assert not any(step.source.kind in ("shuffle", "gather") for step in _steps(folded))
    second = _second_pointwise(folded)
    assert len(second) == 16
    assert all(step.operation.groups == 1 for step in second[1:])  # dense: the shuffle is in its weights
    explicit = optimize(model, v1_shuffle="explicit")
    second = _second_pointwise(explicit)
    # the first unit's first 1x1 is ungrouped: nothing to shuffle
    assert second[0].source.kind == "whole" and second[0].operation.groups == 3
    # The others shuffle the depthwise conv's output, after its stride.
    assert all(s.source.kind == "shuffle" and s.source.groups == 3 for s in second[1:])
    assert all(s.operation.groups == 3 for s in second[1:])
    gather = optimize(model, v1_shuffle="gather")
    second = _second_pointwise(gather)
    assert all(s.source.kind == "gather" and s.operation.groups == 3 for s in second[1:])


def test_v1_auto_picks_the_faster_form_per_stage():
    model = _trained_looking(create_model("shufflenet_v1_g3_x0_5", num_classes=10))
    calls = []

    def timer(module, example):
        form = module.form
        calls.append((form, tuple(example.shape)))
        return {"fold": 2.0, "explicit": 3.0, "gather": 1.0}[form]  # pretend the gather is fastest

    deployed = optimize(model, v1_shuffle="auto", example_input=torch.randn(1, 3, 64, 64), timer=timer)
    assert deployed.v1_shuffle_choices == {"stage2": "gather", "stage3": "gather", "stage4": "gather"}
    assert [shape[1] for _, shape in calls[::3]] == [12, 120, 240]  # each stage timed on its real input
    assert {form for form, _ in calls} == {"fold", "explicit", "gather"}
    with pytest.raises(ValueError, match="example_input"):
        optimize(model, v1_shuffle="auto")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino", "pt2"])
def test_export_writes_and_verifies_each_format(tmp_path, fmt):
    model = _trained_looking(create_model("shufflenet_v2_x0_5", num_classes=10, in_chans=1, small_input=True))
    real = torch.rand(3, 1, 28, 28)
    report = export_model(model, tmp_path / "net", fmt, input_size=(28, 28), real_inputs=real)
    assert report.path.exists() and report.passed
    assert report.max_abs_diff_random < 1e-4 and report.max_abs_diff_real < 1e-4
    assert report.latency_ms > 0 and report.eager_latency_ms > 0
    if fmt == "openvino":
        assert report.path.with_suffix(".bin").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial files left


class _NotExportable(nn.Module):
    def forward(self, x):
        return torch.fft.rfft2(x).abs()  # no ONNX counterpart in the TorchScript exporter


def test_export_failure_says_why_and_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="could not be exported to onnx"):
        export_model(_NotExportable(), tmp_path / "bad.onnx", "onnx", input_size=(8, 8), optimize_graph=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_int8_export_reports_accuracy(tmp_path):
    model = _trained_looking(create_model("shufflenet_v2_x0_5", num_classes=10, in_chans=1, small_input=True))
    images = torch.rand(20, 1, 28, 28)
    with torch.inference_mode():
        labels = model(images).argmax(1)  # the fp32 model is right on every sample by construction
    data = torch.utils.data.TensorDataset(images, labels)
    calibration = [images[i : i + 1].numpy() for i in range(8)]
    report = export_model(
        model,
        tmp_path / "q",
        "onnx",
        input_size=(28, 28),
        precision="int8",
        calibration=calibration,
        accuracy_data=data,
    )
    assert report.path.name == "q.onnx" and report.path.exists()
    assert report.accuracy["eager top-1"] == 100.0
    assert 0.0 <= report.accuracy["exported top-1"] <= 100.0
    assert report.tolerance is None
    with pytest.raises(ValueError, match="calibration"):
        export_model(model, tmp_path / "q2", "onnx", precision="int8")


def _float32_error(model: torch.nn.Module, input_size: tuple[int, int]) -> float:
    """How far the model's own float32 output lies from its float64 output on a random batch."""
    batch = torch.randn(4, model.in_chans, *input_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(batch.double())
        return (model(batch).double() - reference).abs().max().item()


@pytest.mark.slow
def test_every_registered_model_exports_to_onnx_verified(tmp_path):
    failures = []
    for name in list_models():
        model = trained_looking(create_model(name, num_classes=10), (64, 64))
        # A deep plain net (the VGG-like Table 4 peer) is itself only this exact in float32: an export may
        # differ by a few times that, and no less than the usual tolerance asks.
        tolerance = max(FP32_TOLERANCE, 4 * _float32_error(model, (64, 64)))
        report = export_model(
            model, tmp_path / name, "onnx", input_size=(64, 64), latency_repeats=1, tolerance=tolerance
        )
        if not report.passed:
            failures.append((name, report.max_abs_diff_random))
        Path(report.path).unlink()
    assert failures == []


def test_trained_looking_measures_bn_statistics_on_the_images_it_will_run():
    """Inputs whose statistics BN never saw push logits far from O(1), where an absolute 1e-4 tolerance asks
    for more than float32 gives (Fashion-MNIST at 224 x 224: ~250); measured with them, logits stay small."""
    shifted = 1.5 + 0.5 * torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    on_noise = trained_looking(create_model("shufflenet_v2_x0_5", num_classes=10), (64, 64))
    torch.manual_seed(0)
    on_both = trained_looking(create_model("shufflenet_v2_x0_5", num_classes=10), (64, 64), images=shifted)
    with torch.no_grad():
        wild, tame = on_noise(shifted).abs().max().item(), on_both(shifted).abs().max().item()
    assert tame < 3.0 and wild > 3 * tame


@pytest.mark.slow
def test_export_that_disagrees_is_refused_and_keeps_the_old_file(tmp_path, monkeypatch):
    model = _trained_looking(create_model("shufflenet_v2_x0_5", num_classes=10, in_chans=1, small_input=True))
    target = tmp_path / "net.onnx"
    target.write_bytes(b"previous good export")
    export_module = importlib.import_module("shufflenet.deploy.export")
    real_runner = export_module._load_runner

    def off_by_one(*args):
        run = real_runner(*args)
        return lambda batch: run(batch) + 1.0

    monkeypatch.setattr(export_module, "_load_runner", off_by_one)
    with pytest.raises(ExportError, match=r"differs from the eager model by 1\.00e"):
        export_model(model, target, "onnx", input_size=(28, 28))
    assert target.read_bytes() == b"previous good export"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shiftresnet20_ssl", "fenet_x1_0"])
def test_shift_nets_deploy_with_regrouped_channels_and_export(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, small_input=True)
    with torch.no_grad():  # learned-looking displacements: many distinct, some channels unshifted
        for layer in model.modules():
            if isinstance(layer, SparseShift):
                layer.alpha.copy_(torch.randn_like(layer.alpha) * 1.2)
                layer.beta.copy_(torch.randn_like(layer.beta) * 1.2)
    trained_looking(model, (28, 28))
    deployed = optimize(model)
    segments = [m for m in deployed.modules() if isinstance(m, SegmentShift)]
    assert len(segments) == sum(isinstance(m, SparseShift) for m in model.modules())
    # The grouping permutation lives in the neighbouring convs: no gather runs, runs are moved in place.
    assert all(m.order is None and m.in_place for m in segments)
    assert not any(isinstance(m, (SparseShift, nn.BatchNorm2d)) for m in deployed.modules())
    x = torch.randn(4, 1, 28, 28)
    assert _max_diff(model, deployed, x) <= 1e-4
    report = export_model(model, tmp_path / name, "onnx", input_size=(28, 28), latency_repeats=1)
    assert report.passed and report.max_abs_diff_random <= 1e-4
    # The plain model exports too: its shift layers trace as their inference form.
    plain = export_model(
        model,
        tmp_path / f"{name}-plain",
        "onnx",
        input_size=(28, 28),
        optimize_graph=False,
        latency_repeats=1,
    )
    assert plain.passed and plain.max_abs_diff_random <= 1e-4
