"""Ensemble training likelihoods as Keras losses: classification and regression.

Every loss takes labels for a plain batch of B examples and predictions of
either K*B rows (every member's answer on the tiled batch, block order) or
B rows (one answer per example: averaged predictions at evaluation, or
split training where each row comes from the member that trained on it),
where the ensemble losses reduce to the ordinary per-example loss. Rows may
carry further axes before the last one (segmentation maps (B, H, W, C),
per-step labels (B, T, C)); the loss is then per position, and positions
whose label is `ignore_class`, or that the predictions' Keras mask hides,
are left out of the mean, as in Keras' own losses.

* Average NLL:  -(1/K) sum_k log p(y | x, theta_k)   (the paper trains with it)
* Mixture NLL:  -log (1/K) sum_k p(y | x, theta_k)   (the evaluation NLL),
  computed with logsumexp for stability.

Classification heads give class probabilities (or logits, `from_logits=True`)
on the last axis; one unit is a Bernoulli probability (sigmoid). Gaussian
heads give 2*D numbers on the last axis: D means, then D positive scales
(`rank1_keras.layers.GaussianParameters` makes them).
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend import get_keras_mask  # Keras' own losses read masks the same way
from keras.src.losses.loss import reduce_weighted_values

from rank1_keras import validation
from rank1_keras.ensemble import gaussian_parts

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _static_rows(tensor):
    return tensor.shape[0] if tensor.shape.rank else None


def member_view(y_true, y_pred, ensemble_size):
    """Predictions (M*B, ...) for B labels as (M, B, ...), M = ensemble_size or 1.

    Raises:
        ValueError: when the row counts are known and fit neither B nor K*B.
    """
    label_rows, prediction_rows = _static_rows(y_true), _static_rows(y_pred)
    if label_rows is not None and prediction_rows is not None:
        if prediction_rows not in (label_rows, ensemble_size * label_rows):
            raise ValueError(
                f"y_true has {label_rows} rows, so y_pred must have {label_rows} (one per example) or "
                f"{ensemble_size * label_rows} rows (ensemble_size={ensemble_size} members, block order); got y_pred of "
                f"shape {tuple(y_pred.shape)}."
            )
        members = prediction_rows // label_rows
    else:
        label_rows, prediction_rows = tf.shape(y_true)[0], tf.shape(y_pred)[0]
        check = tf.debugging.Assert(
            tf.logical_or(
                tf.equal(prediction_rows, label_rows), tf.equal(prediction_rows, ensemble_size * label_rows)
            ),
            [
                f"y_pred must have B rows (one per label) or ensemble_size*B rows "
                f"(ensemble_size={ensemble_size}, block order); got y_pred rows:",
                prediction_rows,
                "y_true rows:",
                label_rows,
            ],
        )
        with tf.control_dependencies([check]):
            members = prediction_rows // label_rows
    return tf.reshape(y_pred, tf.concat([[members, label_rows], tf.shape(y_pred)[1:]], axis=0))


def _safe_log(probabilities):
    # A zero probability gives a large finite loss instead of inf. `where` on
    # an equality leaves NaN in place on every CPU (min/max need not).
    tiny = np.finfo(probabilities.dtype.as_numpy_dtype).tiny
    return tf.math.log(tf.where(tf.equal(probabilities, 0.0), tf.cast(tiny, probabilities.dtype), probabilities))


def sparse_labels(y_true, y_pred):
    """Integer labels (B, d...) from sparse or one-hot `y_true`, for predictions (R, d..., C)."""
    num_classes = y_pred.shape[-1]
    label_rank, prediction_rank = y_true.shape.rank, y_pred.shape.rank
    if label_rank == prediction_rank - 1:
        return y_true
    if label_rank == prediction_rank and y_true.shape[-1] == 1 and num_classes != 1:
        return tf.squeeze(y_true, axis=-1)
    if label_rank == prediction_rank and y_true.shape[-1] == num_classes:
        return tf.argmax(y_true, axis=-1)  # one-hot rows
    raise ValueError(
        f"y_true must hold class indices of shape (B{', d...' if prediction_rank > 2 else ''}) or one-hot "
        f"rows with {num_classes} classes (the last axis of y_pred, shape {tuple(y_pred.shape)}); got y_true of "
        f"shape {tuple(y_true.shape)}."
    )


def class_log_likelihood(y_true, members, from_logits=False, ignore_class=None):
    """log p_m(y) per member and position, shape (M, B, d...), and the valid-position mask.

    Args:
        y_true: class indices (B, d...) / (B, d..., 1), or one-hot (B, d..., C);
            for one output unit (a Bernoulli head), 0/1 labels.
        members: (M, B, d..., C) probabilities (or logits).
        from_logits: whether `members` are logits.
        ignore_class: a label value whose positions are left out (None: none).

    Returns:
        (log_likelihood, valid): valid is None without `ignore_class`.
    """
    num_classes = members.shape[-1]
    if num_classes is None:
        raise ValueError(f"y_pred needs a known last (class) axis; got shape {tuple(members.shape[1:])}.")
    if num_classes == 1:  # a Bernoulli head: p(y=1) on one unit
        labels = tf.reshape(tf.cast(y_true, members.dtype), tf.shape(members)[1:])
        if from_logits:
            log_likelihood = -tf.nn.sigmoid_cross_entropy_with_logits(tf.broadcast_to(labels, tf.shape(members)), members)
        else:
            log_likelihood = labels * _safe_log(members) + (1.0 - labels) * _safe_log(1.0 - members)
        return tf.squeeze(log_likelihood, axis=-1), None
    labels = tf.cast(sparse_labels(y_true, members[0]), tf.int32)
    valid = None
    if ignore_class is not None:
        valid = tf.not_equal(labels, ignore_class)
        labels = tf.where(valid, labels, 0)
    in_range = tf.reduce_all(tf.logical_and(labels >= 0, labels < num_classes))
    check = tf.debugging.Assert(
        in_range,
        [f"y_true holds a class index outside [0, {num_classes}) (the last axis of y_pred); min and max:",
         tf.reduce_min(labels), tf.reduce_max(labels)],
    )
    with tf.control_dependencies([check]):
        labels = tf.identity(labels)
    log_probabilities = tf.nn.log_softmax(members, axis=-1) if from_logits else _safe_log(members)
    one_hot = tf.one_hot(labels, num_classes, dtype=log_probabilities.dtype)
    return tf.reduce_sum(one_hot[None] * log_probabilities, axis=-1), valid


def gaussian_log_likelihood(y_true, members):
    """log N(y; mu_m, sigma_m^2) per member and position, summed over the D outputs.

    Args:
        y_true: (B, d..., D) targets (or (B,) for D = 1).
        members: (M, B, d..., 2*D): D means, then D positive scales.
    """
    mean, scale = gaussian_parts(members)
    outputs = mean.shape[-1]
    y_true = tf.cast(y_true, members.dtype)
    if y_true.shape.rank == members.shape.rank - 2 and outputs == 1:
        y_true = y_true[..., None]
    if y_true.shape.rank != members.shape.rank - 1 or y_true.shape[-1] not in (None, outputs):
        raise ValueError(
            f"y_true must have shape (B, ..., {outputs}) for a Gaussian head of {outputs} output(s) "
            f"(y_pred's last axis is 2*{outputs}); got y_true of shape {tuple(y_true.shape)}."
        )
    standardized = (y_true[None] - mean) / scale
    return tf.reduce_sum(-_HALF_LOG_TWO_PI - tf.math.log(scale) - 0.5 * tf.square(standardized), axis=-1)


class _EnsembleLoss(keras.losses.Loss):
    """Base: member view, per-position log-likelihoods, average or mixture reduction.

    `call(y_true, y_pred)` returns per-example (per-position) losses of shape
    (B, d...); `__call__` also leaves out masked positions.
    """

    mixture = False

    def __init__(self, ensemble_size, name=None, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")

    def _log_likelihood(self, y_true, members):
        """(log_likelihood (M, B, d...), valid mask or None)."""
        raise NotImplementedError

    def _losses(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        log_likelihood, valid = self._log_likelihood(y_true, member_view(y_true, y_pred, self.ensemble_size))
        if self.mixture:
            members = tf.cast(tf.shape(log_likelihood)[0], log_likelihood.dtype)
            losses = -(tf.reduce_logsumexp(log_likelihood, axis=0) - tf.math.log(members))
        else:
            losses = -tf.reduce_mean(log_likelihood, axis=0)
        if valid is not None:
            losses = tf.where(valid, losses, tf.zeros_like(losses))
        return losses, valid

    def call(self, y_true, y_pred):
        return self._losses(y_true, y_pred)[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Members share their example's mask: the first block of a (K*B, ...)
        # prediction mask is the plain batch's.
        prediction_mask = get_keras_mask(y_pred)
        with tf.name_scope(self.name):
            losses, valid = self._losses(y_true, y_pred)
            mask = valid
            if prediction_mask is not None:
                prediction_mask = member_view(y_true, prediction_mask, self.ensemble_size)[0]
                prediction_mask = tf.reshape(tf.cast(prediction_mask, tf.bool), tf.shape(losses))
                mask = prediction_mask if mask is None else tf.logical_and(mask, prediction_mask)
            return reduce_weighted_values(
                losses, sample_weight=sample_weight, mask=mask, reduction=self.reduction, dtype=self.dtype
            )

    def get_config(self):
        return {**super().get_config(), "ensemble_size": self.ensemble_size}


class _ClassificationLoss(_EnsembleLoss):
    def __init__(self, ensemble_size, from_logits=False, ignore_class=None, name=None, reduction="sum_over_batch_size"):
        super().__init__(ensemble_size, name=name, reduction=reduction)
        self.from_logits = bool(from_logits)
        if ignore_class is not None:
            validation.check_int(ignore_class, "ignore_class")
        self.ignore_class = ignore_class

    def _log_likelihood(self, y_true, members):
        return class_log_likelihood(y_true, members, self.from_logits, self.ignore_class)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "ignore_class": self.ignore_class}


@keras.saving.register_keras_serializable(package="rank1_keras")
class AverageNLL(_ClassificationLoss):
    """Average NLL over members, -(1/K) sum_k log p(y | x, theta_k), per example.

    Args:
        ensemble_size: K.
        from_logits: whether the model outputs logits (else probabilities).
        ignore_class: a label value left out of the loss (e.g. a void class
            of a segmentation map), as in Keras' sparse cross-entropy.

    Example:

    >>> loss = AverageNLL(ensemble_size=2)
    >>> probabilities = tf.constant([[0.5, 0.5], [0.25, 0.75]])   # K=2, B=1
    >>> round(float(loss([1], probabilities)), 4)    # -(log .5 + log .75)/2
    0.4904
    """

    def __init__(self, ensemble_size, from_logits=False, ignore_class=None, name="average_nll", **kwargs):
        super().__init__(ensemble_size, from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="rank1_keras")
class MixtureNLL(_ClassificationLoss):
    """Mixture NLL, -log (1/K) sum_k p(y | x, theta_k), per example.

    Example:

    >>> loss = MixtureNLL(ensemble_size=2)
    >>> probabilities = tf.constant([[0.5, 0.5], [0.25, 0.75]])   # K=2, B=1
    >>> round(float(loss([1], probabilities)), 4)    # -log((.5 + .75)/2)
    0.47
    """

    mixture = True

    def __init__(self, ensemble_size, from_logits=False, ignore_class=None, name="mixture_nll", **kwargs):
        super().__init__(ensemble_size, from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)


class _GaussianLoss(_EnsembleLoss):
    def _log_likelihood(self, y_true, members):
        return gaussian_log_likelihood(y_true, members), None


@keras.saving.register_keras_serializable(package="rank1_keras")
class AverageGaussianNLL(_GaussianLoss):
    """Average Gaussian NLL over members, -(1/K) sum_k log N(y; mu_k, sigma_k^2).

    Each member is trained as its own heteroscedastic regressor (a deep
    ensemble's objective). Predictions: (K*B or B, ..., 2*D), D means then
    D positive scales.

    Example:

    >>> loss = AverageGaussianNLL(ensemble_size=2)
    >>> heads = tf.constant([[0.0, 1.0], [2.0, 1.0]])   # K=2, B=1: (mean, scale)
    >>> round(float(loss([[0.0]], heads)), 4)     # 0.9189 + (0 + 2)/2
    1.9189
    """

    def __init__(self, ensemble_size, name="average_gaussian_nll", **kwargs):
        super().__init__(ensemble_size, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="rank1_keras")
class MixtureGaussianNLL(_GaussianLoss):
    """Mixture Gaussian NLL, -log (1/K) sum_k N(y; mu_k, sigma_k^2) (the evaluation NLL).

    Example:

    >>> loss = MixtureGaussianNLL(ensemble_size=2)
    >>> heads = tf.constant([[0.0, 1.0], [2.0, 1.0]])
    >>> round(float(loss([[0.0]], heads)), 4)     # -log((N(0;0,1) + N(0;2,1)) / 2)
    1.4852
    """

    mixture = True

    def __init__(self, ensemble_size, name="mixture_gaussian_nll", **kwargs):
        super().__init__(ensemble_size, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="rank1_keras")
class MemberMeanSquaredError(_EnsembleLoss):
    """Mean over members of each member's squared error: point regression ensembles.

    Predictions (K*B or B, ..., D) for targets (B, ..., D); every member is
    fitted to the targets on its own (a deep ensemble of MSE regressors).

    Example:

    >>> loss = MemberMeanSquaredError(ensemble_size=2)
    >>> round(float(loss([[1.0]], tf.constant([[0.0], [3.0]]))), 4)   # (1 + 4) / 2
    2.5
    """

    def __init__(self, ensemble_size, name="member_mean_squared_error", **kwargs):
        super().__init__(ensemble_size, name=name, **kwargs)

    def _log_likelihood(self, y_true, members):
        y_true = tf.cast(y_true, members.dtype)
        if y_true.shape.rank == members.shape.rank - 2 and members.shape[-1] == 1:
            y_true = y_true[..., None]
        if y_true.shape.rank != members.shape.rank - 1 or y_true.shape[-1] not in (None, members.shape[-1]):
            raise ValueError(
                f"y_true must have shape (B, ..., {members.shape[-1]}) like one member's prediction; got y_true "
                f"of shape {tuple(y_true.shape)}."
            )
        # "log-likelihood" up to constants: minus the squared error, so the average reduction is the MSE.
        return -tf.reduce_mean(tf.square(y_true[None] - members), axis=-1), None
