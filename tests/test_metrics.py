import csv
import json
import math

import numpy as np
import pytest
import torch

from shufflenet.train.metrics import (
    ConfusionMatrix,
    MetricsLog,
    TensorBoardWriter,
    format_duration,
    plot_confusion_matrix,
    plot_learning_curves,
    summary_table,
    topk_correct,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# 4 samples, 3 classes. Class ranking per sample (best first): [2, 1, 0], [0, 1, 2], [1, 2, 0], [2, 0, 1].
LOGITS = torch.tensor(
    [
        [0.1, 0.5, 0.9],
        [0.9, 0.5, 0.1],
        [0.1, 0.9, 0.5],
        [0.5, 0.1, 0.9],
    ]
)
TARGETS = torch.tensor([2, 1, 0, 1])  # ranks 1, 2, 3, 3


def test_topk_counts_and_k_above_num_classes():
    assert topk_correct(LOGITS, TARGETS, ks=(1, 2, 3, 5)) == {1: 1, 2: 2, 3: 4, 5: 4}
    assert topk_correct(LOGITS, TARGETS) == {1: 1, 5: 4}
    assert topk_correct(LOGITS[:0], TARGETS[:0]) == {1: 0, 5: 0}


def test_topk_rejects_bad_shapes():
    with pytest.raises(ValueError):
        topk_correct(LOGITS, TARGETS[:2])
    with pytest.raises(ValueError):
        topk_correct(LOGITS, TARGETS, ks=(0,))


def test_confusion_matrix_counts_and_accuracies():
    cm = ConfusionMatrix(3)
    cm.update(LOGITS, TARGETS)  # predictions 2, 0, 1, 2
    cm.update(torch.tensor([1, 1]), torch.tensor([1, 1]))  # predicted indices work too
    expected = torch.tensor([[0, 1, 0], [1, 2, 1], [0, 0, 1]])
    assert cm.matrix.dtype == torch.int64
    assert torch.equal(cm.matrix, expected)
    assert cm.per_class_accuracy() == pytest.approx([0.0, 0.5, 1.0])
    assert cm.accuracy() == pytest.approx(3 / 6)

    other = ConfusionMatrix(3)
    other.update(torch.tensor([0]), torch.tensor([0]))
    cm.merge(other)
    cm.merge(other.matrix)
    assert cm.matrix[0, 0] == 2
    assert cm.accuracy() == pytest.approx(5 / 8)


def test_confusion_matrix_empty_class_and_bad_indices():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.accuracy())
    cm.update(torch.tensor([0]), torch.tensor([0]))
    assert cm.per_class_accuracy()[0] == 1.0
    assert math.isnan(cm.per_class_accuracy()[2])
    with pytest.raises(ValueError):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0]), torch.tensor([-1]))


def _history(n_epochs=3):
    log = MetricsLog()
    for epoch in range(n_epochs):
        log.append({"epoch": epoch, "step": 10 * (epoch + 1), "train_loss": 2.0 - 0.5 * epoch, "lr": 0.1})
        log.append(
            {"epoch": epoch, "val_loss": torch.tensor(1.9 - 0.4 * epoch), "val_top1_err": 60.0 - epoch}
        )
    return log


def test_metrics_log_writes_csv_and_json(tmp_path):
    log = _history(2)
    log.append({"epoch": np.int64(2), "train_loss": float("nan"), "note": "diverged"})
    csv_path, json_path = log.write(tmp_path / "run")

    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header == ["epoch", "step", "train_loss", "lr", "val_loss", "val_top1_err", "note"]
    assert len(body) == 5
    assert body[0] == ["0", "10", "2.0", "0.1", "", "", ""]
    assert body[1][:2] == ["0", ""] and float(body[1][4]) == pytest.approx(1.9)
    assert body[4] == ["2", "", "nan", "", "", "", "diverged"]

    rows = json.loads(json_path.read_text())
    assert rows[0] == {"epoch": 0, "step": 10, "train_loss": 2.0, "lr": 0.1}
    assert rows[4] == {"epoch": 2, "train_loss": None, "note": "diverged"}
    assert type(log.rows[1]["val_loss"]) is float
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.csv", "metrics.json"]


def test_metrics_log_rejects_non_plain_values():
    with pytest.raises(TypeError):
        MetricsLog().append({"weights": torch.zeros(3)})
    with pytest.raises(TypeError):
        MetricsLog().append({"config": {"lr": 0.1}})


def test_state_dict_round_trip_and_resume_does_not_duplicate(tmp_path):
    log = _history(2)
    log.write(tmp_path)
    torch.save({"metrics": log.state_dict()}, tmp_path / "ckpt.pt")

    # More rows after the checkpoint: a crash loses them, and the resumed run logs epoch 2 afresh.
    log.append({"epoch": 2, "train_loss": 1.2})
    log.write(tmp_path)

    resumed = MetricsLog()
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["metrics"])
    assert resumed.rows == _history(2).rows
    resumed.append({"epoch": 2, "train_loss": 1.0})
    resumed.write(tmp_path)

    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert rows == [*_history(2).rows, {"epoch": 2, "train_loss": 1.0}]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 5


def test_tensorboard_writer_enabled_and_disabled(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    with TensorBoardWriter(on) as writer:
        writer.add_scalars(
            {"epoch": 0, "step": 5, "train_loss": 1.5, "val_top1_err": 40.0, "note": "x"}, step=5
        )
    assert any(p.name.startswith("events.out.tfevents") for p in on.iterdir())

    writer = TensorBoardWriter(off, enabled=False)
    writer.add_scalars({"train_loss": 1.5}, step=0)
    writer.close()
    assert not off.exists()


def test_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardWriter(tmp_path) as writer:
        writer.add_scalars(
            {"step": 3, "train_loss": 1.5, "val_top1_err": 40.0, "lr": 0.1, "ok": True}, step=3
        )
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "train/loss", "val/top1_err"]
    assert events.Scalars("val/top1_err")[0].step == 3


def test_plots_are_pngs(tmp_path):
    curves = plot_learning_curves(_history(3).rows, tmp_path / "plots" / "curves.png")
    assert curves.read_bytes().startswith(PNG_SIGNATURE)
    assert plot_learning_curves([], tmp_path / "empty.png").read_bytes().startswith(PNG_SIGNATURE)

    matrix = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 4]])
    for normalize in (True, False):
        path = plot_confusion_matrix(
            matrix, ["cat", "dog", "bird"], tmp_path / f"cm{normalize}.png", normalize
        )
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        plot_confusion_matrix(matrix, ["cat", "dog"], tmp_path / "bad.png")
    assert not list(tmp_path.glob(".*.tmp"))


def test_format_duration():
    assert format_duration(45.4) == "45s"
    assert format_duration(723) == "12m 03s"
    assert format_duration(3 * 3600 + 4 * 60 + 5) == "3h 04m 05s"


def test_summary_table():
    table = summary_table(
        [
            {
                "model": "shufflenet_v2_x1_0",
                "params": 2_278_604,
                "mflops": 146.0,
                "top1_err": 30.6123,
                "top5_err": 11.1,
                "time_s": 723,
                "images_per_s": 1234.5,
            },
            {"model": "mobilenet_v1_x1_0"},
        ]
    )
    lines = table.splitlines()
    headers = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    assert headers == ["model", "params (M)", "MFLOPs", "top-1 err %", "top-5 err %", "time", "images/s"]
    cells = [cell.strip() for cell in lines[2].split("|")[1:-1]]
    assert cells == ["shufflenet_v2_x1_0", "2.279", "146.0", "30.61", "11.10", "12m 03s", "1,234"]
    assert len(lines) == 4
