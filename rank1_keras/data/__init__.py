"""Offline data sets for rank1_keras examples and tests.

The loaders of files that ship with packages (Fashion-MNIST, digits, UCR/UEA,
MIMIC splits) need NumPy only and work on every Keras backend. The
TensorFlow Datasets pipelines (`load_tfds_split`, the CIFAR/ImageNet
preprocessing and names) are TensorFlow-only and live in
`rank1_keras.tensorflow.tfds_images`.
"""

from rank1_keras.data.digits import load_digits
from rank1_keras.data.fashion_mnist import DataNotFoundError
from rank1_keras.data.fashion_mnist import load_fashion_mnist
from rank1_keras.data.mimic import load_mimic
from rank1_keras.data.mimic import write_mimic_split
from rank1_keras.data.shifts import SHIFT_CORRUPTIONS
from rank1_keras.data.shifts import corrupt_images
from rank1_keras.data.time_series import load_ucr_uea
from rank1_keras.data.time_series import read_ts

__all__ = [
    "DataNotFoundError",
    "SHIFT_CORRUPTIONS",
    "corrupt_images",
    "load_digits",
    "load_fashion_mnist",
    "load_mimic",
    "load_ucr_uea",
    "read_ts",
    "write_mimic_split",
]
