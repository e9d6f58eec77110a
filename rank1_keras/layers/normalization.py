"""Per-member batch normalisation for ensembles, as BatchEnsemble and rank-1 papers use."""

import keras
import tensorflow as tf

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import merge_members, split_into_members


@keras.saving.register_keras_serializable(package="rank1_keras")
class EnsembleBatchNormalization(keras.layers.Layer):
    """Batch normalisation with separate statistics and affine parameters per member.

    Member k (rows [k*B, (k+1)*B), block order) is normalised with its own batch
    statistics in training and its own moving mean/variance at inference:

        y = gamma_k * (x - mean_k) / sqrt(var_k + epsilon) + beta_k

    Each of gamma, beta, moving_mean and moving_variance has shape
    (ensemble_size, channels). Arguments are those of
    `keras.layers.BatchNormalization` (`axis`, `momentum`, `epsilon`,
    `center`, `scale` and the initializers/regularizers/constraints).

    Example:

    >>> layer = EnsembleBatchNormalization(ensemble_size=2)
    >>> layer(tf.ones((4, 3)), training=False).shape
    TensorShape([4, 3])
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
                            regularizer=self.gamma_regularizer, constraint=self.gamma_constraint)
            if self.scale else None
        )
        self.beta = (
            self.add_weight(name="beta", shape=shape, initializer=self.beta_initializer,
                            regularizer=self.beta_regularizer, constraint=self.beta_constraint)
            if self.center else None
        )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, initializer=self.moving_mean_initializer, trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, initializer=self.moving_variance_initializer, trainable=False
        )
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self._channel_axis: channels})

    def _per_member(self, table, rank):
        # (K, C) -> broadcastable on the (K, B, ...) member view.
        shape = [1] * (rank + 1)
        shape[0], shape[self._channel_axis + 1] = self.ensemble_size, table.shape[-1]
        return tf.reshape(table, shape)

    def call(self, inputs, training=False, mask=None):
        members = split_into_members(inputs, self.ensemble_size, self.name)
        rank = inputs.shape.rank
        reduction_axes = [a + 1 for a in range(rank) if a != self._channel_axis]
        if training:
            mean, variance = tf.nn.moments(members, axes=reduction_axes, keepdims=True)
            squeeze = lambda t: tf.reshape(t, (self.ensemble_size, -1))  # noqa: E731
            for moving, batch in ((self.moving_mean, squeeze(mean)), (self.moving_variance, squeeze(variance))):
                moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        else:
            mean = self._per_member(tf.convert_to_tensor(self.moving_mean), rank)
            variance = self._per_member(tf.convert_to_tensor(self.moving_variance), rank)
        outputs = (members - mean) * tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * self._per_member(tf.convert_to_tensor(self.gamma), rank)
        if self.center:
            outputs = outputs + self._per_member(tf.convert_to_tensor(self.beta), rank)
        return merge_members(outputs)

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
