"""Learning-rate schedules of the papers' training setups."""

import keras
from keras import ops

from rank1_keras import validation


@keras.saving.register_keras_serializable(package="rank1_keras")
class WarmupPiecewiseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then a step decay (uncertainty-baselines' CIFAR/ImageNet schedule).

    With E = step / steps_per_epoch (fractional epochs):

        lr(step) = base * E / warmup_epochs                    while E < warmup_epochs
        lr(step) = base * decay_ratio ** #{e in decay_epochs : E >= e}   after

    Args:
        base_learning_rate: the peak rate (already scaled with the global batch).
        steps_per_epoch: optimizer steps per epoch.
        warmup_epochs: epochs of linear warm-up from 0 (0 for none).
        decay_epochs: increasing epochs at which the rate is multiplied by
            `decay_ratio`.
        decay_ratio: the factor at each decay epoch.

    Example:

    >>> schedule = WarmupPiecewiseDecay(0.1, 10, warmup_epochs=1, decay_epochs=(2, 3), decay_ratio=0.2)
    >>> [round(float(schedule(step)), 4) for step in (5, 10, 25, 35)]
    [0.05, 0.1, 0.02, 0.004]
    """

    def __init__(self, base_learning_rate, steps_per_epoch, warmup_epochs=0.0, decay_epochs=(), decay_ratio=0.2):
        self.base_learning_rate = validation.check_positive_finite(base_learning_rate, "base_learning_rate")
        self.steps_per_epoch = validation.check_positive_int(steps_per_epoch, "steps_per_epoch")
        if not warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0; got {warmup_epochs}.")
        self.warmup_epochs = float(warmup_epochs)
        self.decay_epochs = tuple(float(e) for e in decay_epochs)
        if any(b <= a for a, b in zip(self.decay_epochs, self.decay_epochs[1:])):
            raise ValueError(f"decay_epochs must increase; got {list(decay_epochs)}.")
        self.decay_ratio = validation.check_positive_finite(decay_ratio, "decay_ratio")

    def __call__(self, step):
        epoch = ops.cast(step, "float32") / self.steps_per_epoch
        rate = ops.convert_to_tensor(self.base_learning_rate, "float32")
        for boundary in self.decay_epochs:
            rate = ops.where(epoch >= boundary, rate * self.decay_ratio, rate)
        if self.warmup_epochs > 0:
            rate = ops.where(epoch < self.warmup_epochs, self.base_learning_rate * epoch / self.warmup_epochs, rate)
        return rate

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_epochs": self.warmup_epochs,
            "decay_epochs": list(self.decay_epochs),
            "decay_ratio": self.decay_ratio,
        }
