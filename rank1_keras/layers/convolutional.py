"""Convolutional layers with per-member rank-1 factors: rank-1 BNN and BatchEnsemble.

r_k (alpha) scales the input channels and s_k (gamma) the output channels,
so member k convolves with W o (r_k s_k^T) broadcast over the kernel window.
"""

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import (
    Rank1Mixin,
    batch_ensemble_defaults,
    serialize_factor_arguments,
)

_FACTORS = ("alpha", "gamma")
_PADDINGS = {1: ("valid", "same", "causal"), 2: ("valid", "same")}


def _normalize_tuple(value, rank, name):
    values = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(values) != rank or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(
            f"{name} must be a positive integer or a tuple of {rank} positive integers; got {name}={value!r}."
        )
    return values


class ConvolutionMixin:
    """Convolution arguments and the convolution itself, for every convolutional layer of the package.

    `_init_convolution` validates and stores `filters`, `kernel_size`,
    `strides`, `padding` (Conv1D also takes "causal"), `data_format` and
    `dilation_rate` as `keras.layers.Conv*D` does; `_convolve` applies a
    kernel with them.
    """

    def _init_convolution(self, spatial_rank, filters, kernel_size, strides, padding, data_format, dilation_rate):
        self.filters = validation.check_positive_int(filters, "filters")
        self.kernel_size = _normalize_tuple(kernel_size, spatial_rank, "kernel_size")
        self.strides = _normalize_tuple(strides, spatial_rank, "strides")
        self.dilation_rate = _normalize_tuple(dilation_rate, spatial_rank, "dilation_rate")
        self.padding = validation.check_choice(
            padding.lower() if isinstance(padding, str) else padding, "padding", _PADDINGS[spatial_rank]
        )
        self.data_format = validation.check_choice(
            data_format or keras.config.image_data_format(),
            "data_format",
            ("channels_last", "channels_first"),
        )

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def _convolve(self, inputs, kernel):
        padding = self.padding
        if padding == "causal":
            # Left-pad the time axis so output t sees inputs <= t (as keras.layers.Conv1D).
            left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
            pad = [[0, 0], [left, 0], [0, 0]] if self.data_format == "channels_last" else [[0, 0], [0, 0], [left, 0]]
            inputs = ops.pad(inputs, pad)
            padding = "valid"
        return keras.ops.conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )

    def _convolution_config(self):
        return {
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
        }

    def compute_output_shape(self, input_shape):
        spatial_rank = len(self.kernel_size)
        first = 1 if self.data_format == "channels_last" else 2
        spatial = []
        for i, axis in enumerate(range(first, first + spatial_rank)):
            size = input_shape[axis]
            if size is None:
                spatial.append(None)
                continue
            window = self.dilation_rate[i] * (self.kernel_size[i] - 1) + 1
            if self.padding == "valid":
                size = size - window + 1
            spatial.append(-(-size // self.strides[i]))
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)


class _ConvRank1(ConvolutionMixin, Rank1Mixin, keras.layers.Layer):
    """N-D convolution with rank-1 factors; see `Conv2DRank1` for the arguments."""

    def __init__(
        self,
        rank,
        filters,
        kernel_size,
        ensemble_size=4,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
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
        self.rank = rank
        self._init_convolution(rank, filters, kernel_size, strides, padding, data_format, dilation_rate)
        self._init_rank1(ensemble_size, use_additive_perturbation, sample_per_example, inference, seed)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self._init_factor_arguments(_FACTORS, locals())
        self._init_kernel_and_bias_arguments(
            kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint
        )
        self.input_spec = keras.layers.InputSpec(ndim=rank + 2)

    def build(self, input_shape):
        channel_axis = self._channel_axis
        input_channels = input_shape[channel_axis]
        if input_channels is None:
            raise ValueError(
                f"Layer '{self.name}' needs a known number of input channels; got input_shape={input_shape}."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=self.kernel_size + (input_channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self._add_member_factor("alpha", input_channels, self.alpha_initializer, self.alpha_regularizer, self.alpha_constraint)
        self._add_member_factor("gamma", self.filters, self.gamma_initializer, self.gamma_regularizer, self.gamma_constraint)
        if self.use_bias:
            self._add_member_factor("bias", self.filters, self.bias_initializer, self.bias_regularizer, self.bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={channel_axis: input_channels})

    def _kernel_op(self, inputs, kernel=None):
        return self._convolve(inputs, self.kernel if kernel is None else kernel)

    def _summed_kernel_op(self, inputs):
        # An all-ones one-channel kernel: sums <x, r> over each kernel window.
        return self._convolve(inputs, ops.ones(self.kernel_size + (1, 1), dtype=inputs.dtype))

    def call(self, inputs, training=False):
        if self.serving_member is not None:
            return self._member_call(inputs, self._kernel_op, self._channel_axis, training=training)
        factors = self._draw_factors(self._member_rows(inputs), self._samples_factors(training))
        outputs = self._apply_rank1(
            inputs,
            factors["alpha"],
            factors["gamma"],
            kernel_op=self._kernel_op,
            summed_kernel_op=self._summed_kernel_op,
            channel_axis=self._channel_axis,
        )
        if self.use_bias:
            outputs = self._add_member_bias(outputs, factors["bias"], self._channel_axis)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(self._rank1_config())
        config.update(serialize_factor_arguments(self, _FACTORS))
        config.update(self._convolution_config())
        config.update(
            {
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
            }
        )
        config.update(self._kernel_and_bias_config())
        return config


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv1DRank1(_ConvRank1):
    """Rank-1 Bayesian 1-D convolution: member k convolves with W o (r_k s_k^T).

    Arguments as `Conv2DRank1`; `padding` may also be `"causal"`.
    Input shape: (R, steps, channels) (channels_last), any R.

    Example:

    >>> tuple(Conv1DRank1(8, 3, ensemble_size=2)(keras.ops.ones((4, 10, 3))).shape)
    (4, 8, 8)
    """

    plain_layer_class = keras.layers.Conv1D

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(1, filters, kernel_size, **kwargs)

    def get_config(self):
        return super().get_config()


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv2DRank1(_ConvRank1):
    """Rank-1 Bayesian 2-D convolution (Dusenberry et al., 2020).

    For member k (its block of the input's rows, block order; see `MemberRows`):

        y = activation(conv(x o r_k, W) o s_k + b_k)

    where r_k scales input channels and s_k output channels, drawn from the
    (K, channels) mixture posteriors; see `DenseRank1` for the factor,
    sampling and inference arguments. Conv arguments (`filters`,
    `kernel_size`, `strides`, `padding` "valid"/"same", `data_format`,
    `dilation_rate`) are those of `keras.layers.Conv2D`.

    Example:

    >>> tuple(Conv2DRank1(8, 3, ensemble_size=2, padding="same")(keras.ops.ones((4, 5, 5, 3))).shape)
    (4, 5, 5, 8)
    """

    plain_layer_class = keras.layers.Conv2D

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(2, filters, kernel_size, **kwargs)

    def get_config(self):
        return super().get_config()


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv1DBatchEnsemble(Conv1DRank1):
    """BatchEnsemble 1-D convolution: `Conv1DRank1` with point factors (N(1, 0.5^2) by default, no KL)."""

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **batch_ensemble_defaults(kwargs))


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv2DBatchEnsemble(Conv2DRank1):
    """BatchEnsemble 2-D convolution (Wen et al., 2020): `Conv2DRank1` with point factors.

    conv(x o r_k, W) o s_k + b_k with r_k, s_k plain trainable vectors
    (N(1, 0.5^2) by default, so members differ from the start; "random_sign"
    or "ones" on request), no KL.

    Example:

    >>> tuple(Conv2DBatchEnsemble(8, 3, ensemble_size=2)(keras.ops.ones((4, 5, 5, 3))).shape)
    (4, 3, 3, 8)
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **batch_ensemble_defaults(kwargs))
