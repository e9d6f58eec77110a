"""Model-level ensemble plumbing: tile a batch into members, average them back.

Block order throughout: a batch of B examples becomes K*B rows, rows
[k*B, (k+1)*B) being member k's copy.
"""

import keras
import tensorflow as tf

from rank1_keras import validation


def tile_members(inputs, ensemble_size):
    """(B, ...) -> (K*B, ...): K copies of the batch, one block per member."""
    ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
    multiples = [ensemble_size] + [1] * (len(inputs.shape) - 1)
    return keras.ops.tile(inputs, multiples)


def split_members(outputs, ensemble_size):
    """(K*B, ...) -> (K, B, ...): member k's rows at index k."""
    ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
    outputs = tf.convert_to_tensor(outputs)
    batch_size = outputs.shape[0]
    if batch_size is not None and batch_size % ensemble_size:
        raise ValueError(
            f"The number of rows ({batch_size}) must be a multiple of ensemble_size={ensemble_size}."
        )
    shape = tf.concat([[ensemble_size, -1], tf.shape(outputs)[1:]], axis=0)
    return tf.reshape(outputs, shape)


def average_member_probabilities(probabilities, ensemble_size):
    """(K*B, C) member probabilities -> (B, C) ensemble probabilities.

    Averages probabilities, never logits: the ensemble's predictive
    distribution is the mixture (1/K) sum_k p(y | x, theta_k).
    """
    return tf.reduce_mean(split_members(probabilities, ensemble_size), axis=0)


TRAINING_BATCHES = ("tile", "split")
TRAINING_OUTPUTS = ("average", "members")


@keras.saving.register_keras_serializable(package="rank1_keras")
class TileEnsemble(keras.layers.Layer):
    """Tiles a plain batch (B, ...) into (K*B, ...) rows, block order.

    Put it right after the inputs of an ensemble model so the model takes the
    same plain batches as a single network. Masks are tiled alike.

    Args:
        ensemble_size: K.
        training_batch: `"tile"` (every member sees every example, the
            papers' default) or `"split"`: in training the batch passes
            unchanged and member k trains on its own block of B/K rows (about
            K times cheaper steps; B must be a multiple of K). Inference
            always tiles. Masked inputs need "tile".

    Example:

    >>> TileEnsemble(3)(tf.constant([[1.0], [2.0]])).numpy().ravel().tolist()
    [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
    """

    def __init__(self, ensemble_size, training_batch="tile", **kwargs):
        super().__init__(**kwargs)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.training_batch = validation.check_choice(training_batch, "training_batch", TRAINING_BATCHES)
        self.supports_masking = True

    def _tiles(self, training):
        return not (training and self.training_batch == "split")

    def call(self, inputs, training=False):
        return tile_members(inputs, self.ensemble_size) if self._tiles(training) else inputs

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        if self.training_batch == "split":
            # Keras records a functional model's masks once, symbolically,
            # without `training`, so a mask cannot follow the split/tile switch.
            raise ValueError(
                f"Layer '{self.name}': training_batch='split' does not support masked inputs; "
                "use training_batch='tile' for models with masking."
            )
        return tile_members(mask, self.ensemble_size)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch * self.ensemble_size,) + tuple(input_shape[1:])

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "training_batch": self.training_batch,
        }


@keras.saving.register_keras_serializable(package="rank1_keras")
class AverageMembers(keras.layers.Layer):
    """Averages (K*B, C) member probabilities into (B, C) ensemble probabilities.

    Args:
        ensemble_size: K.
        training_output: `"average"` (always average) or `"members"`: in
            training, return the member rows unchanged, so that a loss such as
            `AverageNLL(K)` sees every member; inference always averages.

    Example:

    >>> probabilities = tf.constant([[1.0, 0.0], [0.0, 1.0]])   # K=2, B=1
    >>> AverageMembers(2)(probabilities).numpy().tolist()
    [[0.5, 0.5]]
    """

    def __init__(self, ensemble_size, training_output="average", **kwargs):
        super().__init__(**kwargs)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.training_output = validation.check_choice(training_output, "training_output", TRAINING_OUTPUTS)
        self.supports_masking = True

    def call(self, inputs, training=False):
        # Remembered for compute_mask, which Keras calls right after, without `training`.
        self._averaged_in_last_call = not (training and self.training_output == "members")
        if not self._averaged_in_last_call:
            return inputs
        return average_member_probabilities(inputs, self.ensemble_size)

    def compute_mask(self, inputs, mask=None):
        # Members share the examples' masks: the first block is the plain batch's.
        if mask is None or not getattr(self, "_averaged_in_last_call", True):
            return mask
        return split_members(mask, self.ensemble_size)[0]

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch // self.ensemble_size,) + tuple(input_shape[1:])

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "training_output": self.training_output,
        }
