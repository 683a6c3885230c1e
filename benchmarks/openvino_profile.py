"""Where the time goes: OpenVINO's per-node profile of two graphs of the same kind of net, 224x224,
1 thread, summed per node type.

    python benchmarks/openvino_profile.py                  # torchvision's V2 1x vs our deploy graph
    python benchmarks/openvino_profile.py --compare fenet  # FE-Net (DW) vs FE-Net (SSL), deploy graphs
    python benchmarks/openvino_profile.py --compare fenet --batch 32

Writes benchmarks/results/openvino_profile.{md,csv,json} (v2) or
benchmarks/results/shift/openvino_profile_fenet[_b<batch>].{md,csv,json} (fenet); batch 1 is unsuffixed.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from shufflenet import create_model, load_torchvision_weights
from shufflenet._table import markdown_table
from shufflenet._testing import trained_looking
from shufflenet.bench.report import publish_record
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


def v2_graphs() -> dict[str, torch.nn.Module]:
    """torchvision's ShuffleNet V2 1x and our deploy graph of the same net with the same weights."""
    reference = torchvision.models.shufflenet_v2_x1_0().eval()
    ours = create_model("shufflenet_v2_x1_0", layout="torchvision")
    load_torchvision_weights(ours, reference.state_dict())
    return {"torchvision": reference, "deploy graph": optimize(ours.eval())}


def fenet_graphs() -> dict[str, torch.nn.Module]:
    """Deploy graphs of FE-Net 1.0x with depthwise 3x3 convs (Table 6's DW) and with SSL as initialised
    (grouped: 8 of 9 channels shifted, more than a trained SSL shifts) or with no channel shifted."""
    nets = (
        ("DW", "fenet_dw_x1_0", {}),
        ("SSL grouped", "fenet_x1_0", {}),
        ("SSL unshifted", "fenet_x1_0", {"ssl_init": "zero"}),
    )
    return {
        name: optimize(trained_looking(create_model(model, **kwargs), (224, 224), seed=0).eval())
        for name, model, kwargs in nets
    }


COMPARISONS = {
    "v2": (v2_graphs, "ShuffleNet V2 1x", RESULTS, "openvino_profile"),
    "fenet": (
        fenet_graphs,
        "FE-Net 1.0x, depthwise vs sparse shift",
        RESULTS / "shift",
        "openvino_profile_fenet",
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="v2")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    build, title, folder, stem = COMPARISONS[args.compare]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    example = torch.randn(args.batch, 3, 224, 224)
    with tempfile.TemporaryDirectory() as workdir:
        profiles = {
            name: node_profile(export_onnx(graph, Path(workdir) / f"{i}.onnx", example), example.numpy())
            for i, (name, graph) in enumerate(build().items())
        }
    names = list(profiles)
    first = names[0]
    keys = sorted({key for profile in profiles.values() for key in profile},
                  key=lambda key: -profiles[first].get(key, 0))  # fmt: skip
    rows = [
        {"node": node, "kernel": kernel, **{name: round(profile.get((node, kernel), 0.0), 3)
                                           for name, profile in profiles.items()}}
        for node, kernel in keys
    ]  # fmt: skip
    rows = [row for row in rows if any(row[name] for name in names)]
    totals = {name: sum(profile.values()) for name, profile in profiles.items()}

    def cells(row: dict) -> list[str]:
        return [
            text for name in names for text in (f"{row[name]:.3f}", f"{100 * row[name] / totals[name]:.1f}%")
        ]

    table = markdown_table(
        ["node type", "kernel", *[text for name in names for text in (f"{name} ms", "share")]],
        [[r["node"], r["kernel"], *cells(r)] for r in rows]
        + [["total", "", *[text for name in names for text in (f"{totals[name]:.3f}", "")]]],
    )
    ratios = "; ".join(f"{first} / {name} = {totals[first] / totals[name]:.2f}" for name in names[1:])
    body = (
        f"OpenVINO CPU plugin, PERF_COUNT, batch {args.batch}, mean of {RUNS} inferences; {ratios}.\n\n"
        f"{table}\n"
    )
    if args.batch != 1:
        stem, title = f"{stem}_b{args.batch}", f"{title}, batch {args.batch}"
    publish_record(folder, stem, f"OpenVINO per-node profile, {title}", body, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
