"""Monte-Carlo dropout: dropout that stays on at inference."""

import keras

from rank1_keras import validation


@keras.saving.register_keras_serializable(package="rank1_keras")
class MCDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` that also drops at inference (Gal & Ghahramani, 2016).

    Each forward pass is one sample of the approximate posterior; averaging
    the probabilities of S passes (a batch tiled S times by
    `rank1_keras.convert(..., method="dropout", num_samples=S)`) gives the
    MC-dropout prediction. `active=False` turns it into plain dropout (off at
    inference), e.g. to compare a converted model with the original.

    Example:

    >>> layer = MCDropout(0.5, seed=1)
    >>> bool((keras.ops.convert_to_numpy(layer(keras.ops.ones((1, 100)))) == 0).any())   # drops with training=False
    True
    """

    def __init__(self, rate, noise_shape=None, seed=None, active=True, **kwargs):
        validation.check_probability(rate, "rate")
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)
        self.active = bool(active)

    def call(self, inputs, training=False):
        return super().call(inputs, training=bool(training) or self.active)

    def get_config(self):
        return {**super().get_config(), "active": self.active}
