"""The width solver: the multiplier that makes a network cost a given number of MFLOPs under its family's
channel rounding (how Zhang et al. 2018, Table 4 holds complexity equal across structures)."""

import json

import pytest
from torch import nn

from shufflenet import create_model, profile
from shufflenet.cli import main
from shufflenet.profile.width import solve_width, width_argument


@pytest.mark.parametrize(
    ("name", "target", "argument"),
    [
        ("shufflenet_v1_g3_x1_0", 38.0, "scale"),
        ("mobilenet_v1_x1_0", 150.0, "alpha"),
        ("fenet_x1_0", 301.0, "width"),
    ],
)
def test_the_width_found_builds_a_network_of_the_budget(name, target, argument):
    solution = solve_width(name, target)
    assert solution.argument == width_argument(name) == argument
    assert abs(solution.relative_error) < 0.01
    # The returned width rebuilds exactly the network that was counted.
    rebuilt = profile(create_model(name, **{argument: solution.value}), (224, 224)).mflops
    assert rebuilt == pytest.approx(solution.mflops)


def test_an_integer_width_is_scanned():
    # ShiftResNet-20 at its native 32x32 with a CIFAR-10 head: expansion 6 costs 32.2 MFLOPs (its model card).
    solution = solve_width("shiftresnet20_ssl", 32.2, input_size=(32, 32), num_classes=10)
    assert (solution.argument, solution.value) == ("expansion", 6)


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
    with pytest.raises(ValueError, match=r"cannot be built at scale=.*its width cannot be searched"):
        solve_width("shufflenet_v2_x1_0", 100.0)


def test_profile_cli_solves_then_profiles(capsys):
    assert main(["profile", "shufflenet_v1_g3_x1_0", "--target-mflops", "38"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scale=0.51") and "MFLOPs against a budget of 38" in out
    assert main(["profile", "mobilenet_v1_x1_0", "--target-mflops", "150", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["mflops"] == pytest.approx(150, rel=0.01)
    assert "alpha=" in captured.err
