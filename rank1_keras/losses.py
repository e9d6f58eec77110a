"""The two ensemble training likelihoods as Keras losses.

Both take labels for a plain batch of B examples and predictions of either
K*B rows (every member's answer on the tiled batch, block order) or B rows
(one answer per example: averaged probabilities at evaluation, or split
training where each row comes from the member that trained on it), where
both reduce to the ordinary per-example NLL.

* Average NLL:  -(1/K) sum_k log p(y | x, theta_k)   (the paper trains with it)
* Mixture NLL:  -log (1/K) sum_k p(y | x, theta_k)   (the evaluation NLL),
  computed with logsumexp for stability.
"""

import keras
import numpy as np
import tensorflow as tf

from rank1_keras import validation


def _member_log_probabilities(y_true, y_pred, ensemble_size, from_logits):
    """log p_m(y) for every member m and example: shape (M, B).

    M = K when the predictions hold K*B member rows for B labels (a tiled
    batch); M = 1 when there is one prediction row per label (averaged
    probabilities at evaluation, or split training where each row is one
    member's own example), so both losses reduce to the per-row NLL.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    num_classes = tf.shape(y_pred)[-1]
    if from_logits:
        log_probabilities = tf.nn.log_softmax(y_pred, axis=-1)
    else:
        # Floor at the smallest normal float so a zero probability gives a
        # large finite loss instead of inf; probabilities are not clipped above.
        log_probabilities = tf.math.log(tf.maximum(y_pred, np.finfo(y_pred.dtype.as_numpy_dtype).tiny))

    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == 1 or (y_true.shape.rank == 2 and y_true.shape[-1] == 1 and y_pred.shape[-1] != 1):
        # Sparse integer labels.
        y_true = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), num_classes, dtype=log_probabilities.dtype)
    y_true = tf.cast(tf.reshape(y_true, tf.stack([-1, num_classes])), log_probabilities.dtype)

    label_rows, prediction_rows = tf.shape(y_true)[0], tf.shape(y_pred)[0]
    check = tf.debugging.Assert(
        tf.logical_or(
            tf.equal(prediction_rows, label_rows),
            tf.equal(prediction_rows, ensemble_size * label_rows),
        ),
        [
            f"predictions must have B rows (one per label) or ensemble_size*B rows "
            f"(ensemble_size={ensemble_size}, block order); got prediction rows:",
            prediction_rows,
            "label rows:",
            label_rows,
        ],
    )
    with tf.control_dependencies([check]):
        members = prediction_rows // label_rows
    log_probabilities = tf.reshape(log_probabilities, tf.stack([members, label_rows, num_classes]))
    # Block order: member m's rows are [m*B, (m+1)*B), all scored on the same labels.
    return tf.reduce_sum(y_true[None] * log_probabilities, axis=-1)


class _EnsembleLikelihood(keras.losses.Loss):
    def __init__(self, ensemble_size, from_logits=False, name=None, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="rank1_keras")
class AverageNLL(_EnsembleLikelihood):
    """Average NLL over members, -(1/K) sum_k log p(y | x, theta_k), per example.

    Args:
        ensemble_size: K.
        from_logits: whether the model outputs logits (else probabilities).

    Example:

    >>> loss = AverageNLL(ensemble_size=2)
    >>> probabilities = tf.constant([[0.5, 0.5], [0.25, 0.75]])   # K=2, B=1
    >>> round(float(loss([1], probabilities)), 4)    # -(log .5 + log .75)/2
    0.4904
    """

    def __init__(self, ensemble_size, from_logits=False, name="average_nll", **kwargs):
        super().__init__(ensemble_size, from_logits=from_logits, name=name, **kwargs)

    def call(self, y_true, y_pred):
        log_likelihood = _member_log_probabilities(y_true, y_pred, self.ensemble_size, self.from_logits)
        return -tf.reduce_mean(log_likelihood, axis=0)


@keras.saving.register_keras_serializable(package="rank1_keras")
class MixtureNLL(_EnsembleLikelihood):
    """Mixture NLL, -log (1/K) sum_k p(y | x, theta_k), per example.

    Example:

    >>> loss = MixtureNLL(ensemble_size=2)
    >>> probabilities = tf.constant([[0.5, 0.5], [0.25, 0.75]])   # K=2, B=1
    >>> round(float(loss([1], probabilities)), 4)    # -log((.5 + .75)/2)
    0.47
    """

    def __init__(self, ensemble_size, from_logits=False, name="mixture_nll", **kwargs):
        super().__init__(ensemble_size, from_logits=from_logits, name=name, **kwargs)

    def call(self, y_true, y_pred):
        log_likelihood = _member_log_probabilities(y_true, y_pred, self.ensemble_size, self.from_logits)
        members = tf.cast(tf.shape(log_likelihood)[0], log_likelihood.dtype)
        return -(tf.reduce_logsumexp(log_likelihood, axis=0) - tf.math.log(members))
