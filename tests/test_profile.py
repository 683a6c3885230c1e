import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from shufflenet.ops import ChannelShuffle
from shufflenet.profile import profile


def flop_counter_madds(model: nn.Module, size=(224, 224), in_chans=3) -> float:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, in_chans, *size))
    return counter.get_total_flops() / 2 / 1e6


def test_pointwise_conv_mac_is_section_2_formula():
    h, w, c1, c2 = 8, 6, 16, 32
    result = profile(nn.Conv2d(c1, c2, 1, bias=False), (h, w), in_chans=c1)
    (layer,) = result.layers
    assert layer.mac == h * w * (c1 + c2) + c1 * c2
    assert layer.mac_bytes == 4 * layer.mac
    assert layer.mflops == pytest.approx(h * w * c1 * c2 / 1e6)
    assert layer.params == c1 * c2


def test_grouped_and_depthwise_conv_madds():
    grouped = profile(nn.Conv2d(12, 24, 1, groups=3, bias=False), (5, 5), in_chans=12)
    assert grouped.mflops == pytest.approx(25 * 24 * 4 / 1e6)
    depthwise = profile(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (5, 5), in_chans=8)
    assert depthwise.mflops == pytest.approx(25 * 8 * 9 / 1e6)


def test_bn_activation_pool_shuffle_count_zero_flops_but_memory():
    model = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), ChannelShuffle(3), nn.AvgPool2d(2))
    result = profile(model, (4, 4), in_chans=6)
    assert result.mflops == 0
    kinds = {layer.kind: layer for layer in result.layers}
    assert set(kinds) == {"BatchNorm2d", "ReLU", "ChannelShuffle", "AvgPool2d"}
    n = 6 * 4 * 4
    assert kinds["ReLU"].mac == 2 * n
    assert kinds["ChannelShuffle"].mac == 2 * n  # one copy: read and write, the views are free
    assert kinds["BatchNorm2d"].mac == 2 * n + 4 * 6  # + weight, bias, running mean and var
    assert kinds["BatchNorm2d"].params == 12


def test_linear_counts_multiply_adds_not_bias():
    result = profile(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (2, 2), in_chans=3)
    assert result.mflops == pytest.approx(12 * 5 / 1e6)


@pytest.mark.parametrize(
    "factory",
    [torchvision.models.shufflenet_v2_x1_0, torchvision.models.mobilenet_v2, torchvision.models.resnet18],
)
def test_totals_equal_flop_counter_on_torchvision_nets(factory):
    model = factory()
    result = profile(model, (224, 224))
    assert result.mflops == pytest.approx(flop_counter_madds(model), rel=1e-9)
    assert result.params == sum(p.numel() for p in model.parameters())
    assert sum(layer.params for layer in result.layers) == result.params


def test_profile_restores_training_mode_and_reports_formats():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    result = profile(model, (8, 8), name="tiny")
    assert model.training
    assert '"model": "tiny"' in result.to_json()
    assert "layers" in result.to_json(per_layer=True)
    assert result.to_csv().splitlines()[0] == "model,input_size,mflops,params,mac,mac_mbytes"
    assert len(result.to_csv(per_layer=True).splitlines()) == 1 + len(result.layers)
