"""Speed on real hardware beside the papers' figures: the ShuffleNet V2 guideline experiments and training
throughput."""

from shufflenet.bench.guidelines import GuidelineResult, guidelines_report, run_guidelines
from shufflenet.bench.train_throughput import train_throughput, train_throughput_report

__all__ = [
    "GuidelineResult",
    "guidelines_report",
    "run_guidelines",
    "train_throughput",
    "train_throughput_report",
]
