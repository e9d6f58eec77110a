"""LP-BNN layers: BatchEnsemble layers whose input-side factor goes through a VAE.

Franchi et al., "Encoding the latent posterior of Bayesian Neural Networks
for uncertainty quantification" (TPAMI 2024). The layer is a BatchEnsemble
layer (point factors r_k = alpha[k], s_k = gamma[k], per-member bias, shared
W), except that the input-side table alpha (K, d) is encoded by a small VAE
of the layer and its reconstruction replaces it in the forward pass:

    h      = relu(alpha W_e + b_e)                 (d -> latent_dim)
    mu     = h W_mu + b_mu,  log_var = h W_v + b_v  (two separate heads)
    z      = mu + exp(log_var / 2) * eps,  eps ~ N(0, I)   (one draw per member)
    r_hat  = z W_d + b_d                           (latent_dim -> d, no activation)

    member k:  y = activation(((x o r_hat_k) W) o s_k + b_k)

and the layer adds to its losses

    latent_loss_weight * [ mean_{k,j} (r_hat_kj - alpha_kj)^2
                           + mean_k -1/2 sum_j (1 + log_var_kj - mu_kj^2 - exp(log_var_kj)) ].

The VAE reconstructs the (K, d) factor table, never a per-member kernel. The
rank-1 mechanics stay in `Rank1Mixin`: `LatentPosteriorMixin` only replaces
the encoded tables in `_draw_member_tables`.
"""

import dataclasses
import functools
import math

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.convolutional import Conv1DBatchEnsemble, Conv2DBatchEnsemble
from rank1_keras.layers.dense import DenseBatchEnsemble
from rank1_keras.layers.recurrent import LSTMCellBatchEnsemble
from rank1_keras.probability import initializers as rank1_initializers


def _mean(values):
    """The mean of every entry of a static-shape tensor, as sum / count.

    Not `ops.mean`: on JAX and PyTorch Keras computes the mean of float64
    values in float32. TensorFlow's reduce_mean is this same sum and division.
    """
    values = ops.convert_to_tensor(values)
    return ops.sum(values) / math.prod(values.shape)


def reconstruction_error(factor, decoded):
    """MSE between a (K, d) factor table and its reconstruction, averaged over K and d."""
    factor, decoded = ops.convert_to_tensor(factor), ops.convert_to_tensor(decoded)
    return _mean(ops.square(decoded - factor))


def kl_to_standard_normal(mean, log_variance):
    """KL(N(mean, exp(log_variance)) || N(0, I)) in closed form.

    Summed over the latent dimensions (last axis) and averaged over the
    members (first axis).
    """
    mean, log_variance = ops.convert_to_tensor(mean), ops.convert_to_tensor(log_variance)
    per_member = -0.5 * ops.sum(1.0 + log_variance - ops.square(mean) - ops.exp(log_variance), axis=-1)
    return _mean(per_member)


@dataclasses.dataclass
class LatentPosterior:
    """The VAE weights of one encoded factor table, by role.

    Attributes:
        factor_name: the table it encodes ("alpha", "recurrent_alpha").
        encoder_kernel, encoder_bias: d -> latent_dim, followed by ReLU.
        mean_kernel, mean_bias: the head of mu.
        log_variance_kernel, log_variance_bias: the head of log sigma^2.
        decoder_kernel, decoder_bias: latent_dim -> d, no activation.
    """

    factor_name: str
    encoder_kernel: object
    encoder_bias: object
    mean_kernel: object
    mean_bias: object
    log_variance_kernel: object
    log_variance_bias: object
    decoder_kernel: object
    decoder_bias: object

    @property
    def variables(self):
        return [
            self.encoder_kernel,
            self.encoder_bias,
            self.mean_kernel,
            self.mean_bias,
            self.log_variance_kernel,
            self.log_variance_bias,
            self.decoder_kernel,
            self.decoder_bias,
        ]


def _affine(inputs, kernel, bias):
    return ops.matmul(inputs, kernel) + bias


class LatentPosteriorMixin:
    """Encodes chosen point-factor tables of a `Rank1Mixin` layer with per-table VAEs.

    A layer class mixes this in before a BatchEnsemble layer class and calls
    `_init_latent_posterior` at the end of `__init__`. The mixin builds the
    VAE weights after the base layer's `build`, and its `_draw_member_tables`
    replaces each encoded table by the decoded table and adds the
    VAE loss (once per call, or once per sequence for an LSTM cell, whose
    factors are drawn outside the time loop).

    Sampling follows `Rank1Mixin._samples_factors`: z is drawn in training,
    and at inference when `inference="sample"`; otherwise z = mu. Each draw
    takes one seed of `factor_seed_generator` per encoded table, in
    `latent_factor_names` order, and draws eps of shape (K, latent_dim): one
    latent sample per member, shared by that member's rows.
    """

    def _init_latent_posterior(self, latent_factor_names, latent_dim, latent_loss_weight):
        if self.sample_per_example:
            raise ValueError(
                "sample_per_example must be False for LP-BNN layers: the latent vector is drawn "
                "once per member per call; got sample_per_example=True."
            )
        # A VAE reconstructs a table of numbers: every factor is a point factor.
        for name in self._factor_argument_names:
            initializer = getattr(self, f"{name}_initializer")
            if isinstance(initializer, rank1_initializers.TrainableInitializer):
                raise ValueError(
                    f"{name}_initializer must be a point initializer (e.g. 'ones', 'random_sign') "
                    f"for LP-BNN layers, whose factors are BatchEnsemble vectors; got the trainable "
                    f"{type(initializer).__name__}."
                )
        self.latent_factor_names = tuple(latent_factor_names)
        self.latent_dim = validation.check_positive_int(latent_dim, "latent_dim")
        self.latent_loss_weight = validation.check_non_negative_finite(latent_loss_weight, "latent_loss_weight")
        self._latent_posteriors = {}

    def build(self, input_shape):
        super().build(input_shape)
        for name in self.latent_factor_names:
            self._latent_posteriors[name] = self._add_latent_posterior(name)

    def _add_latent_posterior(self, name):
        dim = int(self._member_factors[name].variable.shape[-1])
        latent_dim = self.latent_dim

        def weight(role, shape, initializer=None):
            # The official LP-BNN is PyTorch: its nn.Linear kernels start U(+-1/sqrt(fan_in)).
            # (Glorot on the decoder of a narrow layer gave the decoded factor a noise std
            # above 1 at the start, and LSTM models on the small series did not learn.)
            initializer = initializer or keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
            return self.add_weight(name=f"{name}_{role}", shape=shape, initializer=initializer, trainable=True)

        return LatentPosterior(
            factor_name=name,
            encoder_kernel=weight("encoder_kernel", (dim, latent_dim)),
            encoder_bias=weight("encoder_bias", (latent_dim,), "zeros"),
            mean_kernel=weight("mean_kernel", (latent_dim, latent_dim)),
            mean_bias=weight("mean_bias", (latent_dim,), "zeros"),
            log_variance_kernel=weight("log_variance_kernel", (latent_dim, latent_dim)),
            log_variance_bias=weight("log_variance_bias", (latent_dim,), "zeros"),
            decoder_kernel=weight("decoder_kernel", (latent_dim, dim)),
            # Ones, so that the decoded factor starts centred on the BatchEnsemble
            # default alpha = 1 (a converted model starts near the original).
            decoder_bias=weight("decoder_bias", (dim,), "ones"),
        )

    @property
    def latent_posteriors(self):
        """The VAEs of the layer, {factor name: `LatentPosterior`}."""
        return dict(self._latent_posteriors)

    @property
    def latent_variables(self):
        """Every VAE weight of the layer (encoders, heads and decoders)."""
        return [v for posterior in self._latent_posteriors.values() for v in posterior.variables]

    def _encode(self, posterior, factor):
        hidden = ops.relu(_affine(factor, posterior.encoder_kernel, posterior.encoder_bias))
        mean = _affine(hidden, posterior.mean_kernel, posterior.mean_bias)
        log_variance = _affine(hidden, posterior.log_variance_kernel, posterior.log_variance_bias)
        return mean, log_variance

    def _draws_at_inference(self):
        return self.inference == "sample"  # z ~ q(z | r) at inference too

    def _draw_member_tables(self, rows, sample, add_kl=True):
        values = super()._draw_member_tables(rows, sample, add_kl)
        loss_terms = []
        for name, posterior in self._latent_posteriors.items():
            factor = ops.convert_to_tensor(self._member_factors[name].variable)
            mean, log_variance = self._encode(posterior, factor)
            latent = mean
            if sample:
                # One eps per member: (K, latent_dim), the next seed of the layer's generator.
                noise = keras.random.normal(
                    (self.ensemble_size, self.latent_dim), dtype=mean.dtype, seed=self.factor_seed_generator
                )
                latent = mean + ops.exp(0.5 * log_variance) * noise
            decoded = _affine(latent, posterior.decoder_kernel, posterior.decoder_bias)
            values[name] = decoded
            if add_kl:
                # In float32 whatever the compute dtype, like the other losses.
                as_float = [ops.cast(t, "float32") for t in (factor, decoded, mean, log_variance)]
                loss_terms.append(
                    reconstruction_error(as_float[0], as_float[1]) + kl_to_standard_normal(as_float[2], as_float[3])
                )
        if loss_terms:
            # The layer's term is the mean over its VAEs (one for Dense/Conv).
            self.add_loss(self.latent_loss_weight * functools.reduce(ops.add, loss_terms) / len(loss_terms))
        return values

    def get_config(self):
        config = super().get_config()
        config.update({"latent_dim": self.latent_dim, "latent_loss_weight": self.latent_loss_weight})
        return config


_DOC_ARGS = """
    Args:
        latent_dim: size of the VAE's hidden layer and latent vector (32 in
            the paper).
        latent_loss_weight: w, the weight of this layer's VAE loss (MSE + KL).
            `convert(model, "lpbnn", latent_loss_weight=w)` gives each layer
            w / (number of converted LP-BNN layers), so the model's total is
            w times the average over layers, as in the paper.
        inference: `"mean"` (default: z = mu at inference, so one pass is
            deterministic, as the paper's single-pass evaluation) or
            `"sample"` (z is drawn at inference too, so S passes give S
            samples). In training z is always sampled.
        seed: seed of the latent draws (`factor_seed_generator`).
        **kwargs: every argument of the BatchEnsemble base (alpha/gamma
            point initializers, kernel/bias arguments, activation, use_bias,
            use_additive_perturbation, ...). Trainable (stochastic) factor
            initializers and `sample_per_example=True` are rejected.
"""


@keras.saving.register_keras_serializable(package="rank1_keras")
class DenseLatentPosterior(LatentPosteriorMixin, DenseBatchEnsemble):
    """LP-BNN dense layer: BatchEnsemble dense whose alpha table is encoded by a VAE.

    y_k = activation(((x o r_hat_k) W) o s_k + b_k), with r_hat_k member k's
    row of the VAE reconstruction of alpha (see the module docstring), and
    latent_loss_weight * (MSE + KL) added to the layer's losses.
    %s
    Example:

    >>> layer = DenseLatentPosterior(16, ensemble_size=4, latent_dim=8)
    >>> tuple(layer(keras.ops.ones((8, 3))).shape)     # 4 members x 2 examples
    (8, 16)
    >>> len(layer.latent_variables)      # kernel and bias of encoder, two heads, decoder
    8
    >>> len(layer.losses)                # latent_loss_weight * (MSE + KL)
    1
    """

    _factor_argument_names = ("alpha", "gamma")

    def __init__(
        self,
        units,
        ensemble_size=4,
        latent_dim=32,
        latent_loss_weight=1.0,
        inference="mean",
        seed=None,
        **kwargs,
    ):
        super().__init__(units, ensemble_size=ensemble_size, inference=inference, seed=seed, **kwargs)
        self._init_latent_posterior(("alpha",), latent_dim, latent_loss_weight)


class _ConvLatentPosterior(LatentPosteriorMixin):
    """The constructor the LP-BNN convolutions share; mixed in before a BatchEnsemble convolution."""

    _factor_argument_names = ("alpha", "gamma")

    def __init__(
        self,
        filters,
        kernel_size,
        ensemble_size=4,
        latent_dim=32,
        latent_loss_weight=1.0,
        inference="mean",
        seed=None,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, ensemble_size=ensemble_size, inference=inference, seed=seed, **kwargs)
        self._init_latent_posterior(("alpha",), latent_dim, latent_loss_weight)


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv1DLatentPosterior(_ConvLatentPosterior, Conv1DBatchEnsemble):
    """LP-BNN 1-D convolution: alpha (input channels) is encoded by a VAE.

    y_k = activation(conv(x o r_hat_k, W) o s_k + b_k); conv arguments as
    `keras.layers.Conv1D` (`padding` may be "causal").
    %s
    Example:

    >>> tuple(Conv1DLatentPosterior(8, 3, ensemble_size=2)(keras.ops.ones((4, 10, 3))).shape)
    (4, 8, 8)
    """


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv2DLatentPosterior(_ConvLatentPosterior, Conv2DBatchEnsemble):
    """LP-BNN 2-D convolution: alpha (input channels) is encoded by a VAE.

    y_k = activation(conv(x o r_hat_k, W) o s_k + b_k); conv arguments as
    `keras.layers.Conv2D`. The latent sample changes the output of every
    convolution, not only of the last dense layer.
    %s
    Example:

    >>> layer = Conv2DLatentPosterior(8, 3, ensemble_size=2, padding="same")
    >>> tuple(layer(keras.ops.ones((4, 5, 5, 3))).shape)
    (4, 5, 5, 8)
    """


@keras.saving.register_keras_serializable(package="rank1_keras")
class LSTMCellLatentPosterior(LatentPosteriorMixin, LSTMCellBatchEnsemble):
    """LP-BNN LSTM cell, for `keras.layers.RNN`: alpha and recurrent_alpha each have a VAE.

    z = ((x o r_hat_k) W) o s_k + ((h o r_hat'_k) U) o s'_k + b_k, with
    r_hat and r_hat' the reconstructions of alpha (input kernel) and
    recurrent_alpha (recurrent kernel) by two separate VAEs. Latent vectors
    are drawn once per sequence, like the rank-1 cell's factors, and the VAE
    loss (mean of the two VAEs' MSE + KL, times latent_loss_weight) is added
    once per sequence, outside the time loop.
    %s
    Example:

    >>> rnn = keras.layers.RNN(LSTMCellLatentPosterior(8, ensemble_size=2, latent_dim=4))
    >>> tuple(rnn(keras.ops.ones((4, 5, 3))).shape)
    (4, 8)
    """

    _factor_argument_names = ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")

    def __init__(
        self,
        units,
        ensemble_size=4,
        latent_dim=32,
        latent_loss_weight=1.0,
        inference="mean",
        seed=None,
        **kwargs,
    ):
        super().__init__(units, ensemble_size=ensemble_size, inference=inference, seed=seed, **kwargs)
        self._init_latent_posterior(("alpha", "recurrent_alpha"), latent_dim, latent_loss_weight)


for _layer_class in (DenseLatentPosterior, Conv1DLatentPosterior, Conv2DLatentPosterior, LSTMCellLatentPosterior):
    if _layer_class.__doc__:  # None under python -OO
        _layer_class.__doc__ = _layer_class.__doc__ % _DOC_ARGS
