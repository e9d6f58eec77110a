"""Offline data sets for rank1_keras examples and tests.

The loaders of files that ship with packages (Fashion-MNIST, digits, UCR/UEA,
MIMIC splits) need NumPy only and work on every Keras backend. The
TensorFlow Datasets pipelines (`load_tfds_split`, the CIFAR/ImageNet
preprocessing and names) are TensorFlow-only: their names import
`rank1_keras.tensorflow.tfds_images`, and with it TensorFlow, when first used, so
`import rank1_keras.data` works on a machine without TensorFlow.
"""

import importlib

from rank1_keras.data.digits import load_digits
from rank1_keras.data.fashion_mnist import DataNotFoundError
from rank1_keras.data.fashion_mnist import load_fashion_mnist
from rank1_keras.data.mimic import load_mimic
from rank1_keras.data.mimic import write_mimic_split
from rank1_keras.data.shifts import SHIFT_CORRUPTIONS
from rank1_keras.data.shifts import corrupt_images
from rank1_keras.data.time_series import load_ucr_uea
from rank1_keras.data.time_series import read_ts

# TensorFlow-only names, imported from tfds_images on first use (PEP 562).
_TFDS_NAMES = (
    "CIFAR10_CORRUPTIONS",
    "CORRUPTION_SEVERITIES",
    "TFDS_IMAGE_DATASETS",
    "cifar10_corrupted_name",
    "load_tfds_split",
    "num_classes",
    "num_examples",
    "preprocess_cifar",
    "preprocess_imagenet",
)


def __getattr__(name):
    if name in _TFDS_NAMES:
        return getattr(importlib.import_module("rank1_keras.tensorflow.tfds_images"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CIFAR10_CORRUPTIONS",
    "CORRUPTION_SEVERITIES",
    "DataNotFoundError",
    "SHIFT_CORRUPTIONS",
    "TFDS_IMAGE_DATASETS",
    "cifar10_corrupted_name",
    "corrupt_images",
    "load_digits",
    "load_fashion_mnist",
    "load_mimic",
    "load_tfds_split",
    "load_ucr_uea",
    "num_classes",
    "num_examples",
    "preprocess_cifar",
    "preprocess_imagenet",
    "read_ts",
    "write_mimic_split",
]
