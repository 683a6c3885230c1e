"""The width solver: the multiplier that makes a network cost a given number of MFLOPs under its family's
channel rounding (how Zhang et al. 2018, Table 4 holds complexity equal across structures)."""

import json

import pytest
import torch
from torch import nn

from shufflenet import create_model, model_card, model_cards, profile
from shufflenet.cli import main
from shufflenet.models import ShuffleNetV2
from shufflenet.models.shufflenet_v2 import MIN_STAGE2_WIDTH, stage_widths
from shufflenet.profile.width import solve_width, width_argument

# One registered model per family, its width argument, a budget its width steps reach within 2%, and the
# arguments it is counted with (ShiftResNet at its native 32x32 with a CIFAR-10 head, where its integer
# expansion 6 costs 27.44 M). Reached: 100.24, 100.36, 100.03, 100.37, 27.44 and 300.84 MFLOPs.
EVERY_FAMILY = [
    ("shufflenet_v1_g3_x1_0", "scale", 100.0, {}),
    ("shufflenet_v2_x1_0", "scale", 100.0, {}),
    ("mobilenet_v1_x1_0", "alpha", 100.0, {}),
    ("mobilenet_v2_x1_0", "alpha", 100.0, {}),
    ("shiftresnet20_ssl", "expansion", 27.4, {"input_size": (32, 32), "num_classes": 10}),
    ("fenet_x1_0", "width", 301.0, {}),
]
# Ma et al. 2018, Table 5: stage 2-4 output widths and conv5's at 0.5x, 1x, 1.5x, 2x.
V2_TABLE_5 = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


def test_every_family_is_solved_to_within_2_percent():
    families = {model_card(name).family for name, *_ in EVERY_FAMILY}
    assert families == {card.family for card in model_cards().values()}
    for name, argument, target, args in EVERY_FAMILY:
        solution = solve_width(name, target, **args)
        assert solution.argument == width_argument(name) == argument
        assert abs(solution.relative_error) < 0.02, (name, solution.describe())
        # The returned width rebuilds exactly the network that was counted (there on the meta device).
        input_size = args.get("input_size", (224, 224))
        classes = {"num_classes": args["num_classes"]} if "num_classes" in args else {}
        rebuilt = create_model(name, **{argument: solution.value}, **classes)
        assert profile(rebuilt, input_size).mflops == pytest.approx(solution.mflops), name


def test_an_integer_width_is_scanned():
    # ShiftResNet-20 at its native 32x32 with a CIFAR-10 head: expansion 6 costs 27.44 MFLOPs (its card).
    solution = solve_width("shiftresnet20_ssl", 27.44, input_size=(32, 32), num_classes=10)
    assert (solution.argument, solution.value) == ("expansion", 6)
    assert solution.mflops == pytest.approx(model_card("shiftresnet20_ssl").mflops, abs=0.01)


def test_shufflenet_v2_width_rule():
    for scale, widths in V2_TABLE_5.items():
        assert stage_widths(scale) == widths
    # Stage 2 interpolated between the rows (0.75x: halfway from 48 to 116), rounded to even; stages 3-4
    # double it; conv5 a step to 2048 at 2x; beyond the table, the end segments extend.
    assert stage_widths(0.75) == (82, 164, 328, 1024)
    assert stage_widths(1.25) == (146, 292, 584, 1024)
    assert stage_widths(1.99)[-1] == 1024 and stage_widths(2.5) == (312, 624, 1248, 2048)
    assert stage_widths(0.4) == (34, 68, 136, 1024)
    assert stage_widths(0.05) == (MIN_STAGE2_WIDTH, 2 * MIN_STAGE2_WIDTH, 4 * MIN_STAGE2_WIDTH, 1024)
    assert all(w % 2 == 0 for k in range(1, 80) for w in stage_widths(k / 20)[:3])
    with pytest.raises(ValueError, match="scale must be positive"):
        ShuffleNetV2(scale=0)
    for layout in ("paper", "torchvision"):
        model = ShuffleNetV2(scale=0.7, layout=layout, num_classes=10, small_input=True).eval()
        assert [info.num_chs for info in model.feature_info][-3:] == [76, 152, 304]
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert ShuffleNetV2(scale=2.5).drop_rate == 0.2 and ShuffleNetV2(scale=1.9).drop_rate == 0.0


def test_a_callable_builder_and_the_errors():
    def conv_net(width: float) -> nn.Module:
        channels = max(1, round(64 * width))
        return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.Conv2d(channels, 8, 1))

    # Each channel costs (27 + 8) x 224 x 224 multiply-adds, 1.76 M: 10 M lies between 5 channels (8.78 M)
    # and 6 (10.54 M), and 6 is the closer.
    solution = solve_width(conv_net, 10.0, argument="width")
    assert solution.argument == "width" and solution.mflops == pytest.approx(6 * 35 * 224 * 224 / 1e6)
    with pytest.raises(ValueError, match="outside what width"):
        solve_width(conv_net, 1e6)
    with pytest.raises(ValueError, match=r"cannot be built at scale=0.05, so .*: groups must be one of"):
        solve_width("shufflenet_v1_g3_x1_0", 100.0, groups=5)


def test_a_network_that_needs_its_data_is_counted_on_the_cpu():
    class DataDependent(nn.Module):
        """Runs its second conv only where the first one's output is finite: a data-dependent branch, which
        the meta device (shapes only) cannot take."""

        def __init__(self, width: float) -> None:
            super().__init__()
            self.first, self.second = nn.Conv2d(3, round(64 * width), 1), nn.Conv2d(round(64 * width), 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.first(x)
            return self.second(y) if bool(torch.isfinite(y).all()) else y

    solution = solve_width(DataDependent, 10.0)
    assert solution.mflops == pytest.approx(profile(DataDependent(solution.value)).mflops)
    assert abs(solution.relative_error) < 0.02 and solution.mflops > 64 * 3 * 224 * 224 / 1e6 * solution.value


def test_profile_cli_solves_then_profiles(capsys):
    assert main(["profile", "shufflenet_v1_g3_x1_0", "--target-mflops", "38"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scale=0.51") and "MFLOPs against a budget of 38" in out
    assert main(["profile", "mobilenet_v1_x1_0", "--target-mflops", "150", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["mflops"] == pytest.approx(150, rel=0.01)
    assert "alpha=" in captured.err
