"""The deploy graph's eager fast path (shufflenet.deploy.eager): same outputs as the plain modules, the
plain modules' graphs when traced or exported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shufflenet import create_model
from shufflenet.deploy import optimize
from shufflenet.deploy.eager import PointwiseConv2d, StridedMaxPool2d, nhwc_rows, use_eager_kernels
from shufflenet.deploy.graph import ProgramSegment

CHANNELS_LAST = torch.channels_last


def _pointwise(in_channels: int, out_channels: int, bias: bool = True) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(in_channels, out_channels, 1, bias=bias).eval()
    fast = use_eager_kernels(nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=bias)))[0]
    fast.load_state_dict(plain.state_dict())
    return plain, fast.eval()


def test_nhwc_rows_views_channels_last_and_channel_slices_only() -> None:
    x = torch.randn(2, 6, 3, 4).contiguous(memory_format=CHANNELS_LAST)
    rows = nhwc_rows(x)
    assert rows.shape == (24, 6) and rows.data_ptr() == x.data_ptr()
    assert torch.equal(rows[5], x[0, :, 1, 1])
    part = nhwc_rows(x[:, 2:5])
    assert part.stride() == (6, 1) and torch.equal(part, rows[:, 2:5])
    assert nhwc_rows(x.contiguous()) is None  # NCHW: channels are not adjacent
    assert nhwc_rows(x[:, :, :, :3]) is None  # a spatial crop: pixel rows are not evenly spaced


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_matches_conv2d_on_every_layout(bias: bool) -> None:
    plain, fast = _pointwise(10, 7, bias)
    assert type(fast) is PointwiseConv2d
    x = torch.randn(2, 16, 5, 6).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        for batch in (x[:, 3:13], x[:, :10].contiguous(), x[:, 6:16].contiguous(memory_format=CHANNELS_LAST)):
            out = fast(batch)
            torch.testing.assert_close(out, plain(batch), rtol=1e-5, atol=1e-5)
            assert out.shape == (2, 7, 5, 6)


def test_pointwise_conv_keeps_autograd_and_the_conv_graph_when_traced() -> None:
    plain, fast = _pointwise(4, 3)
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    fast(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    plain(x).sum().backward()
    torch.testing.assert_close(expected, x.grad)
    traced = torch.jit.trace(fast, x.detach())
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::addmm" not in kinds


def test_only_plain_1x1_convs_and_3x3_stride2_pools_are_swapped() -> None:
    net = nn.Sequential(
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 1, groups=2),
        nn.Conv2d(4, 4, 1, stride=2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.MaxPool2d(3, 2, 1),
        nn.MaxPool2d(2, 2),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    )
    kinds = [type(module) for module in use_eager_kernels(net)]
    assert kinds == [
        PointwiseConv2d,
        nn.Conv2d,
        nn.Conv2d,
        nn.Conv2d,
        StridedMaxPool2d,
        nn.MaxPool2d,
        nn.MaxPool2d,
    ]


@pytest.mark.parametrize("size", [(8, 12), (2, 2), (7, 9), (9, 8)])
def test_strided_max_pool_matches_max_pool2d(size: tuple[int, int]) -> None:
    pool = use_eager_kernels(nn.Sequential(nn.MaxPool2d(3, 2, 1)))[0]
    # Negative values: the border must behave like -inf padding, not zeros.
    x = (torch.randn(2, 5, *size) - 3).contiguous(memory_format=CHANNELS_LAST)
    expected = nn.functional.max_pool2d(x, 3, 2, 1)
    assert torch.equal(pool(x), expected)
    assert torch.equal(pool(x.contiguous()), expected)


def _v2_with_statistics(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x0_5", num_classes=10, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so the folds have something to fold
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("layout", ["paper", "torchvision"])
def test_deploy_graph_eager_path_matches_the_model(layout: str) -> None:
    model = _v2_with_statistics(layout=layout)
    deployed = optimize(model, channel_multiple=1).to(memory_format=CHANNELS_LAST)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        for batch in (x.contiguous(memory_format=CHANNELS_LAST), x):
            torch.testing.assert_close(deployed(batch), expected, rtol=1e-4, atol=1e-4)


def test_deploy_stage_eager_path_equals_its_export_path() -> None:
    deployed = optimize(_v2_with_statistics(), channel_multiple=4)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        features = deployed.maxpool(deployed.conv1(x))
        for stage in (deployed.stage2, deployed.stage3):
            assert isinstance(stage, ProgramSegment)
            fast = stage(features)
            rows = torch.jit.trace(stage, features)(features)  # traced: the cat-of-convs graph
            torch.testing.assert_close(fast, rows, rtol=1e-5, atol=1e-5)
            assert fast.is_contiguous(memory_format=CHANNELS_LAST)
            features = fast


def test_deploy_graph_eager_path_follows_dtype_changes() -> None:
    model = _v2_with_statistics()
    deployed = optimize(model, channel_multiple=1)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        deployed(x)  # builds the cached row steps in float32
        deployed = deployed.to(torch.float64)
        out = deployed(x.double())
        assert out.dtype == torch.float64
        # the fold ran in float32; stale float32 steps would fail on the float64 input outright
        torch.testing.assert_close(out, model.double()(x.double()), rtol=1e-5, atol=1e-6)


def test_eager_deploy_runtime_runs_the_deploy_graph_channels_last(tmp_path) -> None:
    from shufflenet.deploy.runtimes import build_runner

    model = _v2_with_statistics()
    example = torch.randn(1, 3, 64, 64)
    run = build_runner("eager_deploy", model, example, threads=1, workdir=tmp_path)
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(batch).numpy()
    torch.testing.assert_close(
        torch.from_numpy(run(batch.numpy())), torch.from_numpy(expected), rtol=1e-4, atol=1e-4
    )


def test_deploy_graph_built_in_inference_mode_runs_eagerly() -> None:
    model = _v2_with_statistics()
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=CHANNELS_LAST)
    with torch.inference_mode():  # parameters created here are inference tensors (no version counter)
        deployed = optimize(model, channel_multiple=1)
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)
