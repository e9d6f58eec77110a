"""Offline data sets for rank1_keras examples and tests."""

from rank1_keras.data.digits import load_digits
from rank1_keras.data.fashion_mnist import DataNotFoundError
from rank1_keras.data.fashion_mnist import load_fashion_mnist
from rank1_keras.data.time_series import load_ucr_uea
from rank1_keras.data.time_series import read_ts

__all__ = [
    "DataNotFoundError",
    "load_digits",
    "load_fashion_mnist",
    "load_ucr_uea",
    "read_ts",
]
