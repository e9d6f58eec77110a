"""Plain architectures, written once: every method is made from them (`rank1_keras.methods`)."""

from rank1_keras.models.lstm_classifier import lstm_classifier
from rank1_keras.models.resnet50 import resnet50
from rank1_keras.models.small_cnn import small_cnn
from rank1_keras.models.small_unet import small_unet
from rank1_keras.models.wide_resnet import wide_resnet

__all__ = ["lstm_classifier", "resnet50", "small_cnn", "small_unet", "wide_resnet"]
