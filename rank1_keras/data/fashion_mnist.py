"""Offline loader for the Fashion-MNIST image classification data set.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, "Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747) was
released by Zalando Research (https://github.com/zalandoresearch/fashion-mnist)
under the MIT licence. It holds 70,000 greyscale 28x28 images of clothing in
10 balanced classes: 60,000 for training and 10,000 for testing.

This module never touches the network. It reads the four IDX files shipped by
Debian's ``dataset-fashion-mnist`` package, installed with
``apt-get install -y dataset-fashion-mnist``, into
``/usr/share/datasets/fashion-mnist`` (``DEFAULT_FASHION_MNIST_DIR``). Another
directory can be given with the ``data_dir`` argument or, as the default, with
the ``RANK1_KERAS_FASHION_MNIST_DIR`` environment variable.

The IDX format (http://yann.lecun.com/exdb/mnist/) is a big-endian header
``0x00 0x00 <dtype> <ndim>`` (read as one int32 "magic number"; 2051 for the
3-D ``uint8`` image files, 2049 for the 1-D ``uint8`` label files), then one
big-endian uint32 per dimension, then the raw row-major data. It is parsed
here with NumPy only, so importing this module does not import TensorFlow.

Example:

>>> images, labels = load_fashion_mnist(split="test")
>>> images.shape, images.dtype, labels.shape, labels.dtype
((10000, 28, 28, 1), dtype('float32'), (10000,), dtype('int64'))
>>> FASHION_MNIST_CLASSES[labels[0]]
'Ankle boot'
"""

import gzip
import os

import numpy as np

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the files."""

FASHION_MNIST_DIR_ENV_VAR = "RANK1_KERAS_FASHION_MNIST_DIR"
"""Environment variable that, when set, replaces the default directory."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names, indexed by the integer label (0 to 9)."""

INSTALL_COMMAND = "apt-get install -y dataset-fashion-mnist"

IMAGE_MAGIC_NUMBER = 2051  # 0x00000803: unsigned byte data, 3 dimensions.
LABEL_MAGIC_NUMBER = 2049  # 0x00000801: unsigned byte data, 1 dimension.
IMAGE_SIZE = 28

# File name stems per split; each is read from "<stem>.gz" or, failing that,
# from the uncompressed "<stem>".
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLIT_SIZES = {"train": 60000, "test": 10000}


class DataNotFoundError(FileNotFoundError):
    """Raised when the Fashion-MNIST files are not in the data directory."""


def load_fashion_mnist(data_dir=None, split="train", normalize=True):
    """Loads one split of Fashion-MNIST from local IDX files.

    Args:
        data_dir: Directory holding the IDX files, gzipped (``*.gz``) or not.
            Defaults to the ``RANK1_KERAS_FASHION_MNIST_DIR`` environment
            variable when set, else to ``DEFAULT_FASHION_MNIST_DIR``.
        split: ``"train"`` (60,000 examples) or ``"test"`` (10,000 examples).
        normalize: If ``True``, images are ``float32`` scaled to ``[0, 1]``
            (``x / 255``); if ``False`` they are the raw ``uint8`` values.

    Returns:
        A tuple ``(images, labels)``: images of shape ``(N, 28, 28, 1)`` (a
        trailing channel axis, as Keras ``Conv2D`` expects with
        ``channels_last``) and ``int64`` labels of shape ``(N,)`` in
        ``[0, 10)``; see ``FASHION_MNIST_CLASSES`` for their names.

    Raises:
        ValueError: If ``split`` is not ``"train"`` or ``"test"``, or if a
            file is corrupt (the message names the file).
        DataNotFoundError: If a file is missing (the message names the
            directory, the file and how to install it).

    Example:

    >>> images, labels = load_fashion_mnist(split="train")
    >>> images.shape, float(images.max())
    ((60000, 28, 28, 1), 1.0)
    """
    if split not in _SPLIT_FILES:
        raise ValueError(
            f"split must be one of {tuple(_SPLIT_FILES)}; got {split!r}"
        )
    if data_dir is None:
        # An empty variable counts as unset (`VAR= cmd` restores the default).
        data_dir = os.environ.get(FASHION_MNIST_DIR_ENV_VAR) or (
            DEFAULT_FASHION_MNIST_DIR
        )
    data_dir = os.fspath(data_dir)

    images_stem, labels_stem = _SPLIT_FILES[split]
    # Locate both files before reading either, so a missing labels file is
    # reported without first decompressing 47 MB of images.
    images_path = _find_file(data_dir, images_stem)
    labels_path = _find_file(data_dir, labels_stem)

    images = _read_idx(images_path, IMAGE_MAGIC_NUMBER, ndim=3)
    labels = _read_idx(labels_path, LABEL_MAGIC_NUMBER, ndim=1)

    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"Corrupt Fashion-MNIST file {images_path}: expected images of "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} pixels; got "
            f"{images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Corrupt Fashion-MNIST files: {images_path} holds "
            f"{images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(
            f"Corrupt Fashion-MNIST file {labels_path}: labels must be in "
            f"[0, {len(FASHION_MNIST_CLASSES)}); found {int(labels.max())}"
        )

    images = images[..., np.newaxis]
    if normalize:
        images = images.astype(np.float32) / np.float32(255.0)
    return images, labels.astype(np.int64)


def _find_file(data_dir, stem):
    """Returns the path of ``<stem>.gz``, else ``<stem>``, in ``data_dir``."""
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(
        f"Fashion-MNIST file {stem}.gz (or uncompressed {stem}) not found in "
        f"directory {data_dir!r}. Install the Debian package with "
        f"`{INSTALL_COMMAND}` (files go to {DEFAULT_FASHION_MNIST_DIR}), or "
        f"pass the directory holding the IDX files as the `data_dir` argument "
        f"(or set the {FASHION_MNIST_DIR_ENV_VAR} environment variable)."
    )


def _read_idx(path, magic_number, ndim):
    """Parses an unsigned-byte IDX file into an ``ndim``-D ``uint8`` array."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError) as e:
        # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
        raise ValueError(f"Corrupt Fashion-MNIST file {path}: {e}") from e

    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise ValueError(
            f"Corrupt Fashion-MNIST file {path}: {len(data)} bytes is shorter "
            f"than the {header_size}-byte IDX header"
        )
    # Big-endian int32 magic number followed by one uint32 per dimension.
    found_magic = int(np.frombuffer(data, dtype=">i4", count=1)[0])
    if found_magic != magic_number:
        raise ValueError(
            f"Corrupt Fashion-MNIST file {path}: bad magic number "
            f"{found_magic}; expected {magic_number} (uint8 data, {ndim} "
            f"dimension{'s' if ndim > 1 else ''})"
        )
    shape = tuple(
        int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    )
    expected_bytes = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_bytes:
        raise ValueError(
            f"Corrupt Fashion-MNIST file {path}: header dimensions {shape} "
            f"need {expected_bytes} bytes; file has {len(data)}"
        )
    # Copy so the array is writeable and does not pin the bytes object.
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(
        shape
    ).copy()
