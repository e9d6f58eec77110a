"""Low-rank ensemble layers: Bella's particles (Doan et al., AAAI 2025).

A frozen pre-trained kernel W0 (and bias b) is shared by K particles; particle
k owns a rank-r perturbation, so its kernel is

    W_k = W0 + (scale / r) * A_k B_k

in Keras kernel orientation: A_k (input side) has shape (d_in, r) for Dense and
(kh, kw, d_in, r) for a 2-D convolution, B_k (output side) has shape
(r, d_out). A_k starts Kaiming-uniform (bound 1/sqrt(fan_in), LoRA's and
Bella's choice), different for every particle; B_k starts at zero, so every
particle starts at W0 and the particles differ through A_k once B_k moves.
`scale` is LoRA's alpha (`perturbation_scale`, default r: a factor of 1).

A layer receives R rows in block order (particle k owns a contiguous block
of rows, B = R/K of them for a tiled batch, sizes differing by at most one
otherwise: `MemberRows`, as every ensemble layer of the package) and
computes, for particle k,

    y = activation(x W0 + b + (scale / r) * (x A_k) B_k)

without materialising the K full kernels: x A_k has only r channels. For a
convolution, x A_k is a convolution with the (kh, kw, d_in, r) kernel A_k
(same strides, padding, dilation as W0) and B_k a 1x1 projection to the
filters; by linearity this equals convolving with W0 + (scale/r)
reshape(A_k B_k, W0.shape).

Only A and B are trainable; W0 and b are non-trainable weights named "kernel"
and "bias" (converted models copy them from the original network).
`perturbation_variables` returns [A, B], each with a leading particle axis,
which is what Bella-SVGD moves (`rank1_keras.tensorflow.training.svgd`).
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.convolutional import ConvolutionMixin
from rank1_keras.layers.rank1_mechanics import MemberRows
from rank1_keras.layers.walk import layers_of


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an integer or None; got seed={seed!r}.")
    return None if seed is None else int(seed)


class LowRankEnsembleMixin:
    """Shared low-rank particle mechanics for Keras layers.

    A layer mixes this in before `keras.layers.Layer`, calls
    `_init_low_rank` in `__init__`, `_build_base_weights` and
    `_build_perturbation` in `build`, and adds `_low_rank_delta` (its own
    x A_k B_k) to the frozen base output in `call`.
    """

    def _init_low_rank(self, ensemble_size, rank, perturbation_scale, use_bias, kernel_initializer, bias_initializer, seed):
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.rank = validation.check_positive_int(rank, "rank")
        if perturbation_scale is not None:
            perturbation_scale = validation.check_positive_finite(perturbation_scale, "perturbation_scale")
        self.perturbation_scale = perturbation_scale
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = _check_seed(seed)

    @property
    def perturbation_factor(self):
        """scale / rank, the factor in front of A_k B_k (1 with the default scale)."""
        scale = self.rank if self.perturbation_scale is None else self.perturbation_scale
        return float(scale) / self.rank

    def _build_base_weights(self, kernel_shape, output_dim):
        # The pre-trained weights are frozen: only the perturbation trains.
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, initializer=self.kernel_initializer, trainable=False
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(output_dim,), initializer=self.bias_initializer, trainable=False
            )

    def _build_perturbation(self, input_factor_shape, output_dim):
        """Creates A: (K, *input_factor_shape) and B: (K, rank, output_dim).

        `input_factor_shape` is one particle's A, its last axis the rank.
        """
        # Fan-in of one particle's A (not of the stacked (K, ...) table).
        fan_in = int(np.prod(input_factor_shape[:-1]))
        limit = 1.0 / math.sqrt(fan_in)

        def kaiming_uniform(shape, dtype=None):
            # One draw for the whole table: particles get independent values.
            return keras.random.uniform(shape, minval=-limit, maxval=limit, dtype=dtype, seed=self.seed)

        self.input_factor = self.add_weight(
            name="input_factor",
            shape=(self.ensemble_size,) + tuple(input_factor_shape),
            initializer=kaiming_uniform,
            trainable=True,
        )
        self.output_factor = self.add_weight(
            name="output_factor",
            shape=(self.ensemble_size, self.rank, int(output_dim)),
            initializer="zeros",
            trainable=True,
        )

    def folded_member_weights(self, particle):
        """Particle `particle` as `plain_layer_class` weights, NumPy: [W0 + (scale/r) A_k B_k, b] (no b without a bias)."""
        product = ops.tensordot(
            ops.convert_to_tensor(self.input_factor)[particle], ops.convert_to_tensor(self.output_factor)[particle], axes=1
        )
        weights = [ops.convert_to_tensor(self.kernel) + self.perturbation_factor * product]
        if self.use_bias:
            weights.append(self.bias)
        return [ops.convert_to_numpy(weight) for weight in weights]

    @property
    def perturbation_variables(self):
        """[A, B]: the trainable low-rank factors, each with a leading particle axis."""
        return [self.input_factor, self.output_factor]

    def _low_rank_config(self):
        return {
            "ensemble_size": self.ensemble_size,
            "rank": self.rank,
            "perturbation_scale": self.perturbation_scale,
            "use_bias": self.use_bias,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="rank1_keras")
class DenseLowRankEnsemble(LowRankEnsembleMixin, keras.layers.Layer):
    """Dense layer with a frozen kernel and K low-rank trainable perturbations (Bella).

    For particle k (its block of the input's rows, block order):

        y = activation(x W0 + b + (perturbation_scale / rank) * (x A_k) B_k)

    i.e. W_k = W0 + (perturbation_scale / rank) A_k B_k with A_k of shape
    (input_dim, rank), Kaiming-uniform at start, and B_k of shape
    (rank, units), zero at start. W0 ("kernel") and b ("bias") are
    non-trainable; A and B (`perturbation_variables`) are trainable.

    Args:
        units: output dimension.
        ensemble_size: number of particles K.
        rank: rank of each perturbation.
        perturbation_scale: LoRA's alpha; the perturbation is multiplied by
            perturbation_scale / rank. None (default) means `rank`, a factor of 1.
        activation, use_bias: as in `keras.layers.Dense`.
        kernel_initializer, bias_initializer: for W0 and b when the layer is
            not given pre-trained weights.
        seed: seed of A's initial draw (None: Keras' global seed generator).

    Input shape: (R, ..., input_dim), any R. Output shape: (R, ..., units).

    Example:

    >>> layer = DenseLowRankEnsemble(16, ensemble_size=3, rank=2)
    >>> tuple(layer(keras.ops.ones((6, 4))).shape)        # 3 particles x 2 examples
    (6, 16)
    >>> [tuple(v.shape) for v in layer.perturbation_variables]
    [(3, 4, 2), (3, 2, 16)]
    """

    plain_layer_class = keras.layers.Dense

    def __init__(
        self,
        units,
        ensemble_size=3,
        rank=4,
        perturbation_scale=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = validation.check_positive_int(units, "units")
        self._init_low_rank(
            ensemble_size, rank, perturbation_scale, use_bias, kernel_initializer, bias_initializer, seed
        )
        self.activation = keras.activations.get(activation)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"Layer '{self.name}' needs a known last input dimension; got input_shape={input_shape}.")
        self._build_base_weights((input_dim, self.units), self.units)
        self._build_perturbation((input_dim, self.rank), self.units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs):
        # The base path is keras.layers.Dense's, so a fresh layer (B = 0)
        # reproduces the original network exactly.
        outputs = keras.ops.matmul(inputs, self.kernel)
        outputs = outputs + self._low_rank_delta(inputs)
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _low_rank_delta(self, inputs):
        """(scale/r) (x A_k) B_k for every row, as an (R, ..., units) tensor: each particle on its own block."""
        rows = MemberRows(inputs, self.ensemble_size)
        # Each variable read once, then sliced per particle.
        input_factor = ops.convert_to_tensor(self.input_factor)
        output_factor = ops.convert_to_tensor(self.output_factor)
        deltas = []
        for particle, block in enumerate(rows.split(inputs)):
            # Scale the rank-r activations, not the wide output.
            low = ops.tensordot(block, input_factor[particle], axes=1) * self.perturbation_factor
            deltas.append(ops.tensordot(low, output_factor[particle], axes=1))
        return rows.concat(deltas)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(self._low_rank_config())
        config["units"] = self.units
        return config


class _ConvLowRankEnsemble(ConvolutionMixin, LowRankEnsembleMixin, keras.layers.Layer):
    """N-D convolution with a frozen kernel and K low-rank perturbations; see `Conv2DLowRankEnsemble`."""

    spatial_rank = None  # the number of spatial axes, set by the subclasses

    def __init__(
        self,
        filters,
        kernel_size,
        ensemble_size=3,
        rank=4,
        perturbation_scale=None,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # `rank` is the perturbation's rank; the number of spatial axes is `spatial_rank`.
        self._init_convolution(self.spatial_rank, filters, kernel_size, strides, padding, data_format, dilation_rate)
        self._init_low_rank(
            ensemble_size, rank, perturbation_scale, use_bias, kernel_initializer, bias_initializer, seed
        )
        self.activation = keras.activations.get(activation)
        self.input_spec = keras.layers.InputSpec(ndim=self.spatial_rank + 2)

    def build(self, input_shape):
        input_channels = input_shape[self._channel_axis]
        if input_channels is None:
            raise ValueError(
                f"Layer '{self.name}' needs a known number of input channels; got input_shape={input_shape}."
            )
        self._build_base_weights(self.kernel_size + (input_channels, self.filters), self.filters)
        self._build_perturbation(self.kernel_size + (input_channels, self.rank), self.filters)
        self.input_spec = keras.layers.InputSpec(
            ndim=self.spatial_rank + 2, axes={self._channel_axis: input_channels}
        )

    def call(self, inputs):
        outputs = self._convolve(inputs, self.kernel)
        outputs = outputs + self._low_rank_delta(inputs)
        if self.use_bias:
            shape = [1] * (self.spatial_rank + 2)
            shape[self._channel_axis] = self.filters
            outputs = outputs + ops.reshape(self.bias, shape)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _low_rank_delta(self, inputs):
        """(scale/r) conv(x, A_k) B_k for every row: one r-channel convolution per particle, on its own block."""
        rows = MemberRows(inputs, self.ensemble_size)
        members = rows.split(inputs)
        input_factor = ops.convert_to_tensor(self.input_factor)
        output_factor = ops.convert_to_tensor(self.output_factor)
        deltas = []
        for particle in range(self.ensemble_size):
            low = self._convolve(members[particle], input_factor[particle]) * self.perturbation_factor
            # The 1x1 projection B_k: rank channels -> filters.
            delta = ops.tensordot(low, output_factor[particle], axes=[[self._channel_axis % len(low.shape)], [0]])
            if self.data_format == "channels_first":
                delta = ops.transpose(delta, [0, self.spatial_rank + 1] + list(range(1, self.spatial_rank + 1)))
            deltas.append(delta)
        return rows.concat(deltas)

    def get_config(self):
        config = super().get_config()
        config.update(self._low_rank_config())
        config.update(self._convolution_config())
        return config


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv1DLowRankEnsemble(_ConvLowRankEnsemble):
    """1-D convolution with a frozen kernel and K low-rank perturbations (Bella).

    Arguments as `Conv2DLowRankEnsemble`; `padding` may also be `"causal"`.
    A_k has shape (kernel_size, input_channels, rank).

    Example:

    >>> tuple(Conv1DLowRankEnsemble(8, 3, ensemble_size=2, rank=2)(keras.ops.ones((4, 10, 3))).shape)
    (4, 8, 8)
    """

    spatial_rank = 1
    plain_layer_class = keras.layers.Conv1D


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv2DLowRankEnsemble(_ConvLowRankEnsemble):
    """2-D convolution with a frozen kernel and K low-rank perturbations (Bella).

    For particle k (its block of the input's rows, block order):

        y = activation(conv(x, W0) + b + (perturbation_scale / rank) * conv(x, A_k) B_k)

    where A_k is a (kh, kw, input_channels, rank) kernel with W0's strides,
    padding and dilation, and B_k (rank, filters) a 1x1 projection; this is
    conv(x, W_k) with W_k = W0 + (perturbation_scale / rank) reshape(A_k B_k).
    See `DenseLowRankEnsemble` for `ensemble_size`, `rank`,
    `perturbation_scale`, the initialisation and `seed`. Conv arguments
    (`filters`, `kernel_size`, `strides`, `padding` "valid"/"same",
    `data_format`, `dilation_rate`) are those of `keras.layers.Conv2D`.

    Example:

    >>> layer = Conv2DLowRankEnsemble(8, 3, ensemble_size=2, rank=2, padding="same")
    >>> tuple(layer(keras.ops.ones((4, 5, 5, 3))).shape)
    (4, 5, 5, 8)
    >>> [tuple(v.shape) for v in layer.perturbation_variables]
    [(2, 3, 3, 3, 2), (2, 2, 8)]
    """

    spatial_rank = 2
    plain_layer_class = keras.layers.Conv2D


def low_rank_layers(model):
    """Every low-rank ensemble layer inside `model`, nested ones included, in Keras' tracking order."""
    return layers_of(model, LowRankEnsembleMixin, include_self=True)
