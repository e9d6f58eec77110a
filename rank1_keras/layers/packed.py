"""Packed-Ensembles layers (Laurent et al., ICLR 2023): K independent narrow members in one layer.

Packed-Ensembles pack K subnetworks, each α/K times as wide as the original
network, into one network whose layers are grouped convolutions. Here a
member is a block of rows, as in every ensemble layer of the package
(`MemberRows`: block order, any batch size): member k's rows meet member k's
own kernel, so

    y = activation(x W_k + b_k)          for the rows of member k,

with W_k split further into γ groups (`groups`): the layer's input and
output channels each fall into γ equal parts and part g of the output sees
only part g of the input, the paper's γ that thins each member by γ. A
member is exactly one member of a deep ensemble of narrow networks; nothing
is shared between members, so their diversity is a deep ensemble's
(independent initialisations), at about α²/K of its parameters per layer.

`kernel` has a leading member axis: (K, γ, d_in/γ, units/γ) for Dense and
(K, *kernel_size, d_in/γ, filters) for a convolution (Keras' grouped-kernel
layout per member); `bias` is (K, units). Variance-scaling initializers
(Glorot, He, LeCun) use one member's fans, so a member starts as a fresh
Keras layer of its width would.
"""

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.convolutional import ConvolutionMixin
from rank1_keras.layers.rank1_mechanics import MemberRows


def _per_member_initializer(initializer, stacked):
    """`initializer` for a table of `stacked` independent kernels drawn in one call.

    A variance-scaling initializer reads the stacked axes as a receptive
    field, which multiplies both fans by `stacked`; its scale is multiplied
    back, so each kernel has the variance of one drawn alone. One draw for
    the whole table keeps the members independent (an unseeded Keras
    initializer repeats its values from call to call).
    """
    if isinstance(initializer, keras.initializers.VarianceScaling):
        return keras.initializers.VarianceScaling(
            scale=initializer.scale * stacked,
            mode=initializer.mode,
            distribution=initializer.distribution,
            seed=initializer.seed,
        )
    return initializer


class PackedEnsembleMixin:
    """Arguments, weights and config shared by the packed Dense and convolution layers."""

    def _init_packed(self, ensemble_size, groups, activation, use_bias, kernel_initializer, bias_initializer,
                     kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint):
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.groups = validation.check_positive_int(groups, "groups")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def _check_groups(self, input_dim, output_dim):
        if input_dim is None:
            raise ValueError(f"Layer '{self.name}' needs a known input width; got None.")
        for what, width in (("input width", input_dim), ("output width", output_dim)):
            if width % self.groups:
                raise ValueError(
                    f"Layer '{self.name}': groups={self.groups} must divide the {what}; got {width}."
                )

    def _build_packed_weights(self, kernel_shape, stacked, output_dim):
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=_per_member_initializer(self.kernel_initializer, stacked),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.ensemble_size, output_dim),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def _member_blocks(self, inputs, member_output, all_members_output=None):
        """Each member's rows through its own kernel, then b_k and the activation.

        `member_output(block, k)` runs one member's rows; `all_members_output`,
        when given, runs every member in one op and is used whenever the
        blocks are even (K divides the rows: every tiled batch).
        """
        rows = MemberRows(inputs, self.ensemble_size)

        def one_member_at_a_time():
            return rows.concat([member_output(block, k) for k, block in enumerate(rows.split(inputs))])

        count = rows.row_count
        if all_members_output is None:
            outputs = one_member_at_a_time()
        elif isinstance(count, int):
            outputs = all_members_output(inputs) if count % self.ensemble_size == 0 else one_member_at_a_time()
        else:  # R known only when the graph runs (TensorFlow tracing)
            outputs = ops.cond(
                ops.equal(count % self.ensemble_size, 0), lambda: all_members_output(inputs), one_member_at_a_time
            )
        if self.use_bias:
            bias = rows.expand(self.bias)  # (R, units): each row its member's bias
            shape = [-1] + [1] * (len(outputs.shape) - 2) + [bias.shape[-1]]
            if getattr(self, "data_format", "channels_last") == "channels_first":
                shape = [-1, bias.shape[-1]] + [1] * (len(outputs.shape) - 2)
            outputs = outputs + ops.reshape(bias, shape)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _packed_config(self):
        return {
            "ensemble_size": self.ensemble_size,
            "groups": self.groups,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }


@keras.saving.register_keras_serializable(package="rank1_keras")
class DensePackedEnsemble(PackedEnsembleMixin, keras.layers.Layer):
    """Dense layer of a Packed-Ensemble: member k's rows meet member k's own grouped kernel.

        y = activation(x W_k + b_k),   W_k block-diagonal with `groups` blocks

    Args:
        units: one member's output width.
        ensemble_size: K, the members (their rows come in block order).
        groups: γ, blocks of each member's kernel (must divide the input
            width and `units`).
        activation, use_bias, *_initializer, *_regularizer, *_constraint:
            as `keras.layers.Dense` (the regularizers apply to every member's
            weights, as each deep-ensemble member's own).

    Input shape: (R, ..., d_in), R rows of any number. Output: (R, ..., units).

    Example:

    >>> layer = DensePackedEnsemble(6, ensemble_size=2, groups=2)
    >>> tuple(layer(keras.ops.ones((4, 8))).shape), tuple(layer.kernel.shape)
    ((4, 6), (2, 2, 4, 3))
    """

    def __init__(
        self,
        units,
        ensemble_size=4,
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = validation.check_positive_int(units, "units")
        self._init_packed(ensemble_size, groups, activation, use_bias, kernel_initializer, bias_initializer,
                          kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self._check_groups(input_dim, self.units)
        shape = (self.ensemble_size, self.groups, input_dim // self.groups, self.units // self.groups)
        self._build_packed_weights(shape, self.ensemble_size * self.groups, self.units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs):
        def with_units(outputs, like):
            # `like`'s shape with `units` last; static sizes stay static under TF tracing.
            return ops.reshape(outputs, ops.shape(like)[:-1] + (self.units,))

        def member_output(block, member):
            kernel = self.kernel[member]  # (γ, d_in/γ, units/γ)
            grouped = ops.reshape(block, (-1, self.groups, block.shape[-1] // self.groups))
            return with_units(ops.einsum("ngi,gio->ngo", grouped, kernel), block)

        def all_members_output(rows):
            # Block order with even blocks: reshaping to (K, rows / K, ...) puts member k's rows at index k.
            grouped = ops.reshape(rows, (self.ensemble_size, -1, self.groups, rows.shape[-1] // self.groups))
            return with_units(ops.einsum("kngi,kgio->kngo", grouped, self.kernel), rows)

        return self._member_blocks(inputs, member_output, all_members_output)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(self._packed_config())
        config["units"] = self.units
        return config


class _ConvPackedEnsemble(ConvolutionMixin, PackedEnsembleMixin, keras.layers.Layer):
    """N-D convolution of a Packed-Ensemble; see `Conv2DPackedEnsemble`."""

    spatial_rank = None  # the number of spatial axes, set by the subclasses

    def __init__(
        self,
        filters,
        kernel_size,
        ensemble_size=4,
        groups=1,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_convolution(self.spatial_rank, filters, kernel_size, strides, padding, data_format, dilation_rate)
        self._init_packed(ensemble_size, groups, activation, use_bias, kernel_initializer, bias_initializer,
                          kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=self.spatial_rank + 2)

    def build(self, input_shape):
        input_channels = input_shape[self._channel_axis]
        self._check_groups(input_channels, self.filters)
        # Keras' grouped-kernel layout per member: (*kernel_size, channels / γ, filters).
        shape = (self.ensemble_size,) + self.kernel_size + (input_channels // self.groups, self.filters)
        self._build_packed_weights(shape, self.ensemble_size, self.filters)
        self.input_spec = keras.layers.InputSpec(ndim=self.spatial_rank + 2, axes={self._channel_axis: input_channels})

    def call(self, inputs):
        # keras.ops.conv reads γ off the kernel: input channels = γ x the kernel's input channels.
        # One convolution per member: on TF's CPU kernels a single convolution with K·γ groups
        # (the members' channels side by side) measured 5x slower than K plain ones.
        return self._member_blocks(inputs, lambda block, member: self._convolve(block, self.kernel[member]))

    def get_config(self):
        config = super().get_config()
        config.update(self._packed_config())
        config.update(self._convolution_config())
        return config


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv1DPackedEnsemble(_ConvPackedEnsemble):
    """1-D convolution of a Packed-Ensemble; arguments as `Conv2DPackedEnsemble` (`padding` may be "causal").

    Example:

    >>> tuple(Conv1DPackedEnsemble(4, 3, ensemble_size=2, padding="same")(keras.ops.ones((4, 10, 3))).shape)
    (4, 10, 4)
    """

    spatial_rank = 1


@keras.saving.register_keras_serializable(package="rank1_keras")
class Conv2DPackedEnsemble(_ConvPackedEnsemble):
    """2-D convolution of a Packed-Ensemble: member k's rows meet member k's own (grouped) kernel.

        y = activation(conv(x, W_k) + b_k),   W_k a convolution with `groups` groups

    Args:
        filters: one member's output channels.
        kernel_size, strides, padding, data_format, dilation_rate: as
            `keras.layers.Conv2D`.
        ensemble_size: K, the members (their rows come in block order).
        groups: γ (must divide the input channels and `filters`).
        activation, use_bias, *_initializer, *_regularizer, *_constraint:
            as `keras.layers.Conv2D`.

    Example:

    >>> layer = Conv2DPackedEnsemble(8, 3, ensemble_size=2, groups=2)
    >>> tuple(layer(keras.ops.ones((4, 6, 6, 4))).shape), tuple(layer.kernel.shape)
    ((4, 4, 4, 8), (2, 3, 3, 2, 8))
    """

    spatial_rank = 2
