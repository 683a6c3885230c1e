"""`shufflenet reproduce`: the papers' tables as data, the claims' verdicts, and the runs behind them."""

import json
import math

import pytest

from shufflenet.cli import main
from shufflenet.registry import list_models
from shufflenet.train import reproduce
from shufflenet.train.paper_tables import (
    COCO_MAP,
    TABLES,
    Cell,
    Claim,
    Contrast,
    PaperTable,
    beats,
    larger_gain,
    matches,
)


@pytest.mark.parametrize("table", TABLES.values(), ids=list(TABLES))
def test_every_cell_is_a_registered_model_and_every_claim_reads_true_on_the_papers_figures(table):
    registered = set(list_models())
    keys = [cell.key for cell in table.cells]
    assert len(keys) == len(set(keys))
    assert {cell.model for cell in table.cells} <= registered
    paper = table.paper_losses()
    for claim in table.claims:
        for contrast in claim.contrasts:
            assert {key for key, _ in contrast.weights} <= set(keys)
            # The data transcribes the paper, whose own figures must bear out each of its claims.
            assert contrast.value(paper) > 0, (claim.text, contrast.name)


def test_the_tables_of_the_issues_are_there():
    assert list(TABLES) == [
        "shufflenet-t2",
        "shufflenet-t3",
        "shufflenet-t4",
        "shufflenet-t5",
        "shufflenet-t7",
        "shufflenetv2-t8",
        "shift-t1",
    ]
    assert len(TABLES["shufflenet-t2"].cells) == 15  # g in {1, 2, 3, 4, 8} x three widths
    assert len(TABLES["shufflenet-t3"].cells) == 12  # shuffle on/off x g in {3, 8} x three widths


def _result(key: str, errors: tuple[float, ...]) -> reproduce.CellResult:
    cell = Cell(key, key, "shufflenet_v1_g3_x0_25", "level", 50.0)
    return reproduce.CellResult(cell, errors, (), None, 13.0, None, None)


def _table(paper: dict[str, float], claim: Claim, **kwargs) -> PaperTable:
    cells = tuple(Cell(key, key, "shufflenet_v1_g3_x0_25", "level", err) for key, err in paper.items())
    return PaperTable("t", "title", "source", "setting", cells, (claim,), **kwargs)


def test_a_claim_is_clear_of_the_seed_noise_only_beyond_twice_its_standard_error():
    table = _table({"a": 40.0, "b": 42.0}, Claim("a beats b", "s", (beats("a", "b"),)))
    clear = reproduce.judge(table, [_result("a", (10.0, 10.2, 10.4)), _result("b", (12.0, 12.2, 12.4))])[0]
    assert clear.holds is True
    (contrast,) = clear.contrasts
    assert contrast.ours == pytest.approx(2.0)
    assert contrast.paper == pytest.approx(2.0)
    # The standard error of a difference of two 3-seed means, each seed spread 0.2.
    assert contrast.error == pytest.approx(math.sqrt(0.2**2 / 3 + 0.2**2 / 3))
    assert clear.sentence().startswith("**Holds**") and "clear of the seed noise" in clear.sentence()

    noisy = reproduce.judge(table, [_result("a", (10.0, 11.0, 12.0)), _result("b", (10.5, 11.5, 12.5))])[0]
    assert noisy.holds is True
    assert "+0.50 points (paper +2.0), standard error 0.82: within the seed noise" in noisy.sentence()

    reversed_ = reproduce.judge(table, [_result("a", (12.0, 12.1, 12.2)), _result("b", (10.0, 10.1, 10.2))])[
        0
    ]
    assert reversed_.holds is False
    assert reversed_.contrasts[0].ours == pytest.approx(-2.0)
    assert (
        reversed_.sentence().startswith("**Does not hold**")
        and "clear of the seed noise" in reversed_.sentence()
    )

    one_seed = reproduce.judge(table, [_result("a", (12.0,)), _result("b", (10.0,))])[0]
    assert one_seed.holds is False
    assert "-2.00 points (paper +2.0), one seed, no noise estimate" in one_seed.sentence()


def test_cells_that_trained_identically_are_named_as_such():
    """Chen et al. 2019's SSL at lambda 0 trains as the grouped shift until a displacement crosses a
    rounding boundary: equal errors seed for seed say so, rather than only "does not hold"."""
    table = _table({"a": 8.3, "b": 9.4}, Claim("a beats b", "s", (beats("a", "b"),)))
    same = reproduce.judge(table, [_result("a", (17.14, 16.76, 16.77)), _result("b", (17.14, 16.76, 16.77))])[
        0
    ]
    assert same.holds is False and same.contrasts[0].identical
    assert "In a vs b the two cells' figures are identical seed for seed" in same.sentence()
    close = reproduce.judge(
        table, [_result("a", (17.14, 16.76, 16.77)), _result("b", (17.14, 16.76, 16.78))]
    )[0]
    assert not close.contrasts[0].identical and "identical" not in close.sentence()


def test_a_claim_with_several_comparisons_needs_all_of_them_and_names_the_worst():
    claim = Claim("a beats b and c", "s", (beats("a", "b"), beats("a", "c")))
    table = _table({"a": 1.0, "b": 2.0, "c": 3.0}, claim)
    results = [_result("a", (5.0, 5.0)), _result("b", (6.0, 6.0)), _result("c", (4.5, 4.5))]
    verdict = reproduce.judge(table, results)[0]
    assert verdict.holds is False
    assert "1 of 2 comparisons agree; the worst, a vs c: -0.50 points" in verdict.sentence()
    # A comparison that already goes against the paper decides, even with another one unmeasured.
    against = reproduce.judge(table, [results[0], results[2]])[0]
    assert against.holds is False
    assert "0 of 1 comparisons agree (1 not measured)" in against.sentence()
    # One that goes the paper's way does not: the missing one could still go against it.
    missing = reproduce.judge(table, results[:2])[0]
    assert missing.holds is None
    assert (
        missing.sentence().startswith("**Not measured**")
        and "1 of 2 comparisons lack runs" in missing.sentence()
    )


def test_budgets_parse_and_name_their_folders():
    from shufflenet.cli.reproduce import _budget_images

    assert [_budget_images(text) for text in ("30000", "30k", "1.5M")] == [30_000, 30_000, 1_500_000]
    for bad in ("lots", "0", "-5k", "inf", "nan"):
        with pytest.raises(Exception, match="positive number of images"):
            _budget_images(bad)
    assert reproduce.Budget(images=30_000).tag == "30k"
    assert reproduce.Budget(images=1500).tag == "1500"
    assert reproduce.Budget(images=None, epochs=2).tag == "2ep"
    assert reproduce.Budget(images=1000).describe(128) == "1,000 training images per run (8 steps of 128)"
    with pytest.raises(ValueError, match="not both"):
        reproduce.Budget(images=1000, epochs=2)


def test_a_gain_contrast_compares_differences_of_differences():
    contrast = larger_gain(("small-g1", "small-g8"), ("large-g1", "large-g8"), "gain")
    errors = {"small-g1": 57.1, "small-g8": 52.7, "large-g1": 33.6, "large-g8": 32.4}
    assert contrast.value(errors) == pytest.approx(4.4 - 1.2)
    assert Contrast("x", (("a", 0.5), ("b", -0.5))).value({"a": 4.0, "b": 2.0}) == pytest.approx(1.0)


def test_runs_are_keyed_by_what_they_learn_so_tables_share_cells(tmp_path):
    budget = reproduce.Budget(images=1000)
    folder2, runs2 = reproduce.plan(
        TABLES["shufflenet-t2"],
        budget=budget,
        seeds=2,
        output=tmp_path,
        only=lambda cell: cell.key == "1x-g3",
    )
    folder3, runs3 = reproduce.plan(
        TABLES["shufflenet-t3"],
        budget=budget,
        seeds=2,
        output=tmp_path,
        only=lambda cell: cell.key.startswith("1x-g3"),
    )
    assert folder2 == folder3 == tmp_path / "fashion-mnist-1k"
    assert [run.run_dir for run in runs2] == [run.run_dir for run in runs3[:2]]
    assert runs3[2].run_dir.parent.name == "shufflenet_v1_g3_x1_0-shuffle_False"
    config = runs2[1].config
    assert (config.seed, config.iterations, config.cpu_processes) == (1, math.ceil(1000 / 128), 1)
    assert config.model_args == {"small_input": True}  # Fashion-MNIST's 28 px images
    changed, _ = reproduce.plan(
        TABLES["shufflenet-t2"], budget=budget, output=tmp_path, overrides={"lr": 0.1}
    )
    assert changed.name.startswith("fashion-mnist-1k-") and changed != folder2
    shift_run = reproduce.plan(TABLES["shift-t1"], budget=budget, seeds=1, output=tmp_path)[1][0]
    assert shift_run.config.shift_norm == "l2"  # the table's own settings: the shift paper's protocol
    assert (shift_run.config.optimizer, shift_run.config.lr, shift_run.config.momentum) == ("sgd", 0.1, 0.9)
    with pytest.raises(ValueError, match="no cell of shufflenet-t2"):
        reproduce.plan(TABLES["shufflenet-t2"], output=tmp_path, only=lambda cell: False)


def test_the_cli_lists_the_tables_and_refuses_misuse_in_one_line(capsys):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in TABLES)
    assert main(["reproduce", "shufflenet-t4", "--list"]) == 0
    assert "shufflenet_v1_peer_resnext_38m" in capsys.readouterr().out
    assert main(["reproduce"]) == 2
    assert "name a table" in capsys.readouterr().err
    assert main(["reproduce", "shufflenet-t2", "--only", "9x-*"]) == 2
    assert "matches no cell of shufflenet-t2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        main(["reproduce", "shufflenet-t2", "--budget", "lots"])
    assert error.value.code == 2


@pytest.mark.slow
def test_runs_train_in_parallel_processes_are_reused_and_the_report_is_written(tmp_path, capsys):
    from conftest import write_fake_fashion_mnist

    data = tmp_path / "fm"
    write_fake_fashion_mnist(data, n_train=64, n_test=20)
    argv = [
        "reproduce",
        "shufflenet-t2",
        "--only",
        "0.25x-g1",
        "0.25x-g8",
        "--seeds",
        "2",
        "--budget",
        "64",
        "--data-dir",
        str(data),
        "--output",
        str(tmp_path / "out"),
        "--set",
        "batch_size=32",
        "--set",
        "lr=0.01",
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr()
    folders = list((tmp_path / "out").iterdir())
    assert len(folders) == 1
    record = json.loads((folders[0] / "shufflenet-t2.json").read_text())
    cells = {cell["key"]: cell for cell in record["cells"]}
    assert set(cells) == {"0.25x-g1", "0.25x-g8"}
    assert all(len(cell["top1_err"]) == 2 and cell["failures"] == [] for cell in cells.values())
    at_quarter = {c["name"]: c for c in record["claims"][2]["contrasts"]}
    measured = at_quarter["0.25x-g8 vs 0.25x-g1"]
    errors = {key: sum(cell["top1_err"]) / 2 for key, cell in cells.items()}
    assert measured["ours"] == pytest.approx(errors["0.25x-g1"] - errors["0.25x-g8"])
    assert measured["paper"] == pytest.approx(57.1 - 52.7)
    assert at_quarter["0.25x-g2 vs 0.25x-g1"]["ours"] is None  # g = 2 was not trained
    assert record["claims"][2]["holds"] is (None if measured["ours"] > 0 else False)
    assert (folders[0] / "shufflenet-t2.png").stat().st_size > 0
    report = (folders[0] / "shufflenet-t2.md").read_text()
    assert "| ShuffleNet 0.25x (g = 8)" in report and "57.1" in report
    assert "0.25x-g8 seed 1: " in out.err
    # Again: every run is reused, nothing trains.
    assert main(argv) == 0
    assert "4 finished before (reused), 0 to resume, 0 to train" in capsys.readouterr().out
    # A run whose network is built differently now is not taken for the new one.
    run_dir = folders[0] / "shufflenet_v1_g8_x0_25" / "seed0"
    (run_dir / reproduce.ARCHITECTURE_NAME).write_text("0" * 16 + "\n")
    assert main(argv) == 2
    assert "built differently" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_the_runs_at_a_checkpoint_starts_no_other_and_the_next_call_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import write_fake_fashion_mnist

    data = tmp_path / "fm"
    write_fake_fashion_mnist(data, n_train=640, n_test=20)
    out = tmp_path / "out"
    # One run at a time for two runs: the second is still waiting when the signal comes.
    argv = [sys.executable, "-m", "shufflenet", "reproduce", "shufflenet-t2", "--only", "0.25x-g3",
            "--seeds", "2", "--jobs", "1", "--budget", "6400", "--data-dir", str(data), "--output", str(out),
            "--set", "batch_size=32", "--set", "lr=0.01", "--no-progress"]  # fmt: skip
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    first: list = []
    while time.monotonic() < deadline and not first:  # the run is training once its TensorBoard folder exists
        first = list(out.glob("*/shufflenet_v1_g3_x0_25/seed0/tensorboard"))
        time.sleep(0.5)
    assert first, parent.communicate()
    time.sleep(3)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 128 + signal.SIGTERM, err
    assert "run the same command again to resume" in err
    seed0 = first[0].parent
    assert (seed0 / "checkpoint.pt").is_file() and not (seed0 / "summary.json").exists()
    assert not (seed0.parent / "seed1").exists()  # never started
    # --overwrite retrains only runs of other settings: the interrupted one still resumes.
    finished = subprocess.run([*argv, "--overwrite"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "0 finished before (reused), 1 to resume, 1 to train" in finished.stdout
    for seed in ("seed0", "seed1"):
        summary = json.loads((seed0.parent / seed / "summary.json").read_text())
        assert summary["steps"] == math.ceil(6400 / 32)


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_command_exits_1(tmp_path, capsys):
    from conftest import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "fm", n_train=64, n_test=20)
    argv = ["reproduce", "shufflenet-t2", "--only", "0.25x-g1", "--seeds", "1", "--budget", "640",
            "--data-dir", str(tmp_path / "fm"), "--output", str(tmp_path / "out"), "--set", "batch_size=32",
            "--set", "lr=1e6", "--set", "warmup_epochs=0", "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "0.25x-g1 seed 0: failed: TrainingDiverged" in err
    report = next((tmp_path / "out").glob("*/shufflenet-t2.md")).read_text()
    assert "## Failed runs" in report and "TrainingDiverged" in report


def test_a_higher_is_better_metric_turns_the_comparisons_and_a_tolerance_is_added():
    """mAP: "a beats b" is mAP(a) - mAP(b); "a matches b within 1" is mAP(a) - mAP(b) + 1."""
    claim = Claim("a beats b, c matches b", "s", (beats("a", "b"), matches("c", "b", 1.0)))
    table = _table({"a": 18.7, "b": 14.9, "c": 14.5}, claim, metric=COCO_MAP)
    paper = table.paper_losses()
    assert [contrast.value(paper) for contrast in claim.contrasts] == pytest.approx([3.8, 0.6])
    cells = {cell.key: cell for cell in table.cells}
    values = {"a": (30.0, 31.0), "b": (25.0, 26.0), "c": (26.0, 26.2)}
    # Listed in neither the paper's order nor ours: the orderings must sort, the higher mAP first.
    results = [reproduce.CellResult(cells[k], values[k], (), None, 13.0, None, None) for k in "cba"]
    (verdict,) = reproduce.judge(table, results)
    assert [c.ours for c in verdict.contrasts] == pytest.approx([5.0, 26.1 - 25.5 + 1.0])
    assert verdict.holds is True
    assert reproduce._orderings(results, COCO_MAP) == [["level", "a > b > c", "a > c > b"]]
    results[0] = reproduce.CellResult(cells["c"], (24.0, 24.2), (), None, 13.0, None, None)
    behind = reproduce.judge(table, results)[0]
    assert behind.contrasts[1].ours == pytest.approx(24.1 - 25.5 + 1.0) and behind.holds is False


def test_table7_plans_detection_runs_at_the_papers_resolutions_scaled_to_the_data(tmp_path):
    from shufflenet.detect.reproduce import DETECTION
    from shufflenet.detect.train import DetectConfig

    table = TABLES["shufflenet-t7"]
    folder, runs = reproduce.plan(table, task=DETECTION, seeds=1, output=tmp_path)
    assert folder == tmp_path / "fashion-detect-6ep"  # the quick detection recipe's 6 epochs
    assert all(isinstance(run.config, DetectConfig) for run in runs)
    sizes = {run.cell: (run.config.min_size, run.config.max_size) for run in runs}
    # COCO's 480-px shorter side -> the offline set's 128-px canvases: 300 -> 80, 600 -> 160.
    assert sizes["300-mobilenet"] == (80, 80) and sizes["600-shufflenet-2x"] == (160, 160)
    assert len({run.run_dir for run in runs}) == 6  # one model at two resolutions: two folders
    assert {run.config.model for run in runs} == {
        "shufflenet_v1_g3_x2_0",
        "shufflenet_v1_g3_x1_0",
        "mobilenet_v1_x1_0",
    }
    _, coco = reproduce.plan(table, task=DETECTION, dataset="coco", data_dir="/data/coco", output=tmp_path)
    assert {(r.config.min_size, r.config.max_size) for r in coco} == {(300, 500), (600, 1000)}
    overridden = reproduce.plan(table, task=DETECTION, seeds=1, output=tmp_path, overrides={"min_size": 64})
    # The user's setting wins, for both sides: the offline canvases are square.
    assert {(r.config.min_size, r.config.max_size) for r in overridden[1]} == {(64, 64)}
    _, on_coco = reproduce.plan(
        table, task=DETECTION, dataset="coco", output=tmp_path, overrides={"min_size": 450}
    )
    assert {(r.config.min_size, r.config.max_size) for r in on_coco} == {(450, 750)}
    with pytest.raises(ValueError, match="trains on one of fashion-detect, coco"):
        reproduce.plan(table, task=DETECTION, dataset="fashion-mnist", output=tmp_path)


def test_table7_refuses_a_classification_dataset_in_one_line(capsys):
    assert main(["reproduce", "shufflenet-t7", "--dataset", "cifar10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "shufflenet-t7 trains on --dataset fashion-detect or coco, not 'cifar10'" in err
    assert len(err.splitlines()) == 1
    assert main(["reproduce", "shufflenet-t2", "--dataset", "coco"]) == 2
    assert "not 'coco'" in capsys.readouterr().err
    assert main(["reproduce", "shufflenet-t7", "--dataset", "coco"]) == 2
    assert "--dataset coco needs --data-dir DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_table7_trains_detectors_and_judges_the_claims_on_map(tmp_path, capsys):
    from shufflenet.detect.synthetic import make_fashion_detection
    from test_detect import SPEC, _fashion_items

    data = make_fashion_detection(
        tmp_path / "set", data_dir=_fashion_items(tmp_path / "fm"), train_images=8, val_images=4, spec=SPEC
    )
    argv = ["reproduce", "shufflenet-t7", "--dataset", "coco", "--data-dir", str(data), "--only",
            "300-shufflenet-1x", "300-mobilenet", "--seeds", "1", "--budget", "8", "--set", "batch_size=4",
            "--set", "min_size=64", "--output", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    (folder,) = (tmp_path / "out").iterdir()
    record = json.loads((folder / "shufflenet-t7.json").read_text())
    cells = {cell["key"]: cell for cell in record["cells"]}
    assert set(cells) == {"300-shufflenet-1x", "300-mobilenet"}
    assert all(len(cell["AP"]) == 1 and 0 <= cell["AP"][0] <= 100 for cell in cells.values())
    assert all(cell["mflops_here"] > 0 for cell in cells.values())  # the backbones at the run's size
    summary = json.loads((folder / "mobilenet_v1_x1_0-min_size_300" / "seed0" / "summary.json").read_text())
    assert (summary["min_size"], summary["detector"]) == (64, "fasterrcnn")  # the user's size
    behind = record["claims"][2]["contrasts"][0]  # at 300, MobileNet ahead of ShuffleNet 1x
    ap = {key: cell["AP"][0] for key, cell in cells.items()}
    assert behind["ours"] == pytest.approx(ap["300-mobilenet"] - ap["300-shufflenet-1x"])
    assert behind["paper"] == pytest.approx(14.9 - 14.5)
    assert record["claims"][1]["holds"] is None  # the 600 cells were not trained
    report = (folder / "shufflenet-t7.md").read_text()
    assert "paper mAP %" in report and "shorter/longer sides 64/107" in report  # COCO's 5:3 cap
    assert "300-mobilenet seed 0: mAP " in out.err
