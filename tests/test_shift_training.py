"""The shift loss, shift freezing and the shift ablation commands (Chen et al. 2019, Tables 1-3), on data the
tests write."""

import json

import pytest
import torch

from conftest import write_fake_fashion_mnist
from shufflenet import create_model
from shufflenet.cli import main
from shufflenet.ops import ShiftSparsityRow, SparseShift, shift_layers
from shufflenet.train.checkpoint import load_exported
from shufflenet.train.config import load_config, parse_overrides
from shufflenet.train.engine import parameter_groups, train
from shufflenet.train.shift_experiments import (
    lambda_sweep,
    least_important_shift_layers,
    removal_study,
    removal_table,
    sweep_table,
)

TINY_SHIFT = [
    "model=shiftresnet20_ssl",
    "model_args.expansion=1",
    "batch_size=16",
    "epochs=2",
    "train_subset=null",
    "lr=0.05",
    "lr_base_batch=null",  # 0.05 at batch 16 itself, not scaled down from the recipe's batch 128
    "warmup_epochs=0",
    "progress=false",
    "download=false",
    "deterministic=true",
    "eval_every=1",
]


@pytest.fixture
def fashion_dir(tmp_path):
    directory = tmp_path / "fashion"
    write_fake_fashion_mnist(directory, n_train=96, n_test=32)
    return directory


def shift_config(fashion_dir, output, *extra):
    overrides = parse_overrides([*TINY_SHIFT, f"data_dir={fashion_dir}", f"output={output}", *extra])
    return load_config("fashion-mnist-shift", overrides)


def displacements(model) -> torch.Tensor:
    return torch.cat(
        [torch.cat([m.alpha, m.beta]) for _, m in shift_layers(model) if isinstance(m, SparseShift)]
    )


def test_shift_parameters_get_their_own_group_without_weight_decay():
    model = create_model("shiftresnet20_ssl", num_classes=10, expansion=1)
    groups = parameter_groups(model, 5e-4, decay_bn_and_bias=True)
    assert len(groups) == 3 and groups[2]["weight_decay"] == 0.0
    assert {id(p) for p in groups[2]["params"]} == {
        id(p) for _, m in shift_layers(model) for p in m.parameters()
    }


@pytest.mark.slow
def test_shift_loss_raises_sparsity_and_freezing_keeps_displacements(fashion_dir, tmp_path):
    plain = train(shift_config(fashion_dir, tmp_path / "plain", "shift_lambda=0"))
    sparse = train(shift_config(fashion_dir, tmp_path / "sparse", "shift_lambda=0.5", "shift_norm=l1"))

    def total(summary):
        return sum(r["unshifted"] for r in summary["shift_sparsity"]) / sum(
            r["channels"] for r in summary["shift_sparsity"]
        )

    assert total(sparse) > total(plain) + 0.3
    rows = json.loads((tmp_path / "sparse" / "metrics.json").read_text())
    assert rows[-1]["shift_sparsity"] == pytest.approx(100 * total(sparse))
    assert (tmp_path / "sparse" / "shift_sparsity.md").read_text().startswith("| layer ")

    frozen = train(
        shift_config(fashion_dir, tmp_path / "frozen", "shift_lambda=0.5", "freeze_shifts_epoch=0")
    )
    initial = displacements(create_model("shiftresnet20_ssl", num_classes=10, in_chans=1, expansion=1))
    trained = load_exported(frozen["run_dir"] + "/model.safetensors")
    assert torch.equal(displacements(trained), initial)  # frozen from the first step: not moved at all
    assert not torch.equal(displacements(load_exported(sparse["run_dir"] + "/model.safetensors")), initial)


def test_removed_shift_layers_are_identities_and_reload(fashion_dir, tmp_path):
    names = [name for name, _ in shift_layers(create_model("shiftresnet20_ssl", expansion=1))]
    model = create_model("shiftresnet20_ssl", expansion=1, remove_shifts=names[:2])
    assert [name for name, _ in shift_layers(model)] == names[2:]
    with pytest.raises(ValueError, match="no shift layer named nope"):
        create_model("shiftresnet20_ssl", remove_shifts=["nope"])
    summary = train(
        shift_config(fashion_dir, tmp_path / "run", "epochs=1", f"model_args.remove_shifts={names[:3]}")
    )
    reloaded = load_exported(summary["run_dir"] + "/model.safetensors")
    assert len(list(shift_layers(reloaded))) == len(names) - 3


def test_least_important_layers_are_the_sparsest():
    rows = [ShiftSparsityRow("a", 5, 10), ShiftSparsityRow("b", 10, 10), ShiftSparsityRow("c", 9, 10)]
    assert least_important_shift_layers(rows, 2) == ["b", "c"]
    assert least_important_shift_layers(rows, 0) == []
    with pytest.raises(ValueError, match="0 to 3"):
        least_important_shift_layers(rows, 4)


def test_removal_study_trains_one_run_per_count(tmp_path):
    seen = []

    def fake_trainer(config):
        seen.append(config)
        removed = config.model_args["remove_shifts"]
        return {
            "top1_err": 10.0 + len(removed),
            "params": 1000,
            "mflops": 1.5,
            "time_s": 3.0,
            "run_dir": config.output,
            "shift_sparsity": [{"layer": "x", "unshifted": 1, "channels": 2}],
        }

    ranking = [ShiftSparsityRow(f"l{i}", i, 10) for i in range(4)]
    config = load_config("fashion-mnist-shift")
    runs = removal_study(config, ranking, [0, 2, 4], tmp_path, trainer=fake_trainer)
    assert [c.model_args["remove_shifts"] for c in seen] == [[], ["l2", "l3"], ["l0", "l1", "l2", "l3"]]
    assert [c.output for c in seen] == [str(tmp_path / f"removed-{n}") for n in (0, 2, 4)]
    table = removal_table(runs, {0: 91.7, 4: 91.5})
    assert "| l2, l3 " in table and "91.5" in table
    assert "|      0 |       90.00 |" in sweep_table(runs)


@pytest.mark.slow
def test_shift_sweep_command_writes_the_table(fashion_dir, tmp_path, capsys):
    output = tmp_path / "sweep"
    argv = ["shift", "sweep", "--lambdas", "0", "2", "--epochs", "1", "--output", str(output)]
    argv += ["--data-dir", str(fashion_dir), "--no-progress"]
    settings = [*TINY_SHIFT[1:5], "download=false", "shift_norm=l1", "lr_base_batch=null"]
    argv += [f"--set={pair}" for pair in settings]
    assert main(argv) == 0
    records = json.loads((output / "shift_sweep.json").read_text())["runs"]
    assert [r["shift_lambda"] for r in records] == [0.0, 2.0]
    assert records[1]["total_sparsity"] > records[0]["total_sparsity"]
    markdown = (output / "shift_sweep.md").read_text()
    assert "paper acc %" in markdown and "Per-layer sparsity, lambda 2" in markdown
    assert main(["shift", "sparsity", str(output / "lambda-2" / "model.safetensors")]) == 0
    assert "| **total** " in capsys.readouterr().out
    # Again with one lambda more: the finished runs are reused, only the new one trains.
    weights = output / "lambda-2" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main([*argv[:4], "0.5", *argv[4:]]) == 0
    assert weights.stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert out.count("reusing it") == 2 and (output / "lambda-0.5" / "summary.json").is_file()
    records = json.loads((output / "shift_sweep.json").read_text())["runs"]
    assert [r["shift_lambda"] for r in records] == [0.0, 0.5, 2.0]
    # Table 3 from the sparsest run's ranking: one run per count, the report names what was removed.
    removal = tmp_path / "removal"
    argv = ["shift", "remove", "--ranking", str(output / "lambda-2"), "--counts", "0", "1", "--epochs", "1"]
    argv += ["--output", str(removal), "--data-dir", str(fashion_dir), "--no-progress"]
    assert main([*argv, *[f"--set={pair}" for pair in [*TINY_SHIFT[1:5], "download=false"]]]) == 0
    report = json.loads((removal / "shift_removal.json").read_text())
    assert [len(run["removed"]) for run in report["runs"]] == [0, 1] and report["command"].startswith(
        "shufflenet"
    )
    assert "Accuracy after removal (Table 3 format)" in (removal / "shift_removal.md").read_text()


def test_shift_commands_reject_models_without_shifts(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    assert main(["shift", "remove", "--ranking", str(run)]) == 2
    assert "has no shift sparsity" in capsys.readouterr().err


def test_an_interrupted_ablation_run_resumes_and_a_finished_one_is_reused(tmp_path):
    from dataclasses import replace

    from shufflenet.train.checkpoint import save_checkpoint

    calls = []

    def fake_trainer(config, **kwargs):
        calls.append((config.output, kwargs))
        return {"top1_err": 10.0, "params": 1, "mflops": 1.0, "time_s": 1.0, "run_dir": config.output}

    config = load_config("fashion-mnist-shift")
    interrupted = replace(config, shift_lambda=0.5, output=str(tmp_path / "lambda-0.5"))
    save_checkpoint(interrupted.run_dir() / "checkpoint.pt", {"config": interrupted.to_dict()})
    finished = replace(config, shift_lambda=0.25, output=str(tmp_path / "lambda-0.25"))
    save_checkpoint(finished.run_dir() / "checkpoint.pt", {"config": finished.to_dict()})
    (finished.run_dir() / "summary.json").write_text(
        json.dumps({"top1_err": 5.0, "params": 1, "mflops": 1.0, "time_s": 1.0, "run_dir": finished.output})
    )
    runs = lambda_sweep(config, [0.0, 0.25, 0.5], tmp_path, trainer=fake_trainer)
    assert calls == [(str(tmp_path / "lambda-0"), {}), (interrupted.output, {"resume": True})]
    assert [run.top1_acc for run in runs] == [90.0, 95.0, 90.0]
