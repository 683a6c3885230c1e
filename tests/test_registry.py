import pytest

from shufflenet import create_model, list_models, model_card, model_cards, profile
from shufflenet.models import FeatureExtractor


def test_list_models_covers_every_family_and_filters():
    names = list_models()
    for expected in [
        "shufflenet_v1_g3_x1_0",
        "shufflenet_v1_g8_x0_5",
        "shufflenet_v2_x1_0",
        "mobilenet_v1_x0_75",
        "mobilenet_v2_x1_0",
        "shiftresnet20_ssl",
        "shiftresnet56_1x1",
        "fenet_x1_0",
        "fenet_dw_x1_375",
    ]:
        assert expected in names
    assert len(list_models("shufflenet_v1_g*_x*")) >= 25
    assert list_models("mobilenet_v1_*") == [
        "mobilenet_v1_x0_25",
        "mobilenet_v1_x0_5",
        "mobilenet_v1_x0_75",
        "mobilenet_v1_x1_0",
    ]
    assert list_models("nothing*") == []


def test_unknown_model_suggests_close_names():
    with pytest.raises(
        ValueError, match=r"unknown model 'shufflenet_v2_x1'; did you mean .*shufflenet_v2_x1_0"
    ):
        create_model("shufflenet_v2_x1")
    with pytest.raises(ValueError, match="shufflenet models"):
        create_model("vgg16")


def test_overrides_are_checked():
    model = create_model("shufflenet_v1_g3_x1_0", num_classes=10, in_chans=1, shuffle=False, small_input=True)
    assert model.num_classes == 10 and model.in_chans == 1
    with pytest.raises(ValueError, match=r"takes no argument colour; valid overrides: groups, scale"):
        create_model("shufflenet_v1_g3_x1_0", colour=1)
    with pytest.raises(ValueError, match="features_only"):
        create_model("shufflenet_v1_g3_x1_0", out_indices=(1,))
    assert isinstance(create_model("mobilenet_v2_x1_0", features_only=True), FeatureExtractor)


def test_every_model_has_a_card():
    assert set(model_cards()) == set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_card_matches_the_code(name):
    card = model_card(name)
    # CIFAR-native models are carded at their own input size and head (32x32, 10 classes).
    result = profile(create_model(name, num_classes=card.num_classes), (card.input_size, card.input_size))
    assert card.params == result.params
    assert card.mflops == pytest.approx(result.mflops, abs=0.01)


def test_card_paper_figures_are_close_to_ours():
    # Where a card cites a paper figure, ours lands within the 15% that Table 2's levels allow.
    checked = 0
    for card in model_cards().values():
        if card.paper_mflops:
            assert card.mflops == pytest.approx(card.paper_mflops, rel=0.15), card.name
            assert card.source
            checked += 1
        if card.paper_params_m:
            assert card.params / 1e6 == pytest.approx(card.paper_params_m, abs=0.06), card.name
    assert checked >= 25
