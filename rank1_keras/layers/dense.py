"""Dense layers with per-member rank-1 factors: rank-1 BNN and BatchEnsemble."""

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import (
    Rank1Mixin,
    batch_ensemble_defaults,
    serialize_factor_arguments,
)

_FACTORS = ("alpha", "gamma")


@keras.saving.register_keras_serializable(package="rank1_keras")
class DenseRank1(Rank1Mixin, keras.layers.Layer):
    """Rank-1 Bayesian dense layer (Dusenberry et al., 2020).

    For member k (its block of the input's rows, block order; see `MemberRows`):

        y = activation(((x o r_k) W) o s_k + b_k),   i.e.  W_k = W o (r_k s_k^T),

    with W shared and deterministic, r_k = alpha[k] (input_dim) and
    s_k = gamma[k] (units) drawn from a K-component mixture posterior (one
    trainable distribution of shape (K, dim)), and b_k a per-member bias.
    The KL of the factors to their prior, times `kl_weight`, is added to the
    layer's losses, so `model.fit` minimises NLL + KL.

    Args:
        units: output dimension.
        ensemble_size: number of members K (mixture components).
        activation, use_bias: as in `keras.layers.Dense`.
        alpha_initializer, gamma_initializer: `"trainable_normal"` (default),
            `"trainable_cauchy"`, or a point initializer (`"ones"`,
            `"random_sign"`) for BatchEnsemble factors.
        kernel_initializer, bias_initializer: for W and the per-member biases.
        alpha_regularizer, gamma_regularizer: KL regularizers
            (`"normal_kl_divergence"` default) for trainable factors, Keras
            regularizers or None for point factors.
        kernel_regularizer, bias_regularizer, *_constraint: as in Keras.
        use_additive_perturbation: use W_k = W + r_k s_k^T instead.
        sample_per_example: draw the factors once per example instead of once
            per member per call.
        inference: `"sample"` (draw factors at inference too, the paper's
            evaluation) or `"mean"` (use the posterior mode).
        seed: seed of the factor draws.

    Input shape: (R, ..., input_dim), any R (K*B for a tiled batch).
    Output shape: (R, ..., units).

    Example:

    >>> layer = DenseRank1(16, ensemble_size=4)
    >>> tuple(layer(keras.ops.ones((8, 3))).shape)     # 4 members x 2 examples
    (8, 16)
    """

    plain_layer_class = keras.layers.Dense

    def __init__(
        self,
        units,
        ensemble_size=4,
        activation=None,
        use_bias=True,
        alpha_initializer="trainable_normal",
        gamma_initializer="trainable_normal",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        alpha_regularizer="normal_kl_divergence",
        gamma_regularizer="normal_kl_divergence",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        alpha_constraint=None,
        gamma_constraint=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_additive_perturbation=False,
        sample_per_example=False,
        inference="sample",
        seed=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = validation.check_positive_int(units, "units")
        self._init_rank1(ensemble_size, use_additive_perturbation, sample_per_example, inference, seed)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self._init_factor_arguments(_FACTORS, locals())
        self._init_kernel_and_bias_arguments(
            kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"Layer '{self.name}' needs a known last input dimension; got input_shape={input_shape}.")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self._add_member_factor("alpha", input_dim, self.alpha_initializer, self.alpha_regularizer, self.alpha_constraint)
        self._add_member_factor("gamma", self.units, self.gamma_initializer, self.gamma_regularizer, self.gamma_constraint)
        if self.use_bias:
            self._add_member_factor(
                "bias", self.units, self.bias_initializer, self.bias_regularizer, self.bias_constraint
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs, training=False):
        if self.serving_member is not None:
            return self._member_call(inputs, self._kernel_op, training=training)
        factors = self._draw_factors(self._member_rows(inputs), self._samples_factors(training))
        outputs = self._apply_rank1(inputs, factors["alpha"], factors["gamma"], kernel_op=self._kernel_op)
        if self.use_bias:
            outputs = self._add_member_bias(outputs, factors["bias"])
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _kernel_op(self, inputs, kernel=None):
        # ops.matmul, as keras.layers.Dense: tensordot's reshapes cost a dozen ops under TF's tracing.
        return ops.matmul(inputs, self.kernel if kernel is None else kernel)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(self._rank1_config())
        config.update(serialize_factor_arguments(self, _FACTORS))
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
            }
        )
        config.update(self._kernel_and_bias_config())
        return config


@keras.saving.register_keras_serializable(package="rank1_keras")
class DenseBatchEnsemble(DenseRank1):
    """BatchEnsemble dense layer (Wen et al., 2020): the point-factor case of `DenseRank1`.

    y = activation(((x o r_k) W) o s_k + b_k) with r_k, s_k plain trainable
    vectors (N(1, 0.5^2) by default, so members differ from the start;
    `"random_sign"` or `"ones"` on request), no KL.

    Example:

    >>> layer = DenseBatchEnsemble(16, ensemble_size=4)
    >>> tuple(layer(keras.ops.ones((8, 3))).shape)
    (8, 16)
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **batch_ensemble_defaults(kwargs))
