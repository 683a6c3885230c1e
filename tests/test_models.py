import itertools

import pytest
import torch
import torchvision

from conftest import randomize_batchnorm
from shufflenet import create_model, load_torchvision_weights, profile
from shufflenet.models import ShuffleNetV1, ShuffleNetV2
from shufflenet.models.shufflenet_v1 import stage_widths
from shufflenet.ops import ChannelShuffle

# Reference complexity: conv + FC multiply-adds (M) at 224x224 with 1000 classes, counted from the papers'
# architecture tables (Zhang et al. 2018, Table 1; Ma et al. 2018, Table 5; Howard et al. 2017, Table 1;
# Sandler et al. 2018, Table 2). The conv-only parts round to the papers' own MFLOPs columns (Zhang et al.
# 2018, Tables 1-2: 143/140/137/133/137 for g = 1/2/3/4/8; Ma et al. 2018, Table 5: 41/146/299/591; Howard et
# al. 2017, Table 6: 569/325/149/41; Sandler et al. 2018, Table 4: 300).
MFLOPS = {
    "shufflenet_v1_g1_x1_0": 143.1,
    "shufflenet_v1_g2_x1_0": 140.8,
    "shufflenet_v1_g3_x1_0": 137.5,
    "shufflenet_v1_g4_x1_0": 134.3,
    "shufflenet_v1_g8_x1_0": 138.4,
    "shufflenet_v1_g3_x0_5": 37.6,
    "shufflenet_v1_g3_x1_5": 292.4,
    "shufflenet_v1_g3_x2_0": 524.0,
    "shufflenet_v2_x0_5": 40.5,
    "shufflenet_v2_x1_0": 145.8,
    "shufflenet_v2_x1_5": 299.0,
    "shufflenet_v2_x2_0": 590.8,
    "mobilenet_v1_x1_0": 568.7,
    "mobilenet_v1_x0_75": 325.4,
    "mobilenet_v1_x0_5": 149.5,
    "mobilenet_v1_x0_25": 41.0,
    "mobilenet_v2_x1_0": 300.8,
}
PARAMS_EXACT = {
    "shufflenet_v1_g1_x1_0": 1_531_936,
    "shufflenet_v1_g2_x1_0": 1_733_848,
    "shufflenet_v1_g3_x1_0": 1_865_728,
    "shufflenet_v1_g4_x1_0": 1_968_344,
    "shufflenet_v1_g8_x1_0": 2_434_768,
    "mobilenet_v1_x1_0": 4_231_976,
    "mobilenet_v2_x1_0": 3_504_872,
}
PARAMS_V2_M = {"x0_5": 1.366, "x1_0": 2.279, "x1_5": 3.507, "x2_0": 7.403}
# ShuffleNet V1 Table 1 (conv only, no FC) rounds to these.
TABLE1_CONV_ONLY = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}


@pytest.mark.parametrize("name", sorted(MFLOPS))
def test_mflops_match_papers(name):
    assert profile(create_model(name)).mflops == pytest.approx(MFLOPS[name], abs=0.5)


@pytest.mark.parametrize("groups", sorted(TABLE1_CONV_ONLY))
def test_v1_conv_only_complexity_rounds_to_table_1(groups):
    result = profile(create_model(f"shufflenet_v1_g{groups}_x1_0"))
    conv_only = sum(layer.mflops for layer in result.layers if layer.kind == "Conv2d")
    assert round(conv_only) == TABLE1_CONV_ONLY[groups]


@pytest.mark.parametrize("name", sorted(PARAMS_EXACT))
def test_params_exact(name):
    assert sum(p.numel() for p in create_model(name).parameters()) == PARAMS_EXACT[name]


@pytest.mark.parametrize("tag", sorted(PARAMS_V2_M))
def test_v2_params(tag):
    params = sum(p.numel() for p in create_model(f"shufflenet_v2_{tag}").parameters())
    assert params / 1e6 == pytest.approx(PARAMS_V2_M[tag], abs=0.005)


def test_v1_widths_at_1x_are_table_1():
    for groups, widths in {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}.items():
        model = ShuffleNetV1(groups=groups)
        assert [info.num_chs for info in model.feature_info] == [24, 24, widths, 2 * widths, 4 * widths]


def test_v1_released_stems():
    assert ShuffleNetV1(groups=3, scale=0.5).conv1[0].out_channels == 12
    assert ShuffleNetV1(groups=8, scale=0.5).conv1[0].out_channels == 16
    assert ShuffleNetV1(groups=3, scale=2.0).conv1[0].out_channels == 48


# Zhang et al. 2018, Table 2's 13 MFLOPs level (0.25x): stem, conv + FC and conv-only MFLOPs per g.
QUARTER_WIDTH = {1: (12, 13.16, 13.02), 2: (12, 13.47, 13.27), 3: (12, 13.30, 13.06), 4: (12, 13.48, 13.21)}
QUARTER_WIDTH[8] = (8, 12.43, 12.04)  # a stem of 16, the multiple of 8 above 12, would count 15.7


@pytest.mark.parametrize("groups", sorted(QUARTER_WIDTH))
def test_v1_quarter_width_takes_the_half_width_stem(groups):
    stem, mflops, conv_only = QUARTER_WIDTH[groups]
    model = ShuffleNetV1(groups=groups, scale=0.25)
    assert model.conv1[0].out_channels == stem
    result = profile(model)
    assert result.mflops == pytest.approx(mflops, abs=0.005)
    assert sum(layer.mflops for layer in result.layers if layer.kind == "Conv2d") == pytest.approx(
        conv_only, abs=0.005
    )


def test_v1_tiny_scales_still_build():
    # Below about 0.1x the stem would reach the first stage's width, and the first unit concatenates it.
    assert stage_widths(3, 0.05) == (6, (12, 24, 48))
    assert stage_widths(1, 0.05) == (4, (8, 16, 28))
    ShuffleNetV1(groups=1, scale=0.05).eval()(torch.randn(1, 3, 32, 32))


def test_v1_state_dict_keys_are_the_skeletons():
    """The skeleton that ShuffleNet V1 shares with its Table 4 peers keeps every key of the V1 net."""
    keys = list(ShuffleNetV1(groups=3).state_dict())
    assert keys[:6] == [
        "conv1.0.weight",
        "conv1.1.weight",
        "conv1.1.bias",
        "conv1.1.running_mean",
        "conv1.1.running_var",
        "conv1.1.num_batches_tracked",
    ]
    assert keys[6:9] == ["stage2.0.pointwise1.weight", "stage2.0.bn1.weight", "stage2.0.bn1.bias"]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert [key.split(".")[0] for key in dict.fromkeys(key.split(".")[0] for key in keys)] == [
        "conv1",
        "stage2",
        "stage3",
        "stage4",
        "fc",
    ]
    assert len(keys) == 6 + 16 * 18 + 2  # stem conv + BN; 16 units of 3 convs + 3 BNs; fc
    bn_fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    unit_keys = {key.removeprefix("stage3.1.") for key in keys if key.startswith("stage3.1.")}
    assert unit_keys == {"pointwise1.weight", "depthwise.weight", "pointwise2.weight"} | {
        f"{bn}.{field}" for bn in ("bn1", "bn2", "bn3") for field in bn_fields
    }


def test_v1_shallow_readings_of_table_5():
    literal, at_budget = (
        create_model("shufflenet_v1_g3_x0_5_shallow"),
        create_model("shufflenet_v1_g3_x0_75_shallow"),
    )
    for model, scale in ((literal, 0.5), (at_budget, 0.75)):
        assert model.scale == scale and [len(s) for s in (model.stage2, model.stage3, model.stage4)] == [
            2,
            4,
            2,
        ]
    assert profile(literal).mflops == pytest.approx(21.58, abs=0.01)
    assert profile(at_budget).mflops == pytest.approx(41.63, abs=0.01)


def test_v1_first_pointwise_of_stage2_is_ungrouped():
    model = ShuffleNetV1(groups=8)
    assert model.stage2[0].pointwise1.groups == 1
    assert model.stage2[1].pointwise1.groups == 8
    assert model.stage3[0].pointwise1.groups == 8


SCALE_LEVELS = {0.25: 13.0, 0.5: 38.0}


@pytest.mark.parametrize("groups,scale", list(itertools.product([1, 2, 3, 4, 8], [0.25, 0.5, 1.0, 1.5, 2.0])))
def test_every_group_and_scale_builds_trains_and_lands_on_table_2(groups, scale):
    model = ShuffleNetV1(groups=groups, scale=scale, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    if scale in SCALE_LEVELS:
        mflops = profile(ShuffleNetV1(groups=groups, scale=scale)).mflops
        assert mflops == pytest.approx(SCALE_LEVELS[scale], rel=0.15)


@pytest.mark.parametrize("scale", [0.3, 0.75, 1.25, 3.0])
def test_v1_any_positive_scale_builds(scale):
    for groups in (1, 3, 8):
        ShuffleNetV1(groups=groups, scale=scale).eval()(torch.randn(1, 3, 32, 32))


def test_v1_ablation_switches():
    plain = ShuffleNetV1(groups=3)
    no_shuffle = ShuffleNetV1(groups=3, shuffle=False)
    assert sum(isinstance(m, ChannelShuffle) for m in plain.modules()) == 15  # every unit but the first
    assert not any(isinstance(m, ChannelShuffle) for m in no_shuffle.modules())
    shallow = ShuffleNetV1(groups=3, scale=0.5, shallow=True)
    assert [len(stage) for stage in (shallow.stage2, shallow.stage3, shallow.stage4)] == [2, 4, 2]
    se_mflops = profile(create_model("shufflenet_v1_g3_x2_0_se")).mflops
    assert se_mflops == pytest.approx(527, abs=1.0)  # Table 5: "with SE" 527 MFLOPs


def test_no_shuffle_really_changes_the_function():
    torch.manual_seed(0)
    shuffled = ShuffleNetV1(groups=3, num_classes=10).eval()
    unshuffled = ShuffleNetV1(groups=3, num_classes=10, shuffle=False).eval()
    unshuffled.load_state_dict(shuffled.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(shuffled(x), unshuffled(x))


@pytest.mark.parametrize(
    "ours,theirs",
    [
        ("shufflenet_v2_x0_5", torchvision.models.shufflenet_v2_x0_5),
        ("shufflenet_v2_x1_0", torchvision.models.shufflenet_v2_x1_0),
        ("mobilenet_v2_x1_0", torchvision.models.mobilenet_v2),
    ],
)
def test_torchvision_parity(ours, theirs):
    reference = randomize_batchnorm(theirs()).eval()
    overrides = {"layout": "torchvision"} if ours.startswith("shufflenet") else {}
    model = load_torchvision_weights(create_model(ours, **overrides), reference.state_dict()).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tag", ["x0_5", "x1_0", "x1_5", "x2_0"])
def test_torchvision_layout_is_key_for_key_and_same_complexity(tag):
    reference = getattr(torchvision.models, f"shufflenet_v2_{tag}")()
    model = create_model(f"shufflenet_v2_{tag}", layout="torchvision")
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    assert profile(model).mflops == pytest.approx(profile(reference).mflops, rel=1e-12)


def test_torchvision_weights_from_file(tmp_path):
    reference = torchvision.models.mobilenet_v2()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    model = load_torchvision_weights(create_model("mobilenet_v2_x1_0"), path)
    assert torch.equal(model.classifier.weight, reference.classifier[1].weight)


def test_torchvision_weights_wrong_layout_says_how_to_fix():
    reference = torchvision.models.shufflenet_v2_x1_0()
    with pytest.raises(ValueError, match="layout='torchvision'"):
        load_torchvision_weights(create_model("shufflenet_v2_x1_0"), reference.state_dict())
    with pytest.raises(ValueError, match="no counterpart"):
        load_torchvision_weights(create_model("shufflenet_v1_g3_x1_0"), reference.state_dict())


@pytest.mark.parametrize(
    "name,channels",
    [
        ("shufflenet_v1_g3_x1_0", [24, 24, 240, 480, 960]),
        ("shufflenet_v2_x1_0", [24, 24, 116, 232, 464]),
        ("mobilenet_v1_x1_0", [64, 128, 256, 512, 1024]),
        ("mobilenet_v2_x1_0", [16, 24, 32, 96, 320]),
    ],
)
def test_features_only_strides_and_channels(name, channels):
    extractor = create_model(name, features_only=True)
    assert extractor.channels() == channels
    assert extractor.reductions() == [2, 4, 8, 16, 32]
    maps = extractor(torch.randn(1, 3, 96, 128))
    assert [m.shape[1] for m in maps] == channels
    assert [(96 // m.shape[2], 128 // m.shape[3]) for m in maps] == [(r, r) for r in [2, 4, 8, 16, 32]]
    subset = create_model(name, features_only=True, out_indices=(2, 4))
    assert [m.shape[1] for m in subset(torch.randn(1, 3, 64, 64))] == [channels[2], channels[4]]


def test_features_only_bad_indices():
    with pytest.raises(ValueError, match="out of range"):
        create_model("shufflenet_v2_x1_0", features_only=True, out_indices=(5,))


@pytest.mark.parametrize(
    "name", ["shufflenet_v1_g3_x1_0", "shufflenet_v2_x1_0", "mobilenet_v1_x1_0", "mobilenet_v2_x1_0"]
)
def test_head_interface(name):
    model = create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(pooled, features.mean((2, 3)))
    torch.testing.assert_close(model.forward_head(features), model.get_classifier()(pooled))
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize(
    "name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5", "mobilenet_v1_x0_25", "mobilenet_v2_x0_35"]
)
def test_small_input_stem(name):
    model = create_model(name, num_classes=10, in_chans=1, small_input=True)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.feature_info[-1].reduction <= 16
    assert model.forward_features(torch.randn(1, 1, 32, 32)).shape[-1] >= 2


def test_v2_2x_has_dropout_and_torchvision_layout_does_not():
    assert create_model("shufflenet_v2_x2_0").drop_rate == 0.2
    assert create_model("shufflenet_v2_x2_0", layout="torchvision").drop_rate == 0.0


def test_wrong_input_channels_names_the_fix():
    model = create_model("shufflenet_v2_x0_5")
    with pytest.raises(ValueError, match=r"1 channels .* in_chans=3; create it with in_chans=1"):
        model(torch.randn(1, 1, 64, 64))


def test_input_too_small_names_the_fix():
    model = create_model("mobilenet_v2_x1_0")
    with pytest.raises(ValueError, match=r"16x16 is smaller than the network's total stride 32.*small_input"):
        model(torch.randn(1, 3, 16, 16))


def test_indivisible_groups_raise_with_alternatives():
    from shufflenet.blocks import ShuffleV1Unit

    with pytest.raises(ValueError, match=r"not divisible by groups 3; nearest valid"):
        ShuffleV1Unit(30, 100, mid_channels=24, groups=3, stride=2)
    with pytest.raises(ValueError, match="groups must be one of"):
        ShuffleNetV1(groups=5)
    with pytest.raises(ValueError, match="scale must be positive"):
        ShuffleNetV1(scale=0)
    with pytest.raises(ValueError, match="scale must be positive"):
        ShuffleNetV2(scale=0)
