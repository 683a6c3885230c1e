import json
import subprocess
import sys

import pytest

from shufflenet.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "models" in out and "profile" in out and "examples:" in out


@pytest.mark.parametrize("command", ["models", "profile"])
def test_subcommand_help(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "usage: shufflenet " + command in capsys.readouterr().out


def test_models_table_and_compare(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "shufflenet_v1_g3_x1_0" in out and "MFLOPs" in out
    code, out, _ = run(capsys, "models", "--compare", "shufflenet_v2_*")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("| shufflenet_v2_x1_0 "))
    assert "145.8" in row and "146" in row and "30.6" in row


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "mobilenet_v1_x1_0", "--format", "json")
    assert code == 0
    (card,) = json.loads(out)
    assert card["params"] == 4_231_976 and card["paper_mflops"] == 569


def test_profile_formats(capsys):
    code, out, _ = run(capsys, "profile", "shufflenet_v2_x0_5", "--format", "json", "--per-layer")
    document = json.loads(out)
    assert code == 0 and document["mflops"] == pytest.approx(40.5, abs=0.1) and document["layers"]
    code, out, _ = run(
        capsys, "profile", "mobilenet_v1_x1_0", "--input-size", "160", "160", "--format", "csv"
    )
    assert code == 0 and out.splitlines()[1].startswith("mobilenet_v1_x1_0,160x160,290.6")
    code, out, _ = run(capsys, "profile", "shufflenet_v1_g3_x1_0", "--set", "shuffle=false", "--per-layer")
    assert code == 0 and "ChannelShuffle" not in out and "| shufflenet_v1_g3_x1_0 | 224x224 |" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["profile", "shufflenet_v9"], "unknown model"),
        (["profile", "shufflenet_v2_x1_0", "--set", "layout"], "KEY=VALUE"),
        (["profile", "shufflenet_v2_x1_0", "--set", "groups=3"], "takes no argument groups"),
        (["profile", "mobilenet_v2_x1_0", "--input-size", "8", "8"], "total stride"),
        (["models", "zzz*"], "no model matches"),
    ],
)
def test_misuse_exits_2_with_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_console_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "shufflenet", "models", "shufflenet_v2_*"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "shufflenet_v2_x2_0" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "shufflenet", "profile", "nope"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "error" in result.stderr


@pytest.mark.slow
def test_export_cli_writes_and_verifies(tmp_path, capsys):
    out_file = tmp_path / "net.onnx"
    code, out, _ = run(
        capsys, "export", "shufflenet_v2_x0_5", "--format", "onnx", "--input-size", "64", "64",
        "--output", str(out_file),
    )  # fmt: skip
    assert code == 0 and out_file.exists()
    assert "max |exported - eager|" in out and out.rstrip().endswith("verified")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "no_such_thing.pt"], "neither a registered model nor an existing file"),
        (["export", "shufflenet_v2_x0_5", "--int8"], "--int8 needs calibration data"),
        (["export", "shufflenet_v2_x0_5", "--set", "groups=3"], "takes no argument groups"),
    ],
)
def test_export_cli_misuse_is_one_line_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_export_cli_rejects_calibration_data_of_another_shape(capsys, tmp_path):
    from conftest import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "fm")
    code, _, err = run(
        capsys, "export", "shufflenet_v2_x0_5", "--calib", "fashion-mnist",
        "--data-dir", str(tmp_path / "fm"), "--output", str(tmp_path / "x.onnx"),
    )  # fmt: skip
    assert code == 2 and "fashion-mnist images are (1, 28, 28)" in err
    assert not (tmp_path / "x.onnx").exists()


def test_bench_guidelines_cli(capsys, tmp_path):
    code, out, _ = run(
        capsys, "bench", "guidelines", "--experiments", "G2", "--multipliers", "1", "--repeats", "2",
        "--cpu-only", "--no-progress", "--output", str(tmp_path),
    )  # fmt: skip
    assert code == 0 and "G2" in out and "paper" in out
    assert json.loads((tmp_path / "guidelines.json").read_text())["rows"][0]["images_per_s"] > 0


def test_export_data_spreads_calibration_over_the_train_split_and_verifies_on_val(tmp_path):
    from conftest import write_fake_fashion_mnist
    from shufflenet.deploy.calibration import export_data

    write_fake_fashion_mnist(tmp_path / "fm", n_train=20, n_test=10)
    data = export_data("fashion-mnist", 1, data_dir=str(tmp_path / "fm"), calib_samples=5, accuracy_samples=9)
    assert data.input_size == (28, 28) and tuple(data.real_inputs.shape) == (8, 1, 28, 28)
    assert len(data.calibration) == 5 and data.calibration[0].shape == (1, 1, 28, 28)
    assert len(data.accuracy_data) == 9
    # More calibration images asked for than the split holds: every image once, no index error.
    every_image = export_data("fashion-mnist", 1, data_dir=str(tmp_path / "fm"), calib_samples=50)
    assert len(every_image.calibration) == 20
    with pytest.raises(ValueError, match="at 32x32"):
        export_data("fashion-mnist", 1, data_dir=str(tmp_path / "fm"), input_size=(32, 32))
