import dataclasses
import json
import sys
import time

import numpy as np
import pytest

from shufflenet.bench.latency import (
    LatencyCell,
    exportable_pooling,
    headline_ratios,
    latency_benchmark,
    latency_plot,
    latency_table,
    measure_paired,
    paper_arm_ms,
    parse_model_spec,
    skip_reason,
    speed_claims,
)
from shufflenet.bench.report import save_record, script_command, write_latency_results
from shufflenet.cli import main


def test_parse_model_spec():
    assert parse_model_spec("shufflenet_v2_x1_0") == ("shufflenet_v2_x1_0", {})
    assert parse_model_spec("shufflenet_v1_g3_x1_0[shuffle=false,scale=0.5]") == (
        "shufflenet_v1_g3_x1_0",
        {"shuffle": False, "scale": 0.5},
    )
    assert parse_model_spec("x[layout=torchvision]")[1] == {"layout": "torchvision"}
    with pytest.raises(ValueError, match="key=value"):
        parse_model_spec("x[shuffle]")


def test_paper_arm_figures():
    assert paper_arm_ms("shufflenet_v1_g3_x1_0", (480, 640)) == 222.2
    assert paper_arm_ms("torchvision:alexnet", (224, 224)) == 184.0
    assert paper_arm_ms("shufflenet_v2_x1_0[layout=torchvision]", (224, 224)) == pytest.approx(1000 / 24.4)
    assert paper_arm_ms("mobilenet_v2_x1_0", (480, 640)) is None
    assert paper_arm_ms("shufflenet_v1_g3_x1_0[se=true]", (224, 224)) is None  # Table 8 has no SE nets


def _cell(model, runtime, ms, threads=1):
    return LatencyCell(model, 224, 224, threads, runtime, median_ms=ms, p90_ms=ms * 1.1, mflops=100.0)


def test_headline_ratios_use_the_faster_runtime_and_the_right_rows():
    cells = [
        _cell("torchvision:shufflenet_v2_x1_0", "ort", 5.0),
        _cell("torchvision:shufflenet_v2_x1_0", "openvino", 4.0),
        _cell("torchvision:shufflenet_v2_x1_0", "eager", 15.0),
        _cell("shufflenet_v2_x1_0[layout=torchvision]", "ours", 3.0),
        _cell("shufflenet_v2_x1_0[layout=torchvision]", "eager_cl", 9.0),
        _cell("shufflenet_v2_x1_0[layout=torchvision]", "eager_deploy", 6.0),
        _cell("shufflenet_v2_x1_0[layout=torchvision]", "ours", 99.0, threads=2),  # other thread count
    ]
    ratios = {what: value for what, value, _ in headline_ratios(cells)}
    v2 = next(value for what, value in ratios.items() if what.startswith("V2 1x"))
    assert v2 == pytest.approx(3.0 / 4.0)
    deploy = next(value for what, value in ratios.items() if "deploy graph in eager" in what)
    trainable = next(value for what, value in ratios.items() if "trainable model in eager" in what)
    assert deploy == pytest.approx(15.0 / 6.0) and trainable == pytest.approx(15.0 / 9.0)
    assert not any(what.startswith("V1 g3 1x: ours") for what in ratios)  # rows not measured are left out


def test_engine_cells_only_for_the_families_it_runs():
    assert skip_reason("shufflenet_v1_g3_x1_0", "engine") is None
    assert skip_reason("shufflenet_v2_x1_0[layout=torchvision]", "engine") is None
    assert skip_reason("shufflenet_v1_g3_x1_0", "engine") is None  # at any thread count
    assert skip_reason("mobilenet_v2_x1_0", "engine") is None and skip_reason("fenet_x1_0", "engine") is None
    assert (
        skip_reason("fenet_x1_375_se", "engine") is None
        and skip_reason("fenet_x1_0[se=true]", "engine") is None
    )
    assert skip_reason("shufflenet_v1_peer_resnet_38m", "engine") is None  # dense 3x3 convs too
    assert skip_reason("shufflenet_v1_g3_x1_0[se=true]", "engine") is None
    assert skip_reason("torchvision:alexnet", "engine")
    assert skip_reason("torchvision:alexnet", "ours") and skip_reason("torchvision:alexnet", "ort") is None
    assert skip_reason("torchvision:shufflenet_v2_x1_0", "eager_deploy")
    assert skip_reason("shufflenet_v2_x0_5", "eager_deploy") is None


def test_headline_shuffle_cost_per_backend():
    cells = [
        _cell("shufflenet_v1_g3_x1_0", "engine", 10.2),
        _cell("shufflenet_v1_g3_x1_0[shuffle=false]", "engine", 10.0),
        _cell("shufflenet_v1_g3_x1_0", "ours", 9.0),  # no shuffle=False cell on ours: no row
    ]
    ratios = {what: value for what, value, _ in headline_ratios(cells)}
    assert ratios == {"V1 g3 1x, engine: with shuffle / shuffle=False (shuffle cost)": pytest.approx(1.02)}


def test_headline_ratios_compare_fenet_with_its_depthwise_twin():
    cells = [
        _cell("fenet_dw_x1_0", "ours", 14.0),
        _cell("fenet_x1_0", "ours", 10.0),
        _cell("fenet_x1_0[ssl_init=zero]", "ours", 7.0),
        _cell("fenet_x1_0", "openvino", 12.0),  # no DW cell on openvino: no row
    ]
    ratios = {what: value for what, value, _ in headline_ratios(cells)}
    assert ratios == {
        "FE-Net x1_0 (DW) / FE-Net x1_0 (SSL, grouped init), both on ours (Table 6)": pytest.approx(1.4),
        "FE-Net x1_0 (DW) / FE-Net x1_0 (SSL, no shifts), both on ours (Table 6)": pytest.approx(2.0),
    }


@pytest.mark.slow
def test_one_real_cell_in_a_subprocess_and_an_error_cell():
    cells = latency_benchmark(
        ["shufflenet_v2_x0_5", "no_such_model"],
        sizes=[(64, 64)],
        runtimes=["eager", "ort"],
        warmup=1,
        repeats=3,
        progress=False,
    )
    good = [c for c in cells if c.model == "shufflenet_v2_x0_5"]
    assert len(good) == 2
    assert all(c.error is None and c.median_ms > 0 and c.p90_ms >= c.median_ms for c in good)
    assert all(c.mflops == pytest.approx(good[0].mflops) for c in good) and good[0].mflops > 0
    bad = [c for c in cells if c.model == "no_such_model"]
    assert bad and all("unknown model" in c.error for c in bad)
    table = latency_table(cells)
    assert "eager ms" in table and "error" in table


@pytest.mark.slow
def test_plot_and_cli_output_files(tmp_path, capsys):
    cells = [_cell("shufflenet_v1_g3_x1_0", "openvino", 4.0), _cell("torchvision:alexnet", "openvino", 30.0)]
    png = latency_plot(cells, tmp_path / "latency.png")
    assert png.stat().st_size > 10_000
    code = main(
        [
            "bench", "latency", "--models", "shufflenet_v2_x0_5", "--sizes", "64x64", "--runtimes", "eager",
            "--repeats", "2", "--no-progress", "--output", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "| shufflenet_v2_x0_5 | 64x64 |" in out
    record = json.loads((tmp_path / "out" / "latency.json").read_text())
    assert record["cpu"] and record["versions"]["torch"] and record["rows"][0]["median_ms"] > 0
    assert "bench latency" in (tmp_path / "out" / "latency.md").read_text()
    assert (tmp_path / "out" / "latency.png").exists()


def test_bench_latency_rejects_bad_sizes(capsys):
    assert main(["bench", "latency", "--sizes", "224", "--no-progress"]) == 2
    assert "HxW" in capsys.readouterr().err


def test_rounds_take_the_median_of_each_cells_runs(monkeypatch):
    import shufflenet.bench.latency as latency

    timings = iter([5.0, 1.0, 3.0, 9.0, 7.0, 8.0])  # round 1: a, b; then b, a or a, b; ...

    def fake(cell, timeout=900):
        value = next(timings)
        return dataclasses.replace(cell, median_ms=value, p90_ms=value + 1, mflops=1.0)

    monkeypatch.setattr(latency, "run_cell_subprocess", fake)
    cells = latency_benchmark(["a", "b"], runtimes=["eager"], rounds=3, progress=False)
    assert len(cells) == 2
    assert sorted(len(c.extra["rounds"]) for c in cells) == [3, 3]
    for cell in cells:
        assert cell.median_ms == sorted(cell.extra["rounds"])[1]
        assert cell.p90_ms == cell.median_ms + 1


def test_deploy_path_picks_the_fastest_backend_in_interleaved_passes():
    from shufflenet.deploy.runtimes import fastest

    calls = {"slow": 0, "quick": 0}

    def runner(name, seconds):
        def run(batch):
            calls[name] += 1
            time.sleep(seconds)

        return run

    runners = {"slow": runner("slow", 0.004), "quick": runner("quick", 0.0005)}
    assert fastest(runners, np.zeros(1), passes=5) == "quick"
    assert calls == {"slow": 8, "quick": 8}  # 3 warm-up calls each, then one call per pass each
    assert fastest({"only": runner("slow", 0.0)}, np.zeros(1)) == "only"


def test_interleaved_passes_rewarm_each_call_right_before_timing_it():
    """With rewarm, the untimed call sits directly before its timed one (nothing in between evicts its
    weights), and only the timed calls make samples; each pass still visits every call once."""
    from shufflenet.deploy.runtimes import interleaved_seconds

    log: list[str] = []
    calls = [lambda name=name: log.append(name) for name in "abc"]
    times = interleaved_seconds(calls, passes=4, warmup=2, rewarm=1)
    assert [len(samples) for samples in times] == [4, 4, 4]
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up
    timed = log[6:]
    assert len(timed) == 4 * 3 * 2
    pairs = [timed[i : i + 2] for i in range(0, len(timed), 2)]
    assert all(first == second for first, second in pairs)
    for start in range(0, len(pairs), 3):  # one visit per call per pass
        assert sorted(pair[0] for pair in pairs[start : start + 3]) == ["a", "b", "c"]


def test_interleaved_passes_rewarm_for_a_duration_in_runs_of_the_same_call():
    """With rewarm_seconds, each timed call follows a run of its own untimed calls lasting at least that
    long (another runtime's spinning threads give up meanwhile), never another call's."""
    import time

    from shufflenet.deploy.runtimes import interleaved_seconds

    log: list[tuple[str, float]] = []

    def call(name: str) -> None:
        log.append((name, time.perf_counter()))
        time.sleep(0.002)

    calls = [lambda name=name: call(name) for name in "ab"]
    interleaved_seconds(calls, passes=3, warmup=0, rewarm=1, rewarm_seconds=0.02)
    runs: list[list[tuple[str, float]]] = []
    for name, at in log:
        if runs and runs[-1][0][0] == name:
            runs[-1].append((name, at))
        else:
            runs.append([(name, at)])
    assert len(runs) >= 5  # a and b alternate within and across passes (one may meet itself at a pass edge)
    for run in runs:
        # The last call of a run is the timed one; the untimed ones before it spanned >= 20 ms.
        assert run[-1][1] - run[0][1] >= 0.02
        assert 3 <= len(run) <= 40


def test_quiet_passes_time_no_call_while_a_thread_left_behind_still_spins():
    """With quiet, a cell waits until the threads another cell left spinning after its call returned have
    stopped (however long they spin), and only then calls; without it, the next call meets them."""
    import threading
    import time

    from shufflenet.deploy.timing import interleaved_seconds

    def run(quiet: bool) -> list[bool]:
        spinning = threading.Event()
        spinners: list[threading.Thread] = []
        seen: list[bool] = []

        def spin() -> None:
            end = time.perf_counter() + 0.06
            while time.perf_counter() < end:
                pass
            spinning.clear()

        def leaves_a_spinner() -> None:
            spinning.set()
            spinners.append(threading.Thread(target=spin))
            spinners[-1].start()

        interleaved_seconds(
            [leaves_a_spinner, lambda: seen.append(spinning.is_set())], passes=4, warmup=0, quiet=quiet
        )
        for spinner in spinners:
            spinner.join()
        return seen

    assert run(quiet=True) == [False] * 4
    assert any(run(quiet=False))  # the check itself can see a spinner


def test_waiting_until_quiet_returns_at_once_when_nothing_spins():
    from shufflenet.deploy.timing import wait_until_quiet

    assert wait_until_quiet() < 0.5


def test_latency_record_states_each_ratio_with_how_to_read_it(tmp_path):
    cells = [
        _cell("shufflenet_v1_g3_x0_5", "openvino", 2.0),
        _cell("torchvision:alexnet", "openvino", 30.0),
    ]
    ratios = headline_ratios(cells)
    written = write_latency_results(cells, latency_table(cells), ratios, tmp_path, command=["shufflenet"])
    text = written["md"].read_text()
    assert "- AlexNet / V1 0.5x g3, both on openvino (speedup): **15.00** (Zhang et al. 2018" in text
    assert "target" not in text


def test_a_scripts_record_names_the_arguments_it_ran_with(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["benchmarks/engine_ab.py", "HEAD", "--rounds", "9"])
    assert script_command() == ["benchmarks/engine_ab.py", "HEAD", "--rounds", "9"]
    # main(argv) called from Python: its own arguments, not the interpreter's
    assert script_command(["0ce589c", "HEAD"]) == ["benchmarks/engine_ab.py", "0ce589c", "HEAD"]
    rows = [{"ms": 1.5}]
    written = save_record(tmp_path / "run", "engine_ab", "Builds", "body text", rows, ["0ce589c", "HEAD"])
    markdown = written["md"].read_text()
    assert "- command: `benchmarks/engine_ab.py 0ce589c HEAD`" in markdown and "body text" in markdown
    assert written["csv"].read_text().splitlines() == ["ms", "1.5"]
    assert capsys.readouterr().out == f"wrote {written['md']}\n"


def test_speed_claims_are_ratios_per_size_and_runtime_beside_the_papers():
    def cell(model, runtime, ms, size=(224, 224), mflops=100.0):
        return LatencyCell(model, *size, 1, runtime, median_ms=ms, p90_ms=ms, mflops=mflops)

    big = (480, 640)
    cells = [
        cell("shufflenet_v1_g3_x0_5", "openvino", 2.0, mflops=38.0),
        cell("shufflenet_v1_g3_x1_0", "openvino", 5.0, mflops=140.0),
        cell("shufflenet_v1_g3_x2_0", "openvino", 15.0, mflops=524.0),
        cell("shufflenet_v1_g3_x1_0[se=true]", "openvino", 7.0),
        cell("shufflenet_v1_g8_x1_0", "openvino", 6.0),
        cell("torchvision:alexnet", "openvino", 30.0),
        cell("shufflenet_v1_g3_x0_5", "openvino", 10.0, size=big),
        cell("torchvision:alexnet", "openvino", 130.0, size=big),
        cell("shufflenet_v1_g3_x1_0", "engine", 4.0),
    ]
    claims = {what: (value, paper) for what, value, paper in speed_claims(cells)}
    width, paper = claims["V1 g3 1x / V1 g3 0.5x time, openvino, 224x224 (3.7x the MFLOPs)"]
    assert width == pytest.approx(2.5) and "2.6 per 4x" in paper and "2.49" in paper  # 37.8 / 15.2 on ARM
    assert claims["V1 g3 2x / V1 g3 1x time, openvino, 224x224 (3.7x the MFLOPs)"][0] == pytest.approx(3.0)
    assert claims["V1 g3 1x SE / without SE time, openvino, 224x224"][0] == pytest.approx(1.4)
    assert claims["V1 g8 1x / V1 g3 1x time, openvino, 224x224"][0] == pytest.approx(1.2)
    alexnet, paper = claims["AlexNet / V1 g3 0.5x time, openvino, 480x640 (speedup)"]
    assert alexnet == pytest.approx(13.0) and "13.23" in paper  # 1156.7 / 87.4
    assert claims["AlexNet / V1 g3 0.5x time, openvino, 224x224 (speedup)"][0] == pytest.approx(15.0)
    assert not any("engine" in what for what in claims)  # one cell alone makes no ratio
    assert not any("g4" in what or "MobileNet" in what for what in claims)  # not measured, left out


def test_paired_cells_are_timed_in_one_process_in_turn():
    cells = measure_paired(
        [
            "shufflenet_v1_g3_x0_5[num_classes=10,small_input=true]",
            "torchvision:shufflenet_v2_x0_5",
        ],
        size=(32, 32),
        runtimes=["eager", "engine"],
        passes=3,
        warmup=1,
        progress=False,
    )
    # The engine cell of torchvision's net is skipped (the engine runs this library's models).
    assert [(cell.model.split("_")[0], cell.runtime) for cell in cells] == [
        ("shufflenet", "eager"),
        ("shufflenet", "engine"),
        ("torchvision:shufflenet", "eager"),
    ]
    assert all(cell.median_ms > 0 and cell.p90_ms >= cell.median_ms and cell.repeats == 3 for cell in cells)
    assert cells[0].mflops != cells[2].mflops and cells[0].mflops == cells[1].mflops  # counted per spec


def test_adaptive_pools_that_onnx_cannot_express_become_fixed_pools_of_the_same_shape():
    import torch
    from torch import nn

    def net():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=8), nn.AdaptiveAvgPool2d((6, 6)), nn.AdaptiveAvgPool2d(1)
        )

    fixed = exportable_pooling(net(), (107, 139))  # 14x18 features: 14 is not a multiple of 6
    assert isinstance(fixed[1], nn.AvgPool2d) and isinstance(fixed[2], nn.AdaptiveAvgPool2d)  # global stays
    assert fixed[:2](torch.zeros(1, 3, 107, 139)).shape[-2:] == (6, 6)
    kept = exportable_pooling(net(), (91, 91))  # 12x12 features: the adaptive pool is a plain one already
    assert isinstance(kept[1], nn.AdaptiveAvgPool2d)
