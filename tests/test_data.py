"""Tests for rank1_keras.data (offline Fashion-MNIST IDX loader)."""

import ast
import gzip
import os
import struct

import numpy as np
import pytest

from rank1_keras.data import DataNotFoundError
from rank1_keras.data import load_fashion_mnist
from rank1_keras.data import fashion_mnist

IMAGE_FILES = {
    "train": "train-images-idx3-ubyte",
    "test": "t10k-images-idx3-ubyte",
}
LABEL_FILES = {
    "train": "train-labels-idx1-ubyte",
    "test": "t10k-labels-idx1-ubyte",
}


def _idx_bytes(array, magic):
    # Written with struct (not the module under test): big-endian int32 magic,
    # one big-endian uint32 per dimension, then the raw uint8 data.
    header = struct.pack(">i", magic) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write(path, payload, compress):
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def _make_split(directory, split="train", num_examples=3, compress=True,
                image_magic=2051, label_magic=2049, num_labels=None):
    """Writes a tiny split with known content and returns (images, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(num_examples, 28, 28), dtype=np.uint8)
    # Make sure both extremes are present to check the [0, 1] scaling.
    images[0, 0, 0] = 0
    images[0, 0, 1] = 255
    labels = (np.arange(num_labels or num_examples) * 7 % 10).astype(np.uint8)
    _write(directory / IMAGE_FILES[split], _idx_bytes(images, image_magic),
           compress)
    _write(directory / LABEL_FILES[split], _idx_bytes(labels, label_magic),
           compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip_normalized(tmp_path, split, compress):
    raw_images, raw_labels = _make_split(tmp_path, split=split,
                                         num_examples=4, compress=compress)
    images, labels = load_fashion_mnist(data_dir=tmp_path, split=split)

    assert images.shape == (4, 28, 28, 1)
    assert images.dtype == np.float32
    assert labels.shape == (4,)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 7, 4, 1])
    np.testing.assert_array_equal(labels, raw_labels)
    # Independent float64 reference for x / 255.
    np.testing.assert_allclose(images[..., 0], raw_images / 255.0,
                               rtol=0, atol=1e-7)
    assert images.min() == 0.0
    assert images.max() == 1.0


def test_round_trip_unnormalized(tmp_path):
    raw_images, raw_labels = _make_split(tmp_path)
    images, labels = load_fashion_mnist(data_dir=str(tmp_path),
                                        normalize=False)
    assert images.dtype == np.uint8
    assert images.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(images[..., 0], raw_images)
    np.testing.assert_array_equal(labels, raw_labels)
    assert labels.dtype == np.int64
    # The result must be writeable (not a view on the read-only file bytes).
    images[0, 0, 0, 0] = 1


def test_environment_variable_sets_default_dir(tmp_path, monkeypatch):
    _, raw_labels = _make_split(tmp_path, split="test")
    monkeypatch.setenv("RANK1_KERAS_FASHION_MNIST_DIR", str(tmp_path))
    _, labels = load_fashion_mnist(split="test")
    np.testing.assert_array_equal(labels, raw_labels)


def test_data_dir_argument_overrides_environment_variable(tmp_path,
                                                          monkeypatch):
    _make_split(tmp_path, num_examples=2)
    monkeypatch.setenv("RANK1_KERAS_FASHION_MNIST_DIR",
                       str(tmp_path / "nonexistent"))
    images, _ = load_fashion_mnist(data_dir=tmp_path)
    assert images.shape == (2, 28, 28, 1)


@pytest.mark.parametrize("which", ["images", "labels"])
def test_corrupt_magic_number_raises(tmp_path, which):
    if which == "images":
        _make_split(tmp_path, image_magic=2049)
        name = IMAGE_FILES["train"]
    else:
        _make_split(tmp_path, label_magic=2051)
        name = LABEL_FILES["train"]
    with pytest.raises(ValueError, match=f"{name}.gz.*magic number"):
        load_fashion_mnist(data_dir=tmp_path)


def test_image_label_count_mismatch_raises(tmp_path):
    _make_split(tmp_path, num_examples=3, num_labels=2)
    with pytest.raises(ValueError, match="3 images.*2 labels"):
        load_fashion_mnist(data_dir=tmp_path)


def test_truncated_file_raises(tmp_path):
    _make_split(tmp_path, compress=False)
    path = tmp_path / IMAGE_FILES["train"]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=IMAGE_FILES["train"]):
        load_fashion_mnist(data_dir=tmp_path)


def test_wrong_image_size_raises(tmp_path):
    _make_split(tmp_path)
    images = np.zeros((3, 32, 32), dtype=np.uint8)
    _write(tmp_path / IMAGE_FILES["train"], _idx_bytes(images, 2051), True)
    with pytest.raises(ValueError, match="28x28"):
        load_fashion_mnist(data_dir=tmp_path)


def test_not_gzip_raises(tmp_path):
    _make_split(tmp_path)
    (tmp_path / (LABEL_FILES["train"] + ".gz")).write_bytes(b"not gzip data")
    with pytest.raises(ValueError, match=LABEL_FILES["train"]):
        load_fashion_mnist(data_dir=tmp_path)


def test_missing_files_raise_data_not_found(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(data_dir=empty, split="test")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(empty) in message
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "data_dir" in message


def test_missing_labels_file_is_named(tmp_path):
    _make_split(tmp_path)
    os.remove(tmp_path / (LABEL_FILES["train"] + ".gz"))
    with pytest.raises(DataNotFoundError, match=LABEL_FILES["train"]):
        load_fashion_mnist(data_dir=tmp_path)


@pytest.mark.parametrize("split", ["validation", "TRAIN", "", None])
def test_bad_split_raises(tmp_path, split):
    with pytest.raises(ValueError,
                       match=r"split must be one of.*'train'.*'test'"):
        load_fashion_mnist(data_dir=tmp_path, split=split)


def test_class_names():
    classes = fashion_mnist.FASHION_MNIST_CLASSES
    assert isinstance(classes, tuple)
    assert len(classes) == 10 == len(set(classes))
    assert classes[0] == "T-shirt/top"
    assert classes[9] == "Ankle boot"


def test_module_imports_only_numpy_gzip_os():
    # Checked on the source, since importing the package may pull in Keras.
    with open(fashion_mnist.__file__) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"numpy", "gzip", "os"}


@pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEFAULT_FASHION_MNIST_DIR),
    reason=(
        f"{fashion_mnist.DEFAULT_FASHION_MNIST_DIR} is absent; install it "
        "with `apt-get install -y dataset-fashion-mnist`"
    ),
)
def test_real_debian_files():
    data_dir = fashion_mnist.DEFAULT_FASHION_MNIST_DIR
    for split, size in [("train", 60000), ("test", 10000)]:
        images, labels = load_fashion_mnist(data_dir=data_dir, split=split)
        assert images.shape == (size, 28, 28, 1)
        assert images.dtype == np.float32
        assert labels.shape == (size,)
        assert labels.dtype == np.int64
        assert 0.0 <= images.min() and images.max() <= 1.0
        # Fashion-MNIST is exactly balanced: 6,000 / 1,000 per class.
        np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                      np.full(10, size // 10))
