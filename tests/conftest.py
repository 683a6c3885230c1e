import gzip
import random
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from shufflenet._testing import randomize_batchnorm  # noqa: F401  (tests import it from here)
from shufflenet.ops import SparseShift


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)


def write_fake_fashion_mnist(directory: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> dict:
    """Valid idx files (big-endian magic 2051 images / 2049 labels); returns the images and labels written."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        payloads = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.numpy().tobytes(),
        }
        for name, payload in payloads.items():
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (directory / name).write_bytes(payload)
        written[prefix] = (images, labels)
    return written


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, Path]:
    """A train/val folder of 3 classes x 3 small PNGs, plus one corrupt train/dog/broken.png."""
    root = tmp_path / "images"
    for split in ("train", "val"):
        for label, name in enumerate(("cat", "dog", "fish")):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (30, 20), (80 * label, 20 * i, 100)).save(root / split / name / f"{i}.png")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(random.Random(0).randbytes(300))
    return root, bad


def lowering_ready(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms (so folding is exercised) and learned-looking shifts,
    some larger than one pixel, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            elif isinstance(module, SparseShift):
                module.alpha.copy_(torch.randn(module.channels, generator=generator) * 1.2)
                module.beta.copy_(torch.randn(module.channels, generator=generator) * 1.2)
    return model.eval()
