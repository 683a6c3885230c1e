import pytest
import torch
from torch import nn

from shufflenet import create_model, list_models, model_card, profile
from shufflenet.blocks import CSCUnit, FEBlock, InvertedBottleneck, PoolBottleneck, fe_block_split
from shufflenet.blocks.common import SqueezeExcite
from shufflenet.deploy import optimize
from shufflenet.models import FENet, ShiftResNet
from shufflenet.ops import GroupedShift, SegmentShift, SparseShift, shift_layers, shift_sparsity
from shufflenet.train.config import load_config

# Reference parameter counts of ShiftResNet as the ShiftNet release builds it (Wu et al. 2018's CSC units,
# expansion times each unit's OUTPUT width: expand_from="out"), CIFAR-10 head. They are the grouped-shift /
# 1x1-only networks: the SSL variant adds its displacements (alpha, beta), 2 parameters per hidden channel.
SHIFTRESNET_PARAMS = {
    (20, 1): 34_906,
    (20, 3): 95_642,
    (20, 6): 186_746,
    (20, 9): 277_850,
    (56, 1): 102_106,
    (56, 3): 294_554,
    (56, 6): 583_226,
    (56, 9): 871_898,
}
# ShiftResNet as Chen et al. 2019 build it (expand_from="in", every registered model), CIFAR-10 head, 32x32:
# grouped-shift / 1x1-only params, SSL params, multiply-adds (M); against Table 1's params / FLOPs, where
# FLOPs are 2 x multiply-adds: 0.16 M / 53 M (ShiftResNet-20) and 0.55 M / 166 M (-56).
SHIFTRESNET_CHEN = {20: (163_130, 166_586, 27.444), 56: (559_610, 571_130, 84.067)}
SHIFTRESNET_TABLE_1 = {20: (0.16, 53.0), 56: (0.55, 166.0)}
# Chen et al. 2019, Table 2: the channels of ShiftResNet-20's nine shift layers, 6x each unit's input width.
SHIFTRESNET20_TABLE_2 = [96, 96, 96, 96, 192, 192, 192, 384, 384]
# FE-Net at its default reading of Table 4 (models/fenet.py docstring): MAdds (M) and params (M) at
# 224x224, 1000 classes. Paper (Table 5): 301 M / 3.7 M and 563 M / 5.9 M.
FENET_COMPLEXITY = {"fenet_x1_0": (299.7, 3.535), "fenet_x1_375": (563.1, 5.956)}
# FE-Net with SE (Chen et al. 2019, Fig. 7: 566 MFLOPs at 1.375x), on the expanded channels of every IB-SSL.
FENET_SE_COMPLEXITY = (566.99, 9_876_706)
SHIFT_NAMES = list_models("shiftresnet*")
FENET_NAMES = list_models("fenet*")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("depth", "expansion"), sorted(SHIFTRESNET_PARAMS))
def test_shiftresnet_params_are_exact(depth, expansion):
    expected = SHIFTRESNET_PARAMS[(depth, expansion)]
    for shift in ("grouped", "none"):
        model = ShiftResNet(depth=depth, expansion=expansion, shift=shift, expand_from="out")
        assert n_params(model) == expected
    ssl = ShiftResNet(depth=depth, expansion=expansion, shift="ssl", expand_from="out")
    hidden = sum(unit.hidden for unit in ssl.modules() if isinstance(unit, CSCUnit))
    assert n_params(ssl) == expected + 2 * hidden


def test_shiftresnet20_shift_layers_are_table_2():
    model = create_model("shiftresnet20_ssl")
    assert [row.channels for row in shift_sparsity(model)] == SHIFTRESNET20_TABLE_2
    assert sum(SHIFTRESNET20_TABLE_2) == 1728
    grouped = create_model("shiftresnet20_grouped")
    assert [layer.channels for _, layer in shift_layers(grouped)] == SHIFTRESNET20_TABLE_2
    # The ShiftNet release's layout widens the first unit of stages 2 and 3 to 6x its output (192, 384).
    released = [layer.channels for _, layer in shift_layers(ShiftResNet(expand_from="out"))]
    assert released == [96, 96, 96, 192, 192, 192, 384, 384, 384]


@pytest.mark.parametrize("depth", sorted(SHIFTRESNET_CHEN))
def test_shiftresnet_complexity_is_table_1(depth):
    plain, ssl, madds = SHIFTRESNET_CHEN[depth]
    for tag in ("grouped", "1x1"):
        result = profile(create_model(f"shiftresnet{depth}_{tag}", num_classes=10), (32, 32))
        assert result.params == plain and result.mflops == pytest.approx(madds, abs=1e-3)
    shifted = sum(row.channels for row in shift_sparsity(create_model(f"shiftresnet{depth}_ssl")))
    assert ssl == plain + 2 * shifted  # each shifted channel's (alpha, beta)
    result = profile(create_model(f"shiftresnet{depth}_ssl", num_classes=10), (32, 32))
    assert result.params == ssl and result.mflops == pytest.approx(madds, abs=1e-3)
    paper_params_m, paper_flops_m = SHIFTRESNET_TABLE_1[depth]
    assert plain / 1e6 == pytest.approx(paper_params_m, abs=0.01)
    assert 2 * madds == pytest.approx(paper_flops_m, rel=0.04)  # 54.9 M against 53 M, 168.1 M against 166 M
    card = model_card(f"shiftresnet{depth}_grouped")
    assert (card.paper_params_m, 2 * card.paper_mflops) == (paper_params_m, paper_flops_m)


def test_shiftresnet_layout():
    model = ShiftResNet(depth=20, expansion=6)
    assert [len(model.get_submodule(f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert [info.num_chs for info in model.feature_info] == [16, 32, 64]
    assert [info.reduction for info in model.feature_info] == [1, 2, 4]
    first = model.layer2[0]
    # The stride sits on the second 1x1 conv (after the shift); the shortcut projects with it.
    assert first.expand[0].stride == (1, 1) and first.reduce[0].stride == (2, 2)
    assert first.shift.channels == 6 * 16 and isinstance(first.shortcut, nn.Sequential)
    assert ShiftResNet(expand_from="out").layer2[0].shift.channels == 6 * 32
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    assert isinstance(ShiftResNet(shift="grouped").layer1[0].shift, GroupedShift)
    assert not any(isinstance(m, (SparseShift, GroupedShift)) for m in ShiftResNet(shift="none").modules())
    assert len(ShiftResNet(depth=56).layer3) == 9
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ShiftResNet(depth=21)
    with pytest.raises(ValueError, match="shift must be one of"):
        ShiftResNet(shift="active")
    with pytest.raises(ValueError, match=r"expand_from must be 'in' .* or 'out' .*, got 'input'"):
        ShiftResNet(expand_from="input")
    with pytest.raises(ValueError, match="expand_from must be 'in'"):
        CSCUnit(16, 32, stride=2, expand_from="output")


@pytest.mark.parametrize("name", SHIFT_NAMES + FENET_NAMES)
def test_forward_shapes_cifar_and_mnist_sizes(name):
    small = {} if name.startswith("shiftresnet") else {"small_input": True}
    model = create_model(name, num_classes=10, **small).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    gray = create_model(name, num_classes=10, in_chans=1, **small).eval()
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_shiftresnet_accepts_and_ignores_small_input():
    a, b = ShiftResNet(small_input=False), ShiftResNet(small_input=True)
    assert a.total_stride == b.total_stride == 4


def test_fe_block_split_and_bad_widths():
    assert fe_block_split(32, 3) == [16, 8, 8]
    assert fe_block_split(64, 4) == [32, 16, 8, 8]
    with pytest.raises(ValueError, match=r"30 channels are not divisible by 4; nearest valid: 28 or 32"):
        FEBlock(30, 64, units=3, stride=2)
    with pytest.raises(ValueError, match="not divisible by 8"):
        FEBlock(36, 36, units=4)


@pytest.mark.parametrize(("units", "stride"), [(3, 2), (4, 1)])
def test_fe_block_mixes_in_progressively(units, stride):
    channels = 32
    block = FEBlock(channels, 48, units=units, expansion=2, stride=stride).eval()
    sizes = fe_block_split(channels, units)
    assert [u.expand[0].in_channels for u in block.units[:-1]] == [sizes[-1] * 2**k for k in range(units - 1)]
    seen = {}
    block.units[-1].register_forward_pre_hook(lambda module, args: seen.update(x=args[0].clone()))
    x = torch.randn(2, channels, 8, 8)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 48, 8 // stride, 8 // stride)
    # The first part reaches the last unit untouched, in front; the rest has been through the units.
    untouched = sizes[0]
    torch.testing.assert_close(seen["x"][:, :untouched], x[:, :untouched], rtol=0, atol=0)
    assert not torch.allclose(seen["x"][:, untouched:], x[:, untouched:])
    # With every residual unit's output BN zeroed, each unit is the identity: the last unit sees x itself.
    for unit in block.units[:-1]:
        nn.init.zeros_(unit.project[1].weight)
        nn.init.zeros_(unit.project[1].bias)
    with torch.no_grad():
        block(x)
    torch.testing.assert_close(seen["x"], x, rtol=0, atol=0)


def test_units_of_fig_4():
    ib = InvertedBottleneck(8, 16, expansion=4)
    assert ib.expand[0].out_channels == 64 and isinstance(ib.spatial, SparseShift)
    assert not ib.residual and len(ib.project) == 2  # linear: no ReLU at the end
    assert InvertedBottleneck(8, 16, expansion=4, expand_from="in").expand[0].out_channels == 32
    with pytest.raises(ValueError, match="keeps its width"):
        InvertedBottleneck(8, 16, expansion=4, residual=True)
    x = torch.randn(1, 8, 6, 6)
    after, before = PoolBottleneck(8, 16, expansion=5), PoolBottleneck(8, 16, expansion=5, pool="before")
    before.load_state_dict(after.state_dict())
    assert after(x).shape == before(x).shape == (1, 16, 3, 3)
    # Pooling first runs the expansion at a quarter of the positions.
    assert profile(before, (6, 6), in_chans=8).mflops < profile(after, (6, 6), in_chans=8).mflops
    with pytest.raises(ValueError, match="pool must be one of"):
        PoolBottleneck(8, 16, expansion=5, pool="middle")


@pytest.mark.parametrize("name", sorted(FENET_COMPLEXITY))
def test_fenet_complexity_is_the_documented_reading(name):
    mflops, params_m = FENET_COMPLEXITY[name]
    result = profile(create_model(name))
    assert result.mflops == pytest.approx(mflops, abs=0.1)
    assert result.params / 1e6 == pytest.approx(params_m, abs=0.001)
    card = model_card(name)
    assert card.mflops == pytest.approx(card.paper_mflops, rel=0.01)


def test_fenet_se_sits_after_each_ssl_and_costs_fig_7():
    model = create_model("fenet_x1_375_se")
    result = profile(model)
    assert result.mflops == pytest.approx(FENET_SE_COMPLEXITY[0], abs=0.01)
    assert result.params == FENET_SE_COMPLEXITY[1]
    assert result.mflops == pytest.approx(566, rel=0.01)
    card = model_card("fenet_x1_375_se")
    assert (card.paper_mflops, card.paper_top1_err, card.source) == (566, 23.5, "Chen et al. 2019 Figure 7")
    units = [m for m in model.modules() if isinstance(m, InvertedBottleneck)]
    assert len(units) == 1 + 2 + 3 + 4 + 3 + 3  # every IB-SSL: the first, and each FE-Block's but its IB-Pool
    for unit in units:
        # On the expanded channels, squeezed to a quarter (MobileNet V3's placement).
        assert isinstance(unit.se, SqueezeExcite) and unit.se.reduce.in_channels == unit.spatial.channels
        assert unit.se.reduce.out_channels == max(8, unit.spatial.channels // 4)
    pools = [m for m in model.modules() if isinstance(m, PoolBottleneck)]
    assert pools and not any(isinstance(m, SqueezeExcite) for pool in pools for m in pool.modules())
    # Without SE the network is unchanged, key for key.
    plain = create_model("fenet_x1_375")
    assert FENet(width=1.375, se=False).state_dict().keys() == plain.state_dict().keys()
    assert not any(isinstance(m, SqueezeExcite) for m in plain.modules())


def test_fenet_se_gates_the_expanded_channels_after_the_shift():
    unit = InvertedBottleneck(8, 8, expansion=2, residual=True, se=True).eval()
    seen = {}
    unit.se.register_forward_pre_hook(lambda module, args: seen.update(x=args[0].clone()))
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        unit(x)
        torch.testing.assert_close(seen["x"], unit.spatial(unit.expand(x)))
        # A closed gate (sigmoid of -100) zeroes every expanded channel: the residual unit passes x alone.
        nn.init.zeros_(unit.se.expand.weight)
        nn.init.constant_(unit.se.expand.bias, -100.0)
        torch.testing.assert_close(unit(x), x)
    # The deploy graph's layout carries the shift's grouping through the SE (a per-channel gate whose
    # weights it permutes alike): the shift runs grouped and in place there too.
    model = create_model("fenet_x1_375_se", num_classes=10, small_input=True).eval()
    deployed = optimize(model, channel_multiple=1)
    shifts = [m for m in deployed.modules() if isinstance(m, SegmentShift)]
    assert len(shifts) == sum(isinstance(m, SparseShift) for m in model.modules())
    assert all(m.order is None and m.in_place for m in shifts)
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(batch), model(batch), rtol=1e-4, atol=1e-4)


def test_imagenet_fenet_recipe_is_the_papers():
    # Chen et al. 2019, section 4: SGD, Nesterov momentum 0.9, batch 1024, lr 0.6 decayed linearly to 0 over
    # 480 epochs, weight decay 4e-5, shifts frozen after epoch 240.
    config = load_config("imagenet-fenet")
    assert (config.model, config.dataset) == ("fenet_x1_0", "imagefolder")
    assert (config.optimizer, config.nesterov, config.momentum) == ("sgd", True, 0.9)
    assert (config.batch_size, config.lr, config.lr_base_batch) == (1024, 0.6, 1024)
    assert (config.schedule, config.epochs, config.iterations) == ("linear", 480, None)
    assert (config.weight_decay, config.freeze_shifts_epoch) == (4e-5, 240)
    assert config.warmup_epochs == 0 and config.label_smoothing == 0
    assert load_config("imagenet-fenet", {"model": "fenet_x1_375_se"}).model == "fenet_x1_375_se"


def test_fenet_released_reading_is_reproducible():
    # FE-Net as the authors' code is released (hikvision-research/SparseShiftLayer, not the paper's Table 4
    # reading): 417.9 M MAdds, 4.62 M params at 1.0x.
    released = FENet(pool="after", expand_from="out", head_channels=1932)
    result = profile(released)
    assert result.mflops == pytest.approx(417.9, abs=0.1)
    assert result.params / 1e6 == pytest.approx(4.62, abs=0.01)


def test_fenet_widths_and_head():
    wide = FENet(width=1.375)
    assert wide.features[0][0].out_channels == 22
    assert [info.num_chs for info in wide.feature_info] == [22, 44, 88, 176, 352]
    assert wide.num_features == 1898 and FENet().num_features == 1380
    assert FENet(head_channels=1932).num_features == 1932
    assert FENet().drop_rate == 0.2 and FENet().total_stride == 32
    assert FENet(small_input=True).total_stride == 8
    assert len(FENet().features[0]) == 2  # stem conv + BN, no ReLU


def test_fenet_dw_has_a_depthwise_conv_where_fenet_has_an_ssl():
    ssl, dw = FENet(width=0.5), FENet(width=0.5, spatial="dw")
    ssl_spatial = {name: m.spatial for name, m in ssl.named_modules() if isinstance(m, InvertedBottleneck)}
    dw_spatial = {name: m.spatial for name, m in dw.named_modules() if isinstance(m, InvertedBottleneck)}
    # IB-SSL, then per FE-Block its n - 1 residual units, plus the last unit of the stride-1 blocks.
    assert ssl_spatial.keys() == dw_spatial.keys() and len(ssl_spatial) == 1 + 2 + 3 + 4 + 3 + 3
    for name, shift in ssl_spatial.items():
        conv = dw_spatial[name][0]
        assert isinstance(shift, SparseShift)
        assert conv.kernel_size == (3, 3) and conv.groups == conv.in_channels == shift.channels
    assert not any(isinstance(m, SparseShift) for m in dw.modules())


def test_gradients_reach_the_shift_displacements():
    for model in (create_model("shiftresnet20_ssl", expansion=1), FENet(width=0.5, small_input=True)):
        model(torch.randn(2, 3, 32, 32)).square().mean().backward()
        shifts = [m for m in model.modules() if isinstance(m, SparseShift)]
        assert shifts
        for shift in shifts:
            assert shift.alpha.grad is not None and shift.beta.grad is not None
        assert any(shift.alpha.grad.abs().sum() > 0 for shift in shifts)
        assert any(shift.beta.grad.abs().sum() > 0 for shift in shifts)
