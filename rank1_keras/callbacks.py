"""Training callbacks for rank-1 models."""

import keras

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import Rank1Mixin


def rank1_layers(model):
    """Every rank-1 / BatchEnsemble layer inside `model`, nested ones included.

    Keras 3 has no public recursive layer iterator; `_flatten_layers` is the
    one Keras itself uses to collect losses, so we read it (never patch it).
    """
    return [layer for layer in model._flatten_layers(include_self=True) if isinstance(layer, Rank1Mixin)]


@keras.saving.register_keras_serializable(package="rank1_keras")
class KLAnnealing(keras.callbacks.Callback):
    """Ramps the KL weight of every rank-1 layer linearly from 0 to 1.

    At step `b` of epoch `e` (both from 0) with `S` steps per epoch the weight
    is min(1, (e + (b + 1) / S) / annealing_epochs): it reaches 1 at the end of
    epoch `annealing_epochs - 1` and stays there. When the number of steps is
    unknown the weight moves once per epoch, to min(1, (e + 1) / annealing_epochs).
    The weight depends only on the position in training, so a run resumed
    with `initial_epoch` continues the same schedule. The current weight is
    logged as `kl_weight`.

    Args:
        annealing_epochs: epochs over which the weight rises (200 of 250 on
            CIFAR in the paper); positive.

    Example:

        model.fit(x, y, epochs=5, callbacks=[KLAnnealing(annealing_epochs=3)])
    """

    def __init__(self, annealing_epochs):
        super().__init__()
        self.annealing_epochs = validation.check_positive_finite(annealing_epochs, "annealing_epochs")
        self._epoch = 0
        self.weight = 0.0

    def weight_at(self, epoch, step=None, steps_per_epoch=None):
        progress = epoch + 1 if not steps_per_epoch else epoch + (step + 1) / steps_per_epoch
        return min(1.0, progress / self.annealing_epochs)

    def _set(self, weight):
        self.weight = weight
        for layer in rank1_layers(self.model):
            if layer.kl_weight is not None:
                layer.kl_weight.assign(weight)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if not self.params.get("steps"):
            self._set(self.weight_at(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps")
        if steps:
            self._set(self.weight_at(self._epoch, batch, steps))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["kl_weight"] = self.weight

    def get_config(self):
        return {"annealing_epochs": self.annealing_epochs}
