"""The output layer of a Gaussian regression head: positive scales from raw numbers."""

import keras

from rank1_keras import validation


@keras.saving.register_keras_serializable(package="rank1_keras")
class GaussianParameters(keras.layers.Layer):
    """Turns (..., 2*D) raw outputs into D means and D positive scales.

        mean = z[..., :D],     scale = softplus(z[..., D:]) + min_scale

    End a regression model with `Dense(2 * D)` and this layer; the ensemble
    losses `AverageGaussianNLL` / `MixtureGaussianNLL`, `convert` (which
    recognises it and averages members as a Gaussian mixture) and the
    regression metrics read its output. It has no weights, so `convert`
    keeps it shared by the members.

    Args:
        min_scale: a floor added to every scale, so a member cannot put
            infinite density on a training target.

    Example:

    >>> [round(float(v), 4) for v in GaussianParameters()(keras.ops.zeros((1, 2)))[0]]   # softplus(0) + 1e-3
    [0.0, 0.6941]
    """

    def __init__(self, min_scale=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.min_scale = validation.check_positive_finite(min_scale, "min_scale")

    def build(self, input_shape):
        width = input_shape[-1]
        if width is None or width % 2:
            raise ValueError(
                f"Layer '{self.name}' needs an even last input dimension (D means, then D raw scales); got "
                f"input_shape={input_shape}."
            )

    def call(self, inputs):
        outputs = inputs.shape[-1] // 2
        mean, raw_scale = inputs[..., :outputs], inputs[..., outputs:]
        return keras.ops.concatenate([mean, keras.ops.softplus(raw_scale) + self.min_scale], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_scale": self.min_scale}
