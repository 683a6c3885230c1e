"""Where the time goes: OpenVINO's per-node profile of torchvision's ShuffleNet V2 1x beside our deploy
graph of the same net (same weights), batch 1, 224x224, 1 thread, summed per node type.

    python benchmarks/openvino_profile.py

Writes benchmarks/results/openvino_profile.{md,csv,json}.
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from shufflenet import create_model, load_torchvision_weights
from shufflenet._table import markdown_table
from shufflenet.bench.report import environment, write_record
from shufflenet.deploy import optimize
from shufflenet.deploy.runtimes import export_onnx, openvino_compiled

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = 50


def node_profile(onnx_path: Path, batch: np.ndarray) -> dict[tuple[str, str], float]:
    """Mean ms per (node type, kernel) over RUNS inferences after warm-up."""
    compiled = openvino_compiled(onnx_path, 1, extra_config={"PERF_COUNT": True})
    request = compiled.create_infer_request()
    for _ in range(20):
        request.infer({0: batch})
    totals: dict[tuple[str, str], float] = collections.Counter()
    for _ in range(RUNS):
        request.infer({0: batch})
        for node in request.profiling_info:
            totals[(node.node_type, node.exec_type)] += node.real_time.total_seconds() * 1e3 / RUNS
    return dict(totals)


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    reference = torchvision.models.shufflenet_v2_x1_0().eval()
    ours = create_model("shufflenet_v2_x1_0", layout="torchvision")
    load_torchvision_weights(ours, reference.state_dict())
    example = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as folder:
        profiles = {
            "torchvision": node_profile(
                export_onnx(reference, Path(folder) / "tv.onnx", example), example.numpy()
            ),
            "deploy graph": node_profile(
                export_onnx(optimize(ours.eval()), Path(folder) / "ours.onnx", example), example.numpy()
            ),
        }
    keys = sorted({key for profile in profiles.values() for key in profile},
                  key=lambda key: -profiles["torchvision"].get(key, 0))  # fmt: skip
    rows = [
        {"node": node, "kernel": kernel, **{name: round(profile.get((node, kernel), 0.0), 3)
                                           for name, profile in profiles.items()}}
        for node, kernel in keys
    ]  # fmt: skip
    rows = [row for row in rows if row["torchvision"] or row["deploy graph"]]
    totals = {name: sum(profile.values()) for name, profile in profiles.items()}
    table = markdown_table(
        ["node type", "kernel", "torchvision ms", "share", "deploy graph ms", "share"],
        [
            [r["node"], r["kernel"],
             f"{r['torchvision']:.3f}", f"{100 * r['torchvision'] / totals['torchvision']:.1f}%",
             f"{r['deploy graph']:.3f}", f"{100 * r['deploy graph'] / totals['deploy graph']:.1f}%"]
            for r in rows
        ]
        + [["total", "", f"{totals['torchvision']:.3f}", "", f"{totals['deploy graph']:.3f}", ""]],
    )  # fmt: skip
    body = f"OpenVINO CPU plugin, PERF_COUNT, mean of {RUNS} inferences.\n\n{table}\n"
    title = "OpenVINO per-node profile, ShuffleNet V2 1x"
    written = write_record(RESULTS, "openvino_profile", title, body, rows, environment(["python", *sys.argv]))
    print(body)
    print(f"wrote {written['md']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
