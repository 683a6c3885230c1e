import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from conftest import write_fake_fashion_mnist
from shufflenet.data import (
    DATASETS,
    AugmentedDataset,
    TrainSampler,
    build_dataset,
    build_eval_loader,
    build_train_loader,
    build_transforms,
    collate_skip_none,
)
from shufflenet.data import datasets as datasets_module

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # No test may read or fill the user's real cache, nor find the real Debian files by accident.
    monkeypatch.setenv("SHUFFLENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SEARCH_PATH", (tmp_path / "nowhere",))


def test_fashion_mnist_from_search_path_is_unpacked_once(tmp_path, monkeypatch):
    written = write_fake_fashion_mnist(tmp_path / "debian")
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SEARCH_PATH", (tmp_path / "debian",))

    train = build_dataset("fashion-mnist", "train", download=False)
    val = build_dataset("fashion-mnist", "val", download=False)
    assert (len(train), len(val)) == (20, 10)
    assert [val[i][1] for i in range(10)] == written["t10k"][1].tolist()
    image, _ = val[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    expected = (written["t10k"][0][3].float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(image[0], expected)

    raw = tmp_path / "cache" / "datasets" / "FashionMNIST" / "raw"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in raw.iterdir()}
    assert sorted(before) == sorted(datasets_module._FASHION_MNIST_FILES)  # no temp files left behind
    build_dataset("fashion-mnist", "val", download=False)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in raw.iterdir()} == before


def test_fashion_mnist_gz_in_writable_data_dir_unpacks_there(tmp_path):
    write_fake_fashion_mnist(tmp_path / "fm")
    dataset = build_dataset("fashion-mnist", "val", tmp_path / "fm", download=False)
    assert len(dataset) == 10
    assert (tmp_path / "fm" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert not (tmp_path / "cache").exists()


def test_fashion_mnist_unpacked_torchvision_root_is_read_in_place(tmp_path):
    write_fake_fashion_mnist(tmp_path / "root" / "FashionMNIST" / "raw", gz=False)
    dataset = build_dataset("fashion-mnist", "train", str(tmp_path / "root"), download=False)
    assert len(dataset) == 20
    assert not (tmp_path / "cache").exists()


def test_fashion_mnist_missing_names_both_fixes(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        build_dataset("fashion-mnist", "train", tmp_path, download=False)
    assert "--data-dir" in str(info.value)


def test_cifar_missing_without_download_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found .*--data-dir"):
        build_dataset("cifar10", "val", tmp_path, download=False)


def test_bad_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of fashion-mnist"):
        build_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        build_dataset("cifar10", "test")
    with pytest.raises(ValueError, match="needs a data_dir"):
        build_dataset("imagefolder", "train")
    with pytest.raises(ValueError, match="imagefolder only"):
        build_dataset("cifar10", "train", skip_bad_images=True)


@pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST / f"{name}.gz").is_file() for name in datasets_module._FASHION_MNIST_FILES),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SEARCH_PATH", (DEBIAN_FASHION_MNIST,))
    dataset = build_dataset("fashion-mnist", "val", download=False)
    assert len(dataset) == 10000
    assert len(dataset.classes) == 10 == DATASETS["fashion-mnist"].num_classes
    assert sorted(dataset.targets.unique().tolist()) == list(range(10))


def test_corrupt_image_error_names_the_file(image_folder):
    root, bad = image_folder
    dataset = build_dataset("imagefolder", "train", root)
    index = [path for path, _ in dataset.samples].index(str(bad))
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {bad}")) as info:
        dataset[index]
    assert "--skip-bad-images" in str(info.value)
    assert dataset[0][0].shape == (3, 224, 224)


def test_skip_bad_images_loads_the_good_ones_and_counts_the_bad(image_folder):
    root, bad = image_folder
    transform = build_transforms("imagefolder", "val", image_size=16)
    dataset = build_dataset("imagefolder", "train", root, transform=transform, skip_bad_images=True)
    assert len(dataset) == 10
    labels = [label for images, labels in build_eval_loader(dataset, batch_size=4) for label in labels]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert dataset.bad_images == [str(bad)]


def test_collate_skip_none_drops_none():
    assert collate_skip_none([None, None]) is None
    batch = collate_skip_none([(torch.zeros(2), 1), None, (torch.ones(2), 0)])
    assert batch[0].shape == (2, 2) and batch[1].tolist() == [1, 0]


def test_imagefolder_missing_split_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no val/ folder in .*ImageNet layout"):
        build_dataset("imagefolder", "val", tmp_path)


def test_imagenet_transforms_give_224_crops():
    image = Image.new("RGB", (400, 300), (10, 200, 30))
    assert build_transforms("imagefolder", "val")(image).shape == (3, 224, 224)
    assert build_transforms("imagefolder", "train")(image).shape == (3, 224, 224)
    assert build_transforms("imagefolder", "val", image_size=112)(image).shape == (3, 112, 112)


def test_small_image_transforms_keep_size_and_normalize():
    gray = Image.new("L", (28, 28), 128)
    out = build_transforms("fashion-mnist", "train")(gray)
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32
    val = build_transforms("fashion-mnist", "val")(gray)
    torch.testing.assert_close(val, torch.full((1, 28, 28), (128 / 255 - 0.2860) / 0.3530))
    assert build_transforms("cifar100", "train")(Image.new("RGB", (32, 32))).shape == (3, 32, 32)
    assert build_transforms("cifar10", "val", image_size=64)(Image.new("RGB", (32, 32))).shape == (3, 64, 64)


class IndexImages(torch.utils.data.Dataset):
    """Sample i is (a 1x4x4 image filled with i, label i)."""

    def __len__(self):
        return 40

    def __getitem__(self, index):
        return torch.full((1, 4, 4), float(index)), index


def noisy(image):
    return image + torch.rand(())  # a random draw, like an augmentation


def epoch_batches(seed=3, epoch=1, **kwargs):
    dataset = AugmentedDataset(IndexImages(), noisy, seed=seed)
    loader = build_train_loader(dataset, global_batch=8, epoch=epoch, seed=seed, **kwargs)
    return [(images[:, 0, 0, 0], labels) for images, labels in loader]


def test_train_order_is_a_function_of_seed_and_epoch():
    order = [i for _, labels in epoch_batches() for i in labels.tolist()]
    assert sorted(order) == list(range(40))
    assert [i for _, labels in epoch_batches() for i in labels.tolist()] == order
    assert [i for _, labels in epoch_batches(epoch=2) for i in labels.tolist()] != order
    assert [i for _, labels in epoch_batches(seed=4) for i in labels.tolist()] != order


def test_augmentation_is_the_same_after_skipping_and_across_workers():
    full = epoch_batches()
    resumed = epoch_batches(skip_batches=2)
    assert len(resumed) == len(full) - 2
    for (values, labels), (values_again, labels_again) in zip(full[2:], resumed, strict=True):
        assert torch.equal(labels, labels_again) and torch.equal(values, values_again)
    with_workers = epoch_batches(num_workers=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, with_workers, strict=True))
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    epoch_batches()
    assert torch.equal(torch.rand(3), before), "seeding samples must not disturb the global RNG"


def test_ranks_share_out_the_global_batch():
    single = epoch_batches()
    ranks = [epoch_batches(rank=rank, world_size=2) for rank in (0, 1)]
    for step, (_, labels) in enumerate(single):
        union = torch.cat([ranks[0][step][1], ranks[1][step][1]])
        assert sorted(union.tolist()) == sorted(labels.tolist())
        assert len(ranks[0][step][1]) == 4
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        epoch_batches(world_size=3)


def test_batch_larger_than_dataset_says_so():
    with pytest.raises(ValueError, match="larger than the dataset"):
        TrainSampler(5, global_batch=8, epoch=0)


def test_eval_loader_is_sequential_sharded_and_keeps_the_last_batch():
    dataset = TensorDataset(torch.arange(10))
    assert [b.tolist() for (b,) in build_eval_loader(dataset, batch_size=4)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    shards = [
        [i for (b,) in build_eval_loader(dataset, batch_size=4, rank=r, world_size=3) for i in b.tolist()]
        for r in range(3)
    ]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


def test_batched_augmentation_equals_torchvision_per_sample():
    from torchvision.transforms.v2 import functional as F

    from shufflenet.data import SmallImageDataset, augment_batch

    base = TensorDataset(torch.zeros(1))
    base.data = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    base.targets = torch.arange(6)
    dataset = SmallImageDataset(base, padding=3, seed=5)
    images, _, params = (
        torch.stack(x) if isinstance(x[0], torch.Tensor) else torch.tensor(x)
        for x in zip(*[dataset[(2, i)] for i in range(6)], strict=True)
    )
    batch = augment_batch(images, params, padding=3, mean=(0.5,), std=(0.25,))
    for i in range(6):
        dy, dx, flip = params[i, :3].tolist()
        expected = F.pad(images[i].float() / 255, [3])[:, dy : dy + 28, dx : dx + 28]
        expected = F.horizontal_flip(expected) if flip else expected
        torch.testing.assert_close(batch[i], F.normalize(expected, [0.5], [0.25]))
    assert params[:, 2].sum() not in (0, 6), "flips should vary between samples"
    assert not params[:, 3:].any(), "nothing erased unless asked"
    assert torch.equal(torch.stack([dataset[(2, i)][2] for i in range(6)]), params), "same draws again"
    no_flip = SmallImageDataset(base, padding=0, flip=False)
    assert all(no_flip[(2, i)][2].tolist()[:3] == [0, 0, 0] for i in range(6))
    assert torch.equal(
        augment_batch(images[:1], torch.tensor([[0, 0, 0]]), padding=0, mean=(0.0,), std=(1.0,)),
        images[:1].float() / 255,
    )


def test_random_erasing_matches_torchvision_erase_with_the_drawn_rectangles():
    from torchvision.transforms.v2 import functional as F

    from shufflenet.data import SmallImageDataset, augment_batch

    base = TensorDataset(torch.zeros(1))
    base.data = torch.randint(1, 256, (400, 28, 28), dtype=torch.uint8)
    base.targets = torch.zeros(400, dtype=torch.long)
    dataset = SmallImageDataset(base, padding=2, erase=True, seed=3)
    items = [dataset[(1, i)] for i in range(400)]
    images = torch.stack([image for image, _, _ in items])
    params = torch.stack([p for _, _, p in items])
    top, left, bottom, right = params[:, 3:].T
    erased = bottom > top
    assert 0.4 < erased.float().mean() < 0.6, "erasing should happen with probability 1/2"
    areas = ((bottom - top) * (right - left))[erased].float() / (28 * 28)
    assert areas.min() >= 0.01 and areas.max() <= 0.45, "erased area should stay within 2-40% (rounded)"
    assert (bottom <= 28).all() and (right <= 28).all() and (top >= 0).all() and (left >= 0).all()
    batch = augment_batch(images[:32], params[:32], padding=2, mean=(0.5,), std=(0.25,))
    plain = augment_batch(images[:32], params[:32, :3], padding=2, mean=(0.5,), std=(0.25,))
    for i in range(32):
        top_i, left_i, bottom_i, right_i = params[i, 3:].tolist()
        height, width = bottom_i - top_i, right_i - left_i
        expected = F.erase(plain[i], top_i, left_i, height, width, torch.tensor(0.0)) if height else plain[i]
        torch.testing.assert_close(batch[i], expected)
    assert torch.equal(torch.stack([dataset[(1, i)][2] for i in range(400)]), params), "same draws again"
    assert not torch.equal(torch.stack([dataset[(2, i)][2] for i in range(400)]), params), "new each epoch"
