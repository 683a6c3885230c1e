"""The ncnn_int8 cell: ncnn's own quantization tools (ncnn2table, ncnn2int8), found, fed and run. Only the
last test runs the real tools, and skips where they are not built (benchmarks/build_ncnn_quantize_tools.sh;
CI does not build them)."""

import os
import warnings

import numpy as np
import pytest
import torch

from shufflenet import create_model
from shufflenet.bench.latency import LatencyCell, peer_ratios
from shufflenet.deploy import peers
from shufflenet.deploy.errors import RuntimeUnavailable
from shufflenet.deploy.runtimes import INT8_RUNTIMES, RUNTIMES, build_runner


def _fake_tools(folder, script="exit 0"):
    folder.mkdir(parents=True, exist_ok=True)
    for name in peers.NCNN_QUANTIZE_TOOLS:
        tool = folder / name
        tool.write_text(f"#!/bin/sh\n{script}\n")
        tool.chmod(0o755)
    return folder


def test_missing_tools_are_one_line_naming_the_build_script(tmp_path, monkeypatch):
    monkeypatch.delenv(peers.NCNN_TOOLS_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(peers, "DEFAULT_NCNN_TOOLS", tmp_path / "none")
    with pytest.raises(RuntimeUnavailable, match=r"build_ncnn_quantize_tools\.sh") as error:
        peers.find_ncnn_quantize_tools()
    assert "\n" not in str(error.value) and "ncnn2table, ncnn2int8" in str(error.value)
    monkeypatch.setenv(peers.NCNN_TOOLS_ENV, str(tmp_path / "none"))
    with pytest.raises(RuntimeUnavailable, match=r"\$NCNN_TOOLS"):
        peers.find_ncnn_quantize_tools()


def test_tools_are_found_in_ncnn_tools_then_path_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "DEFAULT_NCNN_TOOLS", tmp_path / "default")
    _fake_tools(tmp_path / "default" / "bin")
    monkeypatch.delenv(peers.NCNN_TOOLS_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert peers.find_ncnn_quantize_tools()["ncnn2int8"] == tmp_path / "default" / "bin" / "ncnn2int8"
    _fake_tools(tmp_path / "on-path")
    monkeypatch.setenv("PATH", str(tmp_path / "on-path"))
    assert peers.find_ncnn_quantize_tools()["ncnn2table"] == tmp_path / "on-path" / "ncnn2table"
    _fake_tools(tmp_path / "chosen" / "bin")
    monkeypatch.setenv(peers.NCNN_TOOLS_ENV, str(tmp_path / "chosen"))
    assert peers.find_ncnn_quantize_tools()["ncnn2table"] == tmp_path / "chosen" / "bin" / "ncnn2table"


def test_calibration_is_the_exact_float_input_and_the_command_reads_it_as_npy(tmp_path):
    batches = [
        np.random.default_rng(seed).standard_normal((2, 3, 8, 5)).astype(np.float32) for seed in (0, 1)
    ]
    listing, shape = peers.write_ncnn_calibration(batches, tmp_path)
    names = (tmp_path / listing).read_text().split()
    assert shape == (3, 8, 5) and len(names) == 4 and not any(os.path.isabs(name) for name in names)
    for name, image in zip(names, [image for batch in batches for image in batch], strict=True):
        assert "," not in name and np.array_equal(np.load(tmp_path / name), image)
    command = peers.ncnn2table_command("t", "m.param", "m.bin", listing, "m.table", shape, threads=2)
    assert command[1:5] == ["m.param", "m.bin", listing, "m.table"]
    assert set(command[5:]) == {"shape=[5,8,3]", "thread=2", "method=kl", "type=1"}  # ncnn's [w,h,c]
    with pytest.raises(ValueError, match="method"):
        peers.ncnn2table_command("t", "a", "b", "c", "d", shape, method="minmax")


def test_grouped_convolutions_are_kept_float_in_the_table(tmp_path):
    param = tmp_path / "m.param"
    param.write_text(
        "7767517\n4 4\n"
        "Input in0 0 1 in0\n"
        "ConvolutionDepthWise dw 1 1 in0 1 0=24 1=3 11=3 6=216 7=24\n"
        "ConvolutionDepthWise grouped 1 1 1 2 0=60 1=1 6=480 7=3\n"
        "Convolution dense 1 1 2 out0 0=10 1=1 6=600 -23310=1,0.1\n"
    )
    assert peers.grouped_convolutions(param) == ["grouped"]
    table = tmp_path / "m.table"
    table.write_text("dw_param_0 1 2\ngrouped_param_0 3 4 5\ngrouped_x 6\ndw 7\ngrouped 8\n")
    peers.keep_float(table, ["grouped"])
    assert table.read_text() == "dw_param_0 1 2\n#grouped_param_0 3 4 5\ngrouped_x 6\ndw 7\n#grouped 8\n"


def test_a_failing_tool_is_an_unavailable_runtime_with_its_message(tmp_path):
    tool = _fake_tools(tmp_path / "bin", script="echo 'fopen list.txt failed' >&2; exit 3") / "ncnn2table"
    with pytest.raises(RuntimeUnavailable, match=r"ncnn2table failed \(exit 3\): fopen list.txt failed"):
        peers._run_tool([str(tool)], tmp_path, tmp_path / "out.table")
    silent = _fake_tools(tmp_path / "silent") / "ncnn2int8"  # exits 0 but writes nothing
    with pytest.raises(RuntimeUnavailable, match="ncnn2int8 failed"):
        peers._run_tool([str(silent)], tmp_path, tmp_path / "out.bin")


def test_ncnn_int8_is_an_int8_peer_cell():
    assert "ncnn_int8" in RUNTIMES and "ncnn_int8" in INT8_RUNTIMES
    times = {"ort": 3.0, "engine": 2.0, "ort_int8": 2.5, "ncnn_int8": 1.5, "engine_int8": 1.0}
    cells = [LatencyCell("m", 224, 224, 1, runtime, median_ms=ms) for runtime, ms in times.items()]
    ((what, value, _),) = [row for row in peer_ratios(cells) if "int8" in row[0]]
    assert "fastest peer at any precision (ncnn_int8)" in what and value == pytest.approx(1.0 / 1.5)


def test_ncnn_int8_cell_runs_ncnns_tools(tmp_path):
    """The real tools: a ShuffleNet V1 (its grouped 1x1s stay fp32), int8 logits of the right shape."""
    try:
        peers.find_ncnn_quantize_tools()
    except RuntimeUnavailable as error:
        pytest.skip(str(error))
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=10, small_input=True).eval()
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = build_runner("ncnn_int8", model, example, threads=1, workdir=tmp_path)
    except RuntimeUnavailable as error:
        pytest.skip(f"ncnn or pnnx is not installed here: {error}")
    out = run(np.concatenate([example.numpy()] * 2))
    assert out.shape == (2, 10) and np.isfinite(out).all() and np.array_equal(out[0], out[1])
    layers = (tmp_path / "ncnn-int8.param").read_text().splitlines()
    grouped = peers.grouped_convolutions(tmp_path / "ncnn-fp32.ncnn.param")
    int8_layers = {line.split()[1] for line in layers[2:] if " 8=" in line}  # 8=: int8_scale_term
    assert grouped and int8_layers and not int8_layers & set(grouped)
