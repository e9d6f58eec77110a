"""Offline data sets for rank1_keras examples and tests."""

from rank1_keras.data.digits import load_digits
from rank1_keras.data.fashion_mnist import DataNotFoundError
from rank1_keras.data.fashion_mnist import load_fashion_mnist
from rank1_keras.data.mimic import load_mimic
from rank1_keras.data.mimic import write_mimic_split
from rank1_keras.data.shifts import SHIFT_CORRUPTIONS
from rank1_keras.data.shifts import corrupt_images
from rank1_keras.data.tfds_images import CIFAR10_CORRUPTIONS
from rank1_keras.data.tfds_images import CORRUPTION_SEVERITIES
from rank1_keras.data.tfds_images import TFDS_IMAGE_DATASETS
from rank1_keras.data.tfds_images import cifar10_corrupted_name
from rank1_keras.data.tfds_images import load_tfds_split
from rank1_keras.data.tfds_images import num_classes
from rank1_keras.data.tfds_images import num_examples
from rank1_keras.data.tfds_images import preprocess_cifar
from rank1_keras.data.tfds_images import preprocess_imagenet
from rank1_keras.data.time_series import load_ucr_uea
from rank1_keras.data.time_series import read_ts

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
