import pytest
import torch
from torch import nn

from shufflenet.bench import (
    guidelines,
    guidelines_report,
    run_guidelines,
    train_throughput,
    train_throughput_report,
)
from shufflenet.bench.guidelines import (
    SETTINGS,
    Bottleneck,
    ParallelSum,
    guideline_stack,
    ordering_verdict,
)
from shufflenet.profile import profile

# FLOP ratios between settings do not depend on the spatial size, so a small input keeps the tests fast.
SMALL = (8, 8)


def stack_mflops(experiment: str, device: str, multiplier: int) -> dict[str, float]:
    flops = {}
    for setting in SETTINGS[experiment]:
        stack = guideline_stack(experiment, setting, multiplier, device)
        flops[setting] = profile(stack, SMALL, in_chans=stack.in_chans).mflops
    return flops


def spread(flops: dict[str, float]) -> float:
    return max(flops.values()) / min(flops.values()) - 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # "cuda" only picks the paper's GPU widths here
@pytest.mark.parametrize("multiplier", [1, 2])
def test_g1_pairs_have_the_papers_widths_and_near_equal_flops(device, multiplier):
    flops = stack_mflops("G1", device, multiplier)
    # The paper's integer widths are 5% apart at most (ARM 1:2 and 1:12 are 5% under 1:1).
    assert spread(flops) < 0.06
    stack = guideline_stack("G1", "1:6", multiplier, device)
    c1, c2 = (52, 312) if device == "cuda" else (13, 78)
    assert (stack[0][0].in_channels, stack[0][0].out_channels) == (c1 * multiplier, c2 * multiplier)
    assert stack[0][1].out_channels == c1 * multiplier and len(stack) == 10


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_g2_group_convs_keep_flops_equal(device, multiplier):
    flops = stack_mflops("G2", device, multiplier)
    assert spread(flops) < 0.05
    stack = guideline_stack("G2", "g=8", multiplier, device)
    assert stack[0].groups == 8 and stack[0].in_channels % 8 == 0 and len(stack) == 10


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_g3_fragments_keep_the_flops_of_one_conv(device, multiplier):
    assert spread(stack_mflops("G3", device, multiplier)) < 0.025
    series = guideline_stack("G3", "4-fragment-series", multiplier, device)
    parallel = guideline_stack("G3", "2-fragment-parallel", multiplier, device)
    assert len(series[0]) == 4 and all(isinstance(m, nn.Conv2d) for m in series[0])
    assert isinstance(parallel[0], ParallelSum) and len(parallel[0].branches) == 2


def test_g3_parallel_branches_are_summed():
    block = guideline_stack("G3", "2-fragment-parallel")[0]
    x = torch.randn(1, block.branches[0].in_channels, 5, 5)
    with torch.no_grad():
        assert torch.allclose(block(x), block.branches[0](x) + block.branches[1](x))


def test_g4_variants_lack_exactly_the_ops_they_drop():
    flops = stack_mflops("G4", "cpu", 1)
    assert spread(flops) == 0
    x = torch.randn(1, 32, 6, 6)
    expected = {
        "ReLU+shortcut": torch.relu(x),
        "ReLU only": torch.zeros_like(x),
        "shortcut only": x,
        "neither": torch.zeros_like(x),
    }
    for setting, want in expected.items():
        stack = guideline_stack("G4", setting)
        assert all(isinstance(block, Bottleneck) for block in stack)
        has_relu = any(isinstance(m, nn.ReLU) for m in stack.modules())
        assert has_relu == ("ReLU" in setting)
        # With zero weights a block is its shortcut (then ReLU) alone: what comes out shows what is there.
        for module in stack.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.zeros_(module.weight)
        with torch.no_grad():
            assert torch.equal(stack[0](x.clone()), want), setting


def test_unknown_cell_names_the_valid_ones():
    with pytest.raises(ValueError, match="1-fragment"):
        guideline_stack("G3", "3-fragment-series")


def test_ordering_verdict_says_where_it_holds():
    falling = {"g=1": 40.0, "g=2": 35.0, "g=4": 32.9, "g=8": 27.8}
    rising = {"g=1": 10.0, "g=2": 12.0, "g=4": 13.0, "g=8": 14.0}
    assert ordering_verdict("G2", {1: falling, 2: falling}) == "holds"
    # Differences under 2% are ties, not reversals.
    assert ordering_verdict("G2", {1: {**falling, "g=2": 40.5}}) == "holds"
    partial = ordering_verdict("G2", {1: rising, 2: falling, 4: falling})
    assert partial.startswith("holds at x2, x4 only; x1: g=2")
    assert ordering_verdict("G2", {1: rising}).startswith("does not hold: x1: g=2 (12 images/s) beats g=1")
    g4 = {"ReLU+shortcut": 5.0, "ReLU only": 6.0, "shortcut only": 6.0, "neither": 5.5}
    assert "ReLU only (6 images/s) beats neither" in ordering_verdict("G4", {1: g4})


def test_run_guidelines_measures_every_cell_and_reports_verdicts():
    results = run_guidelines(repeats=2, multipliers=(1,), threads=1, progress=False)
    assert [r.experiment for r in results].count("G3") == 5 and len(results) == 17
    assert {r.experiment for r in results} == {"G1", "G2", "G3", "G4"}
    assert all(r.images_per_s > 0 and r.mflops > 0 and r.paper_value for r in results)
    assert all(r.paper_unit.startswith("images/s") for r in results)  # the ARM figures on CPU
    g1 = {r.setting: r for r in results if r.experiment == "G1"}
    assert g1["1:1"].paper_value == 76.2 and g1["1:1"].mflops == pytest.approx(64.2, abs=0.1)
    report = guidelines_report(results)
    for name in ("G1", "G2", "G3", "G4"):
        line = next(line for line in report.splitlines() if line.startswith(f"- {name}, expected"))
        assert "ours " in line and "paper holds" in line
    assert "| 4-fragment-parallel |" in report


def test_settings_of_a_table_are_timed_in_turn_and_each_speed_is_its_own(monkeypatch):
    """Drift between minutes must land on every setting of one comparison alike: the settings of an
    experiment at one multiplier go to one interleaved timing, and each gets back its own median."""
    groups = []

    def fake_interleaved(calls, *, passes, warmup, rewarm):
        groups.append(len(calls))
        assert passes == 3 and rewarm == 1
        # Setting i takes (i + 1) ms, so the speeds come back in order, each from its own timings.
        return [[(index + 1) / 1000] * passes for index in range(len(calls))]

    monkeypatch.setattr(guidelines, "interleaved_seconds", fake_interleaved)
    results = run_guidelines(repeats=3, multipliers=(1, 2), experiments=("G2", "G3"), progress=False)
    assert groups == [4, 4, 5, 5]  # G2 x1, G2 x2, G3 x1, G3 x2
    g3 = [r.images_per_s for r in results if r.experiment == "G3" and r.multiplier == 2]
    assert g3 == pytest.approx([1000, 500, 1000 / 3, 250, 200])


def test_train_throughput_runs_and_records_failures():
    rows = train_throughput(
        ["shufflenet_v2_x0_5", "no_such_model"],
        batch_size=4,
        image_size=32,
        steps=2,
        warmup=1,
        modes=("eager",),
        num_classes=10,
        threads=1,
    )
    good, bad = rows
    assert good["error"] is None and good["images_per_s"] > 0 and good["mode"] == "eager"
    assert good["warmup_s"] > 0 and good["peak_mem_mib"] >= 0 and good["amp"] is False
    assert bad["images_per_s"] is None and bad["error"].startswith("ValueError: unknown model")
    report = train_throughput_report(rows)
    assert "shufflenet_v2_x0_5" in report and "unknown model" in report
