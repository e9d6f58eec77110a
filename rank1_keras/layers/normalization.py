"""Per-member batch normalisation for ensembles, as BatchEnsemble and rank-1 papers use."""

import functools
import operator

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import MemberRows


@keras.saving.register_keras_serializable(package="rank1_keras")
class EnsembleBatchNormalization(keras.layers.Layer):
    """Batch normalisation with separate statistics and affine parameters per member.

    Member k (its block of the rows, block order; see `MemberRows`) is
    normalised with its own batch statistics in training, taken over its own
    rows, and its own moving mean/variance at inference:

        y = gamma_k * (x - mean_k) / sqrt(var_k + epsilon) + beta_k

    A member with no row in a training batch (fewer rows than members) keeps
    its moving statistics. Each of gamma, beta, moving_mean and moving_variance has shape
    (ensemble_size, channels). Arguments are those of
    `keras.layers.BatchNormalization` (`axis`, `momentum`, `epsilon`,
    `center`, `scale` and the initializers/regularizers/constraints).

    Example:

    >>> layer = EnsembleBatchNormalization(ensemble_size=2)
    >>> tuple(layer(keras.ops.ones((4, 3)), training=False).shape)
    (4, 3)
    """

    def __init__(
        self,
        ensemble_size=4,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        if not isinstance(axis, int):
            raise ValueError(f"axis must be one integer (the channel axis); got axis={axis!r}.")
        self.axis = axis
        self.momentum = validation.check_probability(momentum, "momentum")
        self.epsilon = validation.check_positive_finite(epsilon, "epsilon")
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(
                f"axis must name a non-batch axis of the {rank}-D input; got axis={self.axis}."
            )
        self._channel_axis = self.axis % rank
        channels = input_shape[self._channel_axis]
        shape = (self.ensemble_size, channels)
        self.gamma = (
            self.add_weight(name="gamma", shape=shape, initializer=self.gamma_initializer,
                            regularizer=self.gamma_regularizer, constraint=self.gamma_constraint, autocast=False)
            if self.scale else None
        )
        self.beta = (
            self.add_weight(name="beta", shape=shape, initializer=self.beta_initializer,
                            regularizer=self.beta_regularizer, constraint=self.beta_constraint, autocast=False)
            if self.center else None
        )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, initializer=self.moving_mean_initializer, trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, initializer=self.moving_variance_initializer, trainable=False,
            autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self._channel_axis: channels})

    #: The member whose chain `MemberChains` is running (every row is that
    #: member's), or None: the rows are in block order.
    serving_member = None

    #: The Keras layer one member folds into (`rank1_keras.layers.folding`).
    plain_layer_class = keras.layers.BatchNormalization

    def supports_member_chains(self, training=False):
        """Always: member k only needs its own rows, statistics and affine parameters."""
        return True

    def folded_member_weights(self, member):
        """Member `member` as `keras.layers.BatchNormalization` weights, NumPy, in its order:
        gamma_k (with `scale`), beta_k (with `center`), moving_mean_k, moving_variance_k."""
        tables = [self.gamma, self.beta, self.moving_mean, self.moving_variance]
        return [ops.convert_to_numpy(table)[member] for table in tables if table is not None]

    def _row_table(self, rows, table, rank):
        """(K, C) -> one row per input row, (R, C), broadcastable on the rank-`rank` input.

        In a member chain every row takes the serving member's row of the table.
        """
        if self.serving_member is not None:
            shape = [1] * rank
            shape[self._channel_axis] = table.shape[-1]
            return ops.reshape(table[self.serving_member], shape)
        return self._expanded(rows, table, rank)

    def _expanded(self, rows, table, rank):
        """(K, C) -> (R, C) rows by `rows`' members, broadcastable on the rank-`rank` input."""
        shape = [1] * rank
        shape[0], shape[self._channel_axis] = -1, table.shape[-1]
        return ops.reshape(rows.expand(table), shape)

    def _member_moments(self, inputs, rows):
        """Each member's mean and variance over its own rows and the non-channel axes.

        Two passes, as `tf.nn.moments`: mean_k = sum x / n_k, then
        var_k = sum (x - mean_k)^2 / n_k, with n_k member k's rows times the
        positions per row. A member without rows gets 0 and 0 (n_k = 0 is
        counted as 1: it has nothing to normalise, and no NaN reaches the
        gradients).
        """
        rank = len(inputs.shape)
        axes = [a for a in range(1, rank) if a != self._channel_axis]
        # Static sizes where known (every size on JAX and PyTorch), scalar tensors under TF tracing.
        shape = ops.shape(inputs)
        positions = ops.cast(functools.reduce(operator.mul, [shape[a] for a in axes], 1), inputs.dtype)
        counts = ops.maximum(ops.cast(rows.sizes, inputs.dtype), 1.0)[:, None] * positions

        def member_means(values):
            per_row = ops.sum(values, axis=axes) if axes else values  # (R, C)
            return rows.sum(per_row) / counts

        mean = member_means(inputs)
        # d var / d mean = 0 at the mean: stop its gradient there, as tf.nn.moments does.
        centred = inputs - self._expanded(rows, ops.stop_gradient(mean), rank)
        variance = member_means(ops.square(centred))
        return mean, variance

    def call(self, inputs, training=False, mask=None):
        # In float32 at least, as keras.layers.BatchNormalization: float16 sums of squares overflow.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, dtype)
        rows = MemberRows(inputs, self.ensemble_size)
        if training:
            if self.serving_member is None:
                mean, variance = self._member_moments(inputs, rows)
                has_rows = rows.sizes > 0
            else:  # a member chain: every row is the serving member's; only its row of the statistics moves
                chain = MemberRows(inputs, 1)
                mean, variance = self._member_moments(inputs, chain)
                serving = ops.one_hot(self.serving_member, self.ensemble_size, dtype="int32") > 0
                has_rows = ops.logical_and(serving, chain.sizes > 0)
            # A member without rows in this batch (or outside this chain) keeps its statistics (momentum 1).
            momentum = ops.where(has_rows, ops.cast(self.momentum, dtype), ops.cast(1.0, dtype))[:, None]
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                moving.assign(ops.cast(ops.cast(moving, dtype) * momentum + batch * (1.0 - momentum), moving.dtype))
        else:
            mean = ops.cast(self.moving_mean, dtype)
            variance = ops.cast(self.moving_variance, dtype)
        # y = x * scale_k + offset_k, scale_k = gamma_k / sqrt(var_k + eps) and
        # offset_k = beta_k - mean_k * scale_k: two (K, C) tables to expand.
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.cast(self.gamma, dtype)
        offset = -mean * scale
        if self.center:
            offset = offset + ops.cast(self.beta, dtype)
        rank = len(inputs.shape)
        outputs = inputs * self._row_table(rows, scale, rank) + self._row_table(rows, offset, rank)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ensemble_size": self.ensemble_size,
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": keras.initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": keras.initializers.serialize(self.moving_variance_initializer),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": keras.constraints.serialize(self.beta_constraint),
                "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
            }
        )
        return config
