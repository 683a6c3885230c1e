"""The four guideline experiments of Ma et al. 2018, section 2 (Tables 1-4), run on this machine.

Each experiment stacks 10 blocks on a 56x56 input and compares settings of equal FLOPs: if speed still
differs, FLOPs alone do not predict it. Ours are images/s; the paper's figures sit beside them in the
paper's own units (GTX 1080Ti batches/s at batch 8, Snapdragon 810 images/s on 1 thread).

The blocks are bare convolutions without bias or BN (BN folds into the conv at inference), so the only
element-wise ops are those an experiment is about: the ReLU and shortcut of G4 and the branch sum of G3.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from shufflenet._system import torch_threads
from shufflenet._table import markdown_table
from shufflenet.deploy.timing import interleaved_seconds
from shufflenet.profile import profile

INPUT_SIZE = (56, 56)
BLOCKS = 10
PAPER_MULTIPLIERS = (1, 2, 4)
WARMUP = 3
# Speeds closer than this count as a tie when checking an ordering: a short median on a shared machine
# moves by a percent or two between runs, which must not read as a reversal.
TIE = 0.02

GPU_UNIT = "batches/s (GTX 1080Ti, batch 8)"
ARM_UNIT = "images/s (Snapdragon 810, 1 thread)"

# Table 1, G1: setting -> (c1, c2) on GPU, (c1, c2) on ARM, GPU batches/s and ARM images/s at x1, x2, x4.
# The paper's integer widths keep 2 c1 c2 equal only to within 6% (1:2 on ARM and 1:12 are 5% under).
TABLE_1 = {
    "1:1": ((128, 128), (32, 32), (1480, 723, 232), (76.2, 21.7, 5.3)),
    "1:2": ((90, 180), (22, 44), (1296, 586, 206), (72.9, 20.5, 5.1)),
    "1:6": ((52, 312), (13, 78), (876, 489, 189), (69.1, 17.9, 4.6)),
    "1:12": ((36, 432), (9, 108), (748, 392, 163), (57.6, 15.1, 4.4)),
}
# Table 2, G2: groups -> (c on GPU, c on ARM, GPU batches/s, ARM images/s). c*c/g is nearly constant.
TABLE_2 = {
    1: (128, 64, (2451, 1289, 437), (40.0, 10.2, 2.3)),
    2: (180, 90, (1725, 873, 341), (35.0, 9.5, 2.2)),
    4: (256, 128, (1026, 644, 338), (32.9, 8.7, 2.1)),
    8: (360, 180, (634, 445, 230), (27.8, 7.5, 1.8)),
}
# Table 3, G3: setting -> (fragments, parallel, GPU batches/s, ARM images/s); c = 128 on GPU, 64 on ARM at x1.
TABLE_3 = {
    "1-fragment": (1, False, (2446, 1274, 434), (40.2, 10.1, 2.3)),
    "2-fragment-series": (2, False, (1790, 909, 336), (38.6, 10.1, 2.2)),
    "4-fragment-series": (4, False, (752, 745, 349), (38.4, 10.1, 2.3)),
    "2-fragment-parallel": (2, True, (1537, 803, 320), (33.4, 9.1, 2.2)),
    "4-fragment-parallel": (4, True, (691, 572, 292), (35.0, 8.4, 2.1)),
}
TABLE_3_CHANNELS = (128, 64)
# Table 4, G4: setting -> (ReLU, shortcut, GPU batches/s, ARM images/s); bottleneck c = 32 at x1 on both.
TABLE_4 = {
    "ReLU+shortcut": (True, True, (2427, 2066, 1436), (56.7, 16.9, 5.0)),
    "ReLU only": (True, False, (2647, 2256, 1735), (61.9, 18.8, 5.2)),
    "shortcut only": (False, True, (2672, 2121, 1458), (57.3, 18.2, 5.1)),
    "neither": (False, False, (2842, 2376, 1782), (66.3, 20.2, 5.4)),
}
TABLE_4_CHANNELS = 32

SETTINGS: dict[str, tuple[str, ...]] = {
    "G1": tuple(TABLE_1),
    "G2": tuple(f"g={g}" for g in TABLE_2),
    "G3": tuple(TABLE_3),
    "G4": tuple(TABLE_4),
}
TITLES = {
    "G1": "G1, Table 1: equal channel width minimizes MAC (1x1 c1->c2->c1, equal FLOPs)",
    "G2": "G2, Table 2: excessive group convolution increases MAC (1x1 group conv, equal FLOPs)",
    "G3": "G3, Table 3: network fragmentation reduces parallelism (equal FLOPs)",
    "G4": "G4, Table 4: element-wise operations are non-negligible (ResNet bottleneck)",
}
EXPECTED = {
    "G1": "1:1 fastest, speed falls as c2/c1 grows",
    "G2": "speed falls as g grows",
    "G3": "1-fragment fastest, an effect the paper finds small on ARM",
    "G4": "'neither' fastest, 'ReLU+shortcut' slowest",
}


@dataclass(frozen=True)
class GuidelineResult:
    """One cell of a guideline table: ours in images/s beside the paper's figure in its unit."""

    experiment: str
    setting: str
    multiplier: int
    channels: str
    mflops: float
    images_per_s: float
    paper_value: float | None
    paper_unit: str


def _conv1x1(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, groups=groups, bias=False)


class ParallelSum(nn.Module):
    """Branches that read the same input, summed element-wise (the parallel blocks of G3)."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class Bottleneck(nn.Module):
    """ResNet bottleneck c -> c/4 (1x1) -> c/4 (3x3) -> c (1x1), with ReLU and shortcut switchable (G4)."""

    def __init__(self, channels: int, relu: bool = True, shortcut: bool = True) -> None:
        super().__init__()
        mid = channels // 4
        self.conv1 = _conv1x1(channels, mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.conv3 = _conv1x1(mid, channels)
        self.relu1 = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.relu3 = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.conv1(x))
        out = self.relu2(self.conv2(out))
        out = self.conv3(out)
        if self.shortcut:
            out = out + x
        return self.relu3(out)


def fragment_width(channels: int, fragments: int) -> int:
    """Width of each fragment in G3 so that a block has the FLOPs of one ``channels`` x ``channels`` 1x1
    conv: ``n`` square 1x1 convs of width ``c / sqrt(n)``, in series or in parallel, cost ``n (c^2 / n)``."""
    return max(1, round(channels / math.sqrt(fragments)))


def guideline_stack(experiment: str, setting: str, multiplier: int = 1, device: str = "cpu") -> nn.Sequential:
    """The 10-block network of one cell of Ma et al. 2018, Tables 1-4, with the paper's GPU channel counts
    when ``device`` is CUDA and its ARM ones otherwise. ``in_chans`` on the result is its input width."""
    gpu = torch.device(device).type == "cuda"
    if experiment not in SETTINGS or setting not in SETTINGS[experiment]:
        valid = {name: list(settings) for name, settings in SETTINGS.items()}
        raise ValueError(f"unknown guideline cell {experiment} {setting!r}; valid: {valid}")
    if experiment == "G1":
        gpu_pair, cpu_pair = TABLE_1[setting][:2]
        c1, c2 = (c * multiplier for c in (gpu_pair if gpu else cpu_pair))
        blocks = [nn.Sequential(_conv1x1(c1, c2), _conv1x1(c2, c1)) for _ in range(BLOCKS)]
        stack, in_chans = nn.Sequential(*blocks), c1
    elif experiment == "G2":
        groups = int(setting.removeprefix("g="))
        # The paper's ARM width for g=8, 180, does not split into 8 groups: round up to 184 (+3.3% FLOPs).
        c = groups * math.ceil(TABLE_2[groups][0 if gpu else 1] * multiplier / groups)
        stack, in_chans = nn.Sequential(*(_conv1x1(c, c, groups) for _ in range(BLOCKS))), c
    elif experiment == "G3":
        fragments, parallel = TABLE_3[setting][:2]
        c = fragment_width(TABLE_3_CHANNELS[0 if gpu else 1] * multiplier, fragments)
        convs = [[_conv1x1(c, c) for _ in range(fragments)] for _ in range(BLOCKS)]
        blocks = [ParallelSum(block) if parallel else nn.Sequential(*block) for block in convs]
        stack, in_chans = nn.Sequential(*blocks), c
    else:
        relu, shortcut = TABLE_4[setting][:2]
        c = TABLE_4_CHANNELS * multiplier
        stack = nn.Sequential(*(Bottleneck(c, relu, shortcut) for _ in range(BLOCKS)))
        in_chans = c
    stack.in_chans = in_chans
    return stack


def _channels_label(experiment: str, stack: nn.Sequential) -> str:
    first = stack[0]
    if experiment == "G1":
        return f"{first[0].in_channels},{first[0].out_channels}"
    if experiment == "G2":
        return f"{first.in_channels} (g={first.groups})"
    if experiment == "G3":
        return str(stack.in_chans)
    return f"{stack.in_chans} (mid {first.conv2.in_channels})"


def _paper_value(experiment: str, setting: str, multiplier: int, gpu: bool) -> float | None:
    if multiplier not in PAPER_MULTIPLIERS:
        return None
    if experiment == "G1":
        figures = TABLE_1[setting][2:]
    elif experiment == "G2":
        figures = TABLE_2[int(setting.removeprefix("g="))][2:]
    elif experiment == "G3":
        figures = TABLE_3[setting][2:]
    else:
        figures = TABLE_4[setting][2:]
    return float(figures[0 if gpu else 1][PAPER_MULTIPLIERS.index(multiplier)])


def _images_per_s(models: Sequence[nn.Module], inputs: Sequence[torch.Tensor], repeats: int) -> list[float]:
    """Images/s of each model on its input: the median of ``repeats`` timed calls, the models called in
    turn in shuffled passes (each timed call right after an untimed one of the same model, i.e. in steady
    state), so that a shared machine's drift between minutes lands on every setting of a table alike
    instead of deciding its ordering."""

    def call(model: nn.Module, x: torch.Tensor) -> None:
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    calls = [lambda model=model, x=x: call(model, x) for model, x in zip(models, inputs, strict=True)]
    with torch.inference_mode():
        times = interleaved_seconds(calls, passes=repeats, warmup=WARMUP, rewarm=1)
    return [x.shape[0] / statistics.median(seconds) for x, seconds in zip(inputs, times, strict=True)]


def run_guidelines(
    device: str = "cpu",
    threads: int = 1,
    repeats: int = 30,
    multipliers: Sequence[int] = (1, 2, 4),
    experiments: Sequence[str] = ("G1", "G2", "G3", "G4"),
    progress: bool = True,
) -> list[GuidelineResult]:
    """Measure every cell of Ma et al. 2018, Tables 1-4 (section 2): images/s as the median of ``repeats``
    forward passes after a warm-up, the settings of one experiment and multiplier timed in turn
    (:func:`_images_per_s`), and MFLOPs with :func:`shufflenet.profile`.

    On CPU: batch 1 on ``threads`` threads (the paper's ARM runs are 1 thread, batch 1) and the paper's ARM
    channel counts. On CUDA: batch 8 and the GPU channel counts, as in the paper.
    """
    gpu = torch.device(device).type == "cuda"
    if gpu and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use device='cpu'")
    unknown = [name for name in experiments if name not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; valid: {list(SETTINGS)}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    batch = 8 if gpu else 1
    # One table row group (an experiment at one multiplier) is timed together: its settings are compared.
    groups = [(name, m) for name in experiments for m in multipliers]
    results = []
    with torch_threads(threads), _denormals_flushed():
        for name, m in tqdm(groups, desc="guidelines", disable=not progress):
            stacks = []
            for setting in SETTINGS[name]:
                torch.manual_seed(0)
                stacks.append(guideline_stack(name, setting, m, device).eval())
            mflops = [profile(stack, INPUT_SIZE, in_chans=stack.in_chans).mflops for stack in stacks]
            stacks = [stack.to(device) for stack in stacks]
            inputs = [torch.randn(batch, stack.in_chans, *INPUT_SIZE, device=device) for stack in stacks]
            speeds = _images_per_s(stacks, inputs, repeats)
            cells = zip(SETTINGS[name], stacks, mflops, speeds, strict=True)
            for setting, stack, cell_mflops, speed in cells:
                results.append(
                    GuidelineResult(
                        experiment=name,
                        setting=setting,
                        multiplier=m,
                        channels=_channels_label(name, stack),
                        mflops=round(cell_mflops, 2),
                        images_per_s=speed,
                        paper_value=_paper_value(name, setting, m, gpu),
                        paper_unit=GPU_UNIT if gpu else ARM_UNIT,
                    )
                )
    return results


@contextlib.contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Ten bare convs shrink activations toward denormals, which are many times slower on CPU."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _expected_pairs(experiment: str) -> list[tuple[str, str]]:
    """(should be faster, should be slower) pairs that make up the paper's ordering."""
    settings = SETTINGS[experiment]
    if experiment in ("G1", "G2"):
        return list(itertools.pairwise(settings))
    if experiment == "G3":
        return [("1-fragment", other) for other in settings[1:]]
    middle = ("ReLU only", "shortcut only")
    return [("neither", s) for s in settings if s != "neither"] + [(s, "ReLU+shortcut") for s in middle]


def _ordering_failures(
    experiment: str, speeds: dict[str, float], multiplier: int, unit: str = "images/s"
) -> list[str]:
    failures = []
    for faster, slower in _expected_pairs(experiment):
        if faster in speeds and slower in speeds and speeds[slower] > speeds[faster] * (1 + TIE):
            failures.append(
                f"x{multiplier}: {slower} ({speeds[slower]:.4g} {unit}) beats {faster} ({speeds[faster]:.4g})"
            )
    return failures


def ordering_verdict(experiment: str, speeds: dict[int, dict[str, float]], unit: str = "images/s") -> str:
    """'holds', 'holds at x2, x4 only; ...' or 'does not hold: ...' for the paper's ordering of one
    experiment, given speeds per multiplier and setting (higher is faster; gaps under 2% are ties)."""
    if not speeds:
        return "no data"
    held, failures = [], []
    for multiplier in sorted(speeds):
        found = _ordering_failures(experiment, speeds[multiplier], multiplier, unit)
        failures.extend(found)
        if not found:
            held.append(f"x{multiplier}")
    if not failures:
        return "holds"
    if held:
        return f"holds at {', '.join(held)} only; {'; '.join(failures)}"
    return f"does not hold: {'; '.join(failures)}"


def guidelines_report(results: Sequence[GuidelineResult]) -> str:
    """Markdown: one table per experiment, ours beside the paper (with speeds relative to the first
    setting at the same multiplier, so orderings compare across units), then one verdict line each."""
    sections, verdicts = [], []
    for name in SETTINGS:
        rows = [r for r in results if r.experiment == name]
        if not rows:
            continue
        first = {r.multiplier: r for r in rows if r.setting == SETTINGS[name][0]}
        table = []
        for r in rows:
            base = first.get(r.multiplier)
            ours_rel = r.images_per_s / base.images_per_s if base else None
            paper_rel = None
            if base and r.paper_value is not None and base.paper_value:
                paper_rel = r.paper_value / base.paper_value
            table.append(
                [
                    r.setting,
                    f"x{r.multiplier}",
                    r.channels,
                    f"{r.mflops:.1f}",
                    f"{r.images_per_s:.1f}",
                    None if ours_rel is None else f"{ours_rel:.2f}",
                    None if r.paper_value is None else f"{r.paper_value:g}",
                    None if paper_rel is None else f"{paper_rel:.2f}",
                ]
            )
        headers = ["setting", "mult", "channels", "MFLOPs", "ours images/s", "ours rel.", "paper"]
        headers.append("paper rel.")
        unit = rows[0].paper_unit
        sections.append(f"### {TITLES[name]}\n\nPaper column: {unit}.\n\n{markdown_table(headers, table)}")
        ours: dict[int, dict[str, float]] = {}
        paper: dict[int, dict[str, float]] = {}
        for r in rows:
            ours.setdefault(r.multiplier, {})[r.setting] = r.images_per_s
            if r.paper_value is not None:
                paper.setdefault(r.multiplier, {})[r.setting] = r.paper_value
        paper_unit = unit.split(" (")[0]
        verdicts.append(
            f"- {name}, expected {EXPECTED[name]}: ours {ordering_verdict(name, ours)}; "
            f"paper {ordering_verdict(name, paper, paper_unit)}."
        )
    heading = f"### Verdicts (speeds within {TIE:.0%} count as ties)"
    return "\n\n".join([*sections, heading, "\n".join(verdicts)]) + "\n"
