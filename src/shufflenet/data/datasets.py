"""Datasets by name: Fashion-MNIST, CIFAR-10/100 and ImageNet-style image folders, all via torchvision."""

from __future__ import annotations

import gzip
import os
import shutil
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision import datasets
from torchvision.datasets.folder import default_loader

from shufflenet._system import cache_dir
from shufflenet.data.catalog import dataset_info

Split = Literal["train", "val"]

# Where Fashion-MNIST idx files are looked for after data_dir; Debian's dataset-fashion-mnist installs here.
FASHION_MNIST_SEARCH_PATH: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def default_cache_dir() -> Path:
    """Downloads and unpacked files go to ``$SHUFFLENET_CACHE/datasets`` (default ``~/.cache/shufflenet``)."""
    return cache_dir() / "datasets"


def open_dataset(
    name: str,
    split: Split,
    data_dir: str | Path | None = None,
    *,
    transform: Callable[[Any], Any],
    download: bool = True,
    skip_bad_images: bool = False,
) -> Dataset:
    """The ``split`` of dataset ``name`` yielding ``(image, label)`` through ``transform``; ``"val"`` is
    the test set for Fashion-MNIST and CIFAR. :func:`shufflenet.data.build_dataset` is the same with the
    dataset's standard transforms by default.

    ``download`` lets torchvision fetch Fashion-MNIST/CIFAR when no local copy is found. ``skip_bad_images``
    (imagefolder only) turns unreadable images into ``None`` samples for :func:`collate_skip_none` instead
    of raising.
    """
    dataset_info(name)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if skip_bad_images and name != "imagefolder":
        raise ValueError(f"skip_bad_images applies to imagefolder only, not {name!r}; drop --skip-bad-images")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if name == "fashion-mnist":
        return _fashion_mnist(root, split == "train", transform, download)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, split == "train", transform, download)
    return _image_folder(root, split, transform, skip_bad_images)


def _fashion_mnist(
    data_dir: Path | None, train: bool, transform: Callable[[Any], Any], download: bool
) -> datasets.FashionMNIST:
    # A given data_dir is the only place looked at: falling back to another copy would train on other data.
    searched = [data_dir, data_dir / "FashionMNIST" / "raw"] if data_dir is not None else []
    for directory in searched or list(FASHION_MNIST_SEARCH_PATH):
        files = _find_idx_files(directory)
        if files is None:
            continue
        # Already unpacked where torchvision looks: read in place, copy nothing.
        if directory.parts[-2:] == ("FashionMNIST", "raw") and all(p.suffix != ".gz" for p in files.values()):
            root = directory.parent.parent
        else:
            root = _cache_root(data_dir)
            _unpack(files, root / "FashionMNIST" / "raw")
        return datasets.FashionMNIST(root, train=train, transform=transform, download=False)

    if data_dir is not None:
        raise _missing_data(
            "no Fashion-MNIST idx files",
            data_dir,
            f"the four idx files {', '.join(_FASHION_MNIST_FILES)} (plain or .gz) there or in "
            f"{data_dir / 'FashionMNIST' / 'raw'}; or drop --data-dir to use the system copy "
            "(apt-get install dataset-fashion-mnist) or a download",
        )
    where = ", ".join(str(d) for d in FASHION_MNIST_SEARCH_PATH) or "an empty search path"
    advice = (
        "install them with `apt-get install dataset-fashion-mnist` (Debian) "
        "or pass --data-dir pointing at the four *-idx*-ubyte.gz files"
    )
    if not download:
        raise FileNotFoundError(f"Fashion-MNIST idx files not found in {where}; {advice}, or allow download")
    root = _cache_root(data_dir)
    try:
        return datasets.FashionMNIST(root, train=train, transform=transform, download=True)
    except Exception as error:  # no network shows up as URLError, RuntimeError or OSError
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {where} and download failed ({_one_line(error)}); {advice}"
        ) from error


def _missing_data(what: str, data_dir: Path, expected: str) -> FileNotFoundError:
    """The one-line error for a given data_dir that lacks what ``expected`` names, saying why."""
    if not data_dir.exists():
        state = " (it does not exist)"
    elif not data_dir.is_dir():
        state = " (it is not a folder)"
    elif not any(data_dir.iterdir()):
        state = " (it is empty)"
    else:
        state = ""
    return FileNotFoundError(f"{what} in --data-dir {data_dir}{state}; expected {expected}")


def _one_line(error: BaseException) -> str:
    # torchvision's download errors span several lines; error messages here stay on one.
    return " ".join(str(error).split())


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four idx files in ``directory``, each gzipped or not; None unless all four are there."""
    found = {}
    for name in _FASHION_MNIST_FILES:
        candidates = [directory / name, directory / f"{name}.gz"]
        existing = [p for p in candidates if p.is_file()]
        if not existing:
            return None
        found[name] = existing[0]
    return found


def _cache_root(data_dir: Path | None) -> Path:
    if data_dir is not None and data_dir.is_dir() and os.access(data_dir, os.W_OK):
        return data_dir
    return default_cache_dir()


def _unpack(files: dict[str, Path], raw_dir: Path) -> None:
    """Gunzip (or copy) each file into ``raw_dir`` unless already there."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        target = raw_dir / name
        if target.exists():
            continue  # written atomically, so an existing file is complete
        # Temp file + rename: a crash or a concurrent rank never leaves a half-written file behind.
        fd, tmp = tempfile.mkstemp(dir=raw_dir, prefix=f".{name}.")
        try:
            opener = gzip.open if source.suffix == ".gz" else open
            with os.fdopen(fd, "wb") as out, opener(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared data_dir must stay readable to all
            os.replace(tmp, target)
        except (gzip.BadGzipFile, EOFError) as error:
            raise ValueError(f"cannot unpack {source}: {error}; replace the file with a good copy") from error
        finally:
            Path(tmp).unlink(missing_ok=True)  # already renamed on success; a leftover on failure


def _cifar(
    name: str, data_dir: Path | None, train: bool, transform: Callable[[Any], Any], download: bool
) -> Dataset:
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if data_dir is not None:
        if data_dir.name == cls.base_folder:  # the batches folder itself was given
            data_dir = data_dir.parent
        needed = [file for file, _ in (*cls.train_list, *cls.test_list)] + [cls.meta["filename"]]
        if not all((data_dir / cls.base_folder / file).is_file() for file in needed):
            raise _missing_data(
                f"{name} not found",
                data_dir,
                f"the python batches folder {data_dir / cls.base_folder}/ ({', '.join(needed)}), "
                f"as unpacked from {cls.filename}",
            )
        download = False  # a given folder is read, never filled from the network
    root = data_dir if data_dir is not None else default_cache_dir()
    try:
        return cls(root, train=train, transform=transform, download=download)
    except Exception as error:  # torchvision: RuntimeError if missing, URLError/OSError if download fails
        how = "download failed" if download else "download=False"
        raise FileNotFoundError(
            f"{name} not found under {root} ({how}: {_one_line(error)}); pass --data-dir containing "
            f"{cls.base_folder}/ or allow download on a machine with internet"
        ) from error


def _image_folder(
    data_dir: Path | None, split: Split, transform: Callable[[Any], Any], skip_bad_images: bool
) -> SkippingImageFolder:
    if data_dir is None:
        raise ValueError(
            "imagefolder needs a data_dir; pass --data-dir pointing at a folder with train/, val/"
        )
    root = data_dir / split
    expected = (
        f"the ImageNet layout {data_dir}/train/<class>/*.jpg and {data_dir}/val/<class>/*.jpg, "
        "one folder per class"
    )
    if not root.is_dir():
        raise _missing_data(f"no {split}/ folder", data_dir, expected)
    if not any(entry.is_dir() for entry in root.iterdir()):
        raise _missing_data(f"no class folders in {split}/", data_dir, expected)
    return SkippingImageFolder(root, transform=transform, skip_bad_images=skip_bad_images)


class SkippingImageFolder(datasets.ImageFolder):
    """``ImageFolder`` whose unreadable images raise an error naming the file, or are skipped.

    With ``skip_bad_images=True`` a bad sample comes back as ``None`` (batch it with
    :func:`collate_skip_none`) and its path is recorded once in ``bad_images``. DataLoader workers are
    separate processes holding their own copy of the dataset, so ``bad_images`` only counts what this
    process read: the full list with ``num_workers=0``, nothing in the main process otherwise.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Any], Any] | None = None,
        *,
        skip_bad_images: bool = False,
    ) -> None:
        super().__init__(root, transform=transform, loader=self._load)
        self.skip_bad_images = skip_bad_images
        self.bad_images: list[str] = []

    def _load(self, path: str) -> Any:
        try:
            return default_loader(path)
        except Exception as error:  # PIL raises many types (OSError, ValueError, SyntaxError...) on bad files
            if not self.skip_bad_images:
                raise ValueError(
                    f"cannot read image {path}: {error}; remove it or pass --skip-bad-images"
                ) from error
            if path not in self.bad_images:  # once per file, not once per epoch
                self.bad_images.append(path)
            return None

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        image = self.loader(path)
        if image is None:
            return None
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


@dataclass(frozen=True)
class ImageSurvey:
    """What a look at a sample of image files' headers found: their median size and most common mode."""

    height: int
    width: int
    mode: str  # PIL's: "RGB", "L" (grey), "RGBA", ...
    looked_at: int


def spread_sample(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spread (ImageFolder lists class by class: every class shows)."""
    if len(items) <= limit:
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def survey_images(paths: Sequence[str], limit: int = 200) -> ImageSurvey:
    """The typical size and mode of the images at ``paths``, from the headers of up to ``limit`` of them
    (PIL reads no pixels until asked). Unreadable files are passed over; ValueError if none can be read."""
    heights, widths, modes = [], [], Counter()
    for path in spread_sample(paths, limit):
        try:
            with Image.open(path) as image:
                widths.append(image.width)
                heights.append(image.height)
                modes[image.mode] += 1
        except Exception:  # PIL raises many types on bad files; the loader names them when training
            continue
    if not heights:
        first = f", e.g. {paths[0]}" if paths else ""
        raise ValueError(f"none of the {min(len(paths), limit)} images looked at could be read{first}")
    return ImageSurvey(
        round(statistics.median(heights)),
        round(statistics.median(widths)),
        modes.most_common(1)[0][0],
        len(heights),
    )


def collate_skip_none(batch: list[Any]) -> Any:
    """``default_collate`` without the ``None`` samples of skipped images; ``None`` if all were bad."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None
