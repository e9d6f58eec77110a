"""Model builders, one definition per architecture, every method from it."""

from rank1_keras.models.small_cnn import METHODS, build_small_cnn, inference_model

__all__ = ["METHODS", "build_small_cnn", "inference_model"]
