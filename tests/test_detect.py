"""Detection pieces (ShuffleNet, Zhang et al. 2018, section 4.4): the offline COCO-format set made from
Fashion-MNIST items, COCO-format loading with one-line errors, detectors on the registered backbones, and
the COCO protocol's AP."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from shufflenet.detect.coco import (
    CocoDetectionSet,
    DetectionDataError,
    collate_detection,
    load_coco_annotations,
)
from shufflenet.detect.metrics import coco_average_precision, coco_detections
from shufflenet.detect.model import build_detector
from shufflenet.detect.synthetic import ITEM_THRESHOLD, CanvasSpec, make_fashion_detection

SPEC = CanvasSpec(size=64, items=(1, 3), scale=(16, 28))


def _fashion_items(directory, n_train=12, n_test=6):
    """Fashion-MNIST idx files whose items are bright rectangles on black, of class i % 10."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            images[i, 4 + i % 5 : 22, 6 : 20 + i % 6] = 200
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, payload in (
            (f"{prefix}-images-idx3-ubyte", struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()),
            (f"{prefix}-labels-idx1-ubyte", struct.pack(">II", 2049, n) + labels.tobytes()),
        ):
            (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
    return directory


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    data = _fashion_items(root / "fashion-mnist")
    return make_fashion_detection(root / "set", data_dir=data, train_images=8, val_images=4, spec=SPEC)


def test_the_offline_set_boxes_every_item_tightly(detection_set):
    for split in ("train", "val"):
        data = load_coco_annotations(detection_set / "annotations" / f"instances_{split}.json")
        assert len(data["images"]) == (8 if split == "train" else 4) and data["annotations"]
        assert [c["id"] for c in data["categories"]] == list(range(1, 11))
        for image in data["images"]:
            pixels = np.asarray(Image.open(detection_set / split / image["file_name"]))
            assert pixels.shape == (64, 64)
            inside = np.zeros_like(pixels, bool)
            for annotation in (a for a in data["annotations"] if a["image_id"] == image["id"]):
                x, y, w, h = (int(v) for v in annotation["bbox"])
                inside[y : y + h, x : x + w] = True
                box = pixels[y : y + h, x : x + w]
                # tight: the item reaches every edge of its box
                assert (box[0] > ITEM_THRESHOLD).any() and (box[-1] > ITEM_THRESHOLD).any()
                assert (box[:, 0] > ITEM_THRESHOLD).any() and (box[:, -1] > ITEM_THRESHOLD).any()
            assert (pixels[~inside] <= ITEM_THRESHOLD).all(), "an item outside every box"


def test_the_offline_set_is_never_half_written_nor_overwritten(detection_set, tmp_path):
    with pytest.raises(FileExistsError, match="not empty"):
        make_fashion_detection(detection_set, data_dir=tmp_path / "unused")
    assert not any(".partial" in p.name for p in detection_set.parent.iterdir())


def _write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_bad_coco_files_are_one_line_errors_naming_the_file_and_annotation(tmp_path):
    good = {
        "images": [{"id": 7, "file_name": "a.png", "width": 50, "height": 40}],
        "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20]}],
        "categories": [{"id": 1, "name": "shirt"}],
    }
    assert load_coco_annotations(_write(tmp_path / "good.json", good))["annotations"][0]["id"] == 3
    cases = {
        "{not json": "not valid JSON",
        json.dumps({"images": []}): "no 'annotations' list",
        json.dumps({**good, "annotations": [{**good["annotations"][0], "bbox": [40, 10, 20, 20]}]}): (
            "annotation 3 (image a.png): box [40, 10, 20, 20] lies outside the 50x40 image"
        ),
        json.dumps(
            {**good, "annotations": [{**good["annotations"][0], "bbox": [1, 1, 0, 5]}]}
        ): "has no area",
        json.dumps({**good, "annotations": [{**good["annotations"][0], "category_id": 9}]}): "category 9",
        json.dumps({**good, "annotations": [{**good["annotations"][0], "image_id": 8}]}): "refers to image 8",
    }
    for text, message in cases.items():
        path = _write(tmp_path / "bad.json", text)
        with pytest.raises(DetectionDataError) as error:
            load_coco_annotations(path)
        assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
        assert "\n" not in str(error.value)


def test_samples_are_float_images_with_xyxy_boxes_and_contiguous_labels(detection_set, tmp_path):
    data = CocoDetectionSet(detection_set / "val", detection_set / "annotations" / "instances_val.json")
    image, target = data[0]
    raw = load_coco_annotations(detection_set / "annotations" / "instances_val.json")
    first = [a for a in raw["annotations"] if a["image_id"] == data.ids[0]]
    assert (
        image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    x, y, w, h = first[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert target["labels"].tolist() == [a["category_id"] for a in first]  # ids 1..10 are already 1..K
    images, targets = collate_detection([data[0], data[1]])
    assert len(images) == len(targets) == 2
    (detection_set / "val" / "000001.png").rename(tmp_path / "moved.png")
    try:
        Image.new("L", (32, 32)).save(detection_set / "val" / "000001.png")
        with pytest.raises(DetectionDataError, match="the image is 32x32, its annotation file says 64x64"):
            data[data.ids.index(1)]
    finally:
        (tmp_path / "moved.png").rename(detection_set / "val" / "000001.png")


@pytest.mark.parametrize(
    ("backbone", "detector"),
    [
        ("shufflenet_v1_g3_x0_5", "fasterrcnn"),
        ("shufflenet_v2_x0_5", "fasterrcnn"),
        ("mobilenet_v2_x0_5", "fasterrcnn"),
        ("shufflenet_v2_x0_5", "retinanet"),
        ("mobilenet_v2_x0_5", "ssdlite"),
        ("shufflenet_v1_g3_x0_5", "ssdlite"),
    ],
)
def test_detectors_train_and_predict_on_each_backbone(detection_set, backbone, detector):
    torch.manual_seed(0)
    data = CocoDetectionSet(detection_set / "train", detection_set / "annotations" / "instances_train.json")
    model = build_detector(backbone, len(data.classes), detector=detector, min_size=64, max_size=64)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "from scratch, BN trains"
    stem = next(model.backbone.body.model.trunk_modules()[0].parameters())
    assert not stem.requires_grad and any(p.requires_grad for p in model.backbone.parameters())
    images, targets = collate_detection([data[0], data[1]])
    targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]
    losses = model.train()(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    # Every trained parameter gets a gradient: data parallelism refuses any that does not.
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        outputs = model.eval()(images)
    assert len(outputs) == 2 and set(outputs[0]) == {"boxes", "labels", "scores"}


def test_coco_ap_is_100_for_the_ground_truth_and_0_for_nothing(detection_set):
    data = CocoDetectionSet(detection_set / "val", detection_set / "annotations" / "instances_val.json")
    outputs = []
    for index in range(len(data)):
        _, target = data[index]
        n = len(target["labels"])
        outputs.append(
            {
                "boxes": target["boxes"].as_subclass(torch.Tensor).clone(),
                "labels": target["labels"],
                "scores": torch.ones(n),
            }
        )
    perfect = coco_average_precision(data.coco, coco_detections(outputs, data.ids, data.category_ids))
    assert perfect["AP"] == perfect["AP50"] == 100.0
    for output in outputs:  # every box moved by half its size: IoU 1/3, below every threshold
        output["boxes"] += (output["boxes"][:, 2:] - output["boxes"][:, :2]).repeat(1, 2) / 2
    moved = coco_average_precision(data.coco, coco_detections(outputs, data.ids, data.category_ids))
    assert moved["AP50"] == 0.0
    assert coco_average_precision(data.coco, [])["AP"] == 0.0


def test_flips_are_seeded_per_sample_and_move_the_boxes(detection_set):
    from shufflenet.detect.train import DetectionSamples

    base = CocoDetectionSet(detection_set / "train", detection_set / "annotations" / "instances_train.json")
    samples = DetectionSamples(base, flip=True, seed=3)
    flipped = [
        key
        for key in ((e, i) for e in range(3) for i in range(len(base)))
        if not torch.equal(samples[key][0], base[key[1]][0])
    ]
    assert 0 < len(flipped) < 3 * len(base)
    epoch, index = flipped[0]
    image, target = samples[epoch, index]
    original_image, original = base[index]
    assert torch.equal(image, original_image.flip(-1)) and torch.equal(samples[epoch, index][0], image)
    boxes = original["boxes"].as_subclass(torch.Tensor)
    assert torch.equal(target["boxes"][:, 0], 64 - boxes[:, 2]) and torch.equal(
        target["boxes"][:, 2], 64 - boxes[:, 0]
    )


def test_a_detector_trains_through_the_training_engine(detection_set, tmp_path):
    from shufflenet.detect.train import DetectConfig, train_detector

    config = DetectConfig(
        model="shufflenet_v2_x0_5", data_dir=str(detection_set), min_size=64, max_size=64, batch_size=2,
        epochs=1, output=str(tmp_path / "run"), progress=False, log_every=1,
    )  # fmt: skip
    summary = train_detector(config)
    assert summary["steps"] == 4 and summary["classes"][0] == "T-shirt/top" and 0 <= summary["AP50"] <= 100
    # its complexity: the trunk and feature pyramid on a min_size square, counted apart from the run
    from shufflenet.detect.model import build_detector
    from shufflenet.profile import profile

    backbone = build_detector("shufflenet_v2_x0_5", 10, min_size=64, max_size=64).backbone
    assert summary["mflops"] == pytest.approx(profile(backbone, (64, 64)).mflops) and summary["mflops"] > 0
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert "val_AP50" in rows[-1] and rows[-1]["train_loss"] > 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "summary.json").is_file()
    with pytest.raises(Exception, match="exists"):  # the run directory is held like a classifier's
        train_detector(config)


def _cli(capsys, *argv):
    from shufflenet.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_detect_commands_make_data_train_evaluate_and_predict(tmp_path, capsys):
    fashion = _fashion_items(tmp_path / "fashion-mnist")
    data = tmp_path / "set"
    code, out, err = _cli(capsys, "detect", "make-data", data, "--data-dir", fashion, "--train-images", 6,
                          "--val-images", 3, "--canvas", 64)  # fmt: skip
    assert code == 0 and "wrote" in out and (data / "annotations" / "instances_val.json").is_file()
    code, _, err = _cli(capsys, "detect", "make-data", data, "--data-dir", fashion)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    run = tmp_path / "run"
    sizes = ("--set", "min_size=64", "--set", "max_size=64")
    code, out, err = _cli(capsys, "detect", "train", "--data-dir", data, "--epochs", 1, "--batch-size", 2,
                          "--output", run, "--no-progress", *sizes)  # fmt: skip
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["detector"] == "fasterrcnn"
    code, out, err = _cli(capsys, "detect", "evaluate", "--checkpoint", run, "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 3 and result["split"] == "val" and 0 <= result["AP"] <= 100
    code, out, _ = _cli(capsys, "detect", "evaluate", "--checkpoint", run)
    assert code == 0 and out.startswith("| backbone | detector | split | images | AP |")
    image = data / "val" / "000001.png"
    code, out, err = _cli(capsys, "detect", "predict", image, "--checkpoint", run, "--threshold", 0.0,
                          "--output", tmp_path / "p.png")  # fmt: skip
    assert code == 0, err
    assert f"{image}:" in out and (tmp_path / "p.png").stat().st_size > 0
    code, _, err = _cli(capsys, "detect", "train", "--data-dir", data, "--set", "detektor=retinanet")
    assert code == 2 and "unknown training setting 'detektor'; did you mean detector?" in err
    code, _, err = _cli(capsys, "detect", "predict", tmp_path / "missing.png", "--checkpoint", run)
    assert code == 2 and "no such image" in err


def test_batch_norm_freezes_for_fine_tuning_and_keeps_its_statistics():
    from shufflenet.detect.model import Backbone

    torch.manual_seed(0)
    scratch = Backbone("shufflenet_v2_x0_5")
    frozen = Backbone("shufflenet_v2_x0_5", freeze_bn=True)
    norms = [m for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms and any(isinstance(m, torch.nn.BatchNorm2d) for m in scratch.modules())
    frozen.load_state_dict(scratch.state_dict(), strict=False)  # BN: the same names, as buffers
    x = torch.randn(1, 3, 64, 64)
    scratch.eval()
    assert all(
        torch.allclose(a, b, atol=1e-5) for a, b in zip(scratch(x).values(), frozen(x).values(), strict=True)
    )


def test_detection_recipes_load_as_detection_runs_only():
    from shufflenet.detect.train import DetectConfig
    from shufflenet.train.config import list_recipes, load_config

    assert list_recipes(detection=True) == ["detect-fashion-quick"]
    assert not any(name.startswith("detect-") for name in list_recipes())
    config = load_config("detect-fashion-quick", {"epochs": 2}, DetectConfig)
    assert isinstance(config, DetectConfig) and config.detector == "fasterrcnn" and config.epochs == 2
    with pytest.raises(ValueError, match="is a detection recipe: train it with `shufflenet detect train"):
        load_config("detect-fashion-quick")
    with pytest.raises(ValueError, match="min_size"):
        load_config("detect-fashion-quick", {"min_size": 0}, DetectConfig)
    # A shorter side the longer side's cap would undo is refused, except for SSDLite's square inputs.
    with pytest.raises(ValueError, match=r"min_size 800 is above max_size 600.*max_size=1333"):
        load_config("detect-fashion-quick", {"min_size": 800, "max_size": 600}, DetectConfig)
    square = load_config(
        "detect-fashion-quick", {"detector": "ssdlite", "min_size": 320, "max_size": 300}, DetectConfig
    )
    assert (square.min_size, square.max_size) == (320, 300)


def test_a_classification_runs_weights_start_the_detectors_backbone(detection_set, tmp_path):
    """A checkpoint of `shufflenet train` (here on grayscale Fashion-MNIST) becomes the trunk: the same
    weights (the one-channel stem spread over RGB), batch norm frozen with its statistics; and a run's
    weights of another model are refused in one line naming both."""
    from shufflenet.detect.evaluate import load_detector
    from shufflenet.detect.train import DetectConfig, train_detector
    from shufflenet.train.config import TrainConfig
    from shufflenet.train.engine import train

    fashion = _fashion_items(tmp_path / "fm", n_train=16, n_test=8)
    classifier_run = tmp_path / "classifier"
    train(TrainConfig(model="shufflenet_v2_x0_5", dataset="fashion-mnist", data_dir=str(fashion),
                      model_args={"small_input": True}, iterations=2, batch_size=8,
                      output=str(classifier_run), progress=False))  # fmt: skip
    trained = torch.load(classifier_run / "checkpoint.pt", weights_only=False)["model"]
    detector = build_detector("shufflenet_v2_x0_5", 10, weights=classifier_run / "checkpoint.pt", min_size=64,
                              max_size=64)  # fmt: skip
    trunk = detector.backbone.body.model.state_dict()
    stem = next(key for key, value in trained.items() if value.dim() == 4)
    assert trained[stem].shape[1] == 1 and trunk[stem].shape[1] == 3
    torch.testing.assert_close(trunk[stem].sum(1, keepdim=True), trained[stem])
    shared = [key for key in trunk if key in trained and key != stem and not key.startswith("classifier")]
    assert len(shared) > 50 and all(torch.equal(trunk[key], trained[key]) for key in shared)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.backbone.modules())
    # Its input normalized as the classifier's was, the one channel's statistics on each of three.
    recorded = torch.load(classifier_run / "checkpoint.pt", weights_only=False)["normalization"]
    assert detector.transform.image_mean == pytest.approx(recorded["mean"] * 3)
    assert detector.transform.image_std == pytest.approx(recorded["std"] * 3)
    with pytest.raises(ValueError, match="sets its model's arguments itself; drop small_input"):
        build_detector("shufflenet_v2_x0_5", 10, weights=classifier_run, small_input=True)
    config = DetectConfig(model="shufflenet_v2_x0_5", data_dir=str(detection_set), min_size=64, max_size=64,
                          batch_size=4, iterations=1, output=str(tmp_path / "det"), progress=False,
                          backbone_weights=str(classifier_run / "checkpoint.pt"))  # fmt: skip
    assert train_detector(config)["steps"] == 1
    # The detector comes back from its own checkpoint alone, the classifier's file gone.
    (classifier_run / "checkpoint.pt").rename(tmp_path / "moved.pt")
    model, loaded, _ = load_detector(tmp_path / "det")
    assert loaded.backbone_weights == str(classifier_run / "checkpoint.pt")
    assert model.backbone.body.model.in_chans == 3 and model.backbone.body.model.total_stride == 8
    assert model.transform.image_mean == pytest.approx(recorded["mean"] * 3)
    weights = tmp_path / "moved.pt"
    with pytest.raises(ValueError, match="holds a shufflenet_v2_x0_5, not mobilenet_v2_x0_5"):
        build_detector("mobilenet_v2_x0_5", 10, weights=weights)


@pytest.mark.slow
def test_a_detector_trains_data_parallel_in_two_processes_as_under_torchrun(detection_set, tmp_path):
    """Two local gloo processes (torch's elastic launcher, as torchrun starts them) each on half of every
    batch: the run completes with both ranks and scores AP over all validation images."""
    from shufflenet.detect.train import DetectConfig, train_detector

    config = DetectConfig(
        model="shufflenet_v2_x0_5", data_dir=str(detection_set), min_size=64, max_size=64, batch_size=4,
        epochs=1, output=str(tmp_path / "ddp"), progress=False, cpu_processes=2,
    )  # fmt: skip
    summary = train_detector(config)
    assert summary["world_size"] == 2 and summary["steps"] == 2 and summary["val_images"] == 4
    assert 0 <= summary["AP"] <= 100 and (tmp_path / "ddp" / "checkpoint.pt").is_file()
