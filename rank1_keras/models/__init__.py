"""Model builders: plain architectures, written once, and every method made from them."""

from rank1_keras.models.lstm_classifier import lstm_classifier
from rank1_keras.models.methods import MethodSettings, build_method_models, inference_model, method_names
from rank1_keras.models.resnet50 import resnet50
from rank1_keras.models.small_cnn import small_cnn
from rank1_keras.models.small_unet import small_unet
from rank1_keras.models.wide_resnet import wide_resnet

__all__ = [
    "MethodSettings",
    "build_method_models",
    "inference_model",
    "lstm_classifier",
    "method_names",
    "resnet50",
    "small_cnn",
    "small_unet",
    "wide_resnet",
]
