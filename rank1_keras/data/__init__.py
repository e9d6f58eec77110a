"""Offline data sets for rank1_keras examples and tests."""

from rank1_keras.data.fashion_mnist import DataNotFoundError
from rank1_keras.data.fashion_mnist import load_fashion_mnist

__all__ = ["DataNotFoundError", "load_fashion_mnist"]
