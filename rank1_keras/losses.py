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
from keras import ops
from keras.src.backend import get_keras_mask  # Keras' own losses read masks the same way
from keras.src.losses.loss import reduce_weighted_values
from keras.src.utils.backend_utils import in_tf_graph
from keras.src.utils.jax_utils import is_in_jax_tracing_scope

from rank1_keras import validation
from rank1_keras.models.ensemble import gaussian_parts

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _static_rows(tensor):
    return tensor.shape[0] if len(tensor.shape) else None


def _stop_unless(condition, message, values, tensor):
    """`tensor`, once the boolean scalar `condition` holds; else the step stops with `message` and `values()`.

    Known values (eager TensorFlow, PyTorch, JAX outside `jit`): a ValueError
    right here, on every backend. A traced TensorFlow step (`tf.function`)
    keeps TensorFlow's in-graph assertion, an InvalidArgumentError when the
    step runs: its values are unknown while it is traced and keras.ops has no
    run-time assertion. Under JAX's `jit` nothing can raise (nor under XLA,
    which drops assertions): callers then make the bad values' losses NaN.
    """
    if keras.backend.backend() == "tensorflow" and in_tf_graph():
        import tensorflow as tf  # the one TensorFlow-only step: an assertion inside the graph

        check = tf.debugging.Assert(condition, [message, *values()])
        with tf.control_dependencies([check]):
            return tf.identity(tensor)
    if is_in_jax_tracing_scope(condition):
        return tensor
    if not bool(ops.convert_to_numpy(condition)):
        raise ValueError(" ".join([message, *(str(ops.convert_to_numpy(value)) for value in values())]))
    return tensor


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
    else:  # row counts known only when a traced TensorFlow step runs
        label_rows, prediction_rows = ops.shape(y_true)[0], ops.shape(y_pred)[0]
        members = _stop_unless(
            ops.logical_or(
                ops.equal(prediction_rows, label_rows), ops.equal(prediction_rows, ensemble_size * label_rows)
            ),
            f"y_pred must have B rows (one per label) or ensemble_size*B rows "
            f"(ensemble_size={ensemble_size}, block order); got y_pred rows:",
            lambda: [prediction_rows, "y_true rows:", label_rows],
            prediction_rows // label_rows,
        )
    return ops.reshape(y_pred, (members, label_rows) + tuple(ops.shape(y_pred)[1:]))


def _safe_log(probabilities):
    # A zero probability gives a large finite loss instead of inf. `where` on
    # an equality leaves NaN in place on every CPU (min/max need not).
    dtype = keras.backend.standardize_dtype(probabilities.dtype)
    tiny = ops.convert_to_tensor(np.finfo(dtype).tiny, dtype)
    return ops.log(ops.where(ops.equal(probabilities, 0.0), tiny, probabilities))


def sparse_labels(y_true, y_pred):
    """Integer labels (B, d...) from sparse or one-hot `y_true`, for predictions (R, d..., C)."""
    num_classes = y_pred.shape[-1]
    label_rank, prediction_rank = len(y_true.shape), len(y_pred.shape)
    if label_rank == prediction_rank - 1:
        return y_true
    if label_rank == prediction_rank and y_true.shape[-1] == 1 and num_classes != 1:
        return ops.squeeze(y_true, axis=-1)
    if label_rank == prediction_rank and y_true.shape[-1] == num_classes:
        return ops.argmax(y_true, axis=-1)  # one-hot rows
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

    Raises:
        ValueError: for a class index outside [0, C) (not `ignore_class`)
            when the labels' values are known; a traced TensorFlow step stops
            with the same message; under JAX's jit or XLA its loss is NaN.
    """
    num_classes = members.shape[-1]
    if num_classes is None:
        raise ValueError(f"y_pred needs a known last (class) axis; got shape {tuple(members.shape[1:])}.")
    if num_classes == 1:  # a Bernoulli head: p(y=1) on one unit
        labels = ops.reshape(ops.cast(y_true, members.dtype), tuple(ops.shape(members)[1:]))
        if from_logits:
            # log p(y) = -(the sigmoid cross-entropy of the logits), the stable form.
            labels = ops.broadcast_to(labels, ops.shape(members))
            log_likelihood = -ops.binary_crossentropy(labels, members, from_logits=True)
        else:
            log_likelihood = labels * _safe_log(members) + (1.0 - labels) * _safe_log(1.0 - members)
        return ops.squeeze(log_likelihood, axis=-1), None
    labels = ops.cast(sparse_labels(y_true, members[0]), "int32")
    valid = None
    if ignore_class is not None:
        valid = ops.not_equal(labels, ignore_class)
        labels = ops.where(valid, labels, 0)
    in_range = ops.logical_and(labels >= 0, labels < num_classes)
    labels = _stop_unless(
        ops.all(in_range),
        f"y_true holds a class index outside [0, {num_classes}) (the last axis of y_pred); min and max:",
        lambda: [ops.min(labels), ops.max(labels)],
        labels,
    )
    log_probabilities = ops.log_softmax(members, axis=-1) if from_logits else _safe_log(members)
    one_hot = ops.one_hot(labels, num_classes, dtype=log_probabilities.dtype)
    log_likelihood = ops.sum(one_hot[None] * log_probabilities, axis=-1)
    # Where no check can stop the step (JAX's jit, XLA), a bad label's loss is NaN, not a silent 0.
    return ops.where(in_range[None], log_likelihood, np.nan), valid


def gaussian_log_likelihood(y_true, members):
    """log N(y; mu_m, sigma_m^2) per member and position, summed over the D outputs.

    Args:
        y_true: (B, d..., D) targets (or (B,) for D = 1).
        members: (M, B, d..., 2*D): D means, then D positive scales.
    """
    mean, scale = gaussian_parts(members)
    outputs = mean.shape[-1]
    y_true = ops.cast(y_true, members.dtype)
    if len(y_true.shape) == len(members.shape) - 2 and outputs == 1:
        y_true = y_true[..., None]
    if len(y_true.shape) != len(members.shape) - 1 or y_true.shape[-1] not in (None, outputs):
        raise ValueError(
            f"y_true must have shape (B, ..., {outputs}) for a Gaussian head of {outputs} output(s) "
            f"(y_pred's last axis is 2*{outputs}); got y_true of shape {tuple(y_true.shape)}."
        )
    standardized = (y_true[None] - mean) / scale
    return ops.sum(-_HALF_LOG_TWO_PI - ops.log(scale) - 0.5 * ops.square(standardized), axis=-1)


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
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        log_likelihood, valid = self._log_likelihood(y_true, member_view(y_true, y_pred, self.ensemble_size))
        if self.mixture:
            members = ops.cast(ops.shape(log_likelihood)[0], log_likelihood.dtype)
            losses = -(ops.logsumexp(log_likelihood, axis=0) - ops.log(members))
        else:
            losses = -ops.mean(log_likelihood, axis=0)
        if valid is not None:
            losses = ops.where(valid, losses, ops.zeros_like(losses))
        return losses, valid

    def call(self, y_true, y_pred):
        return self._losses(y_true, y_pred)[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Members share their example's mask: the first block of a (K*B, ...)
        # prediction mask is the plain batch's.
        prediction_mask = get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            losses, valid = self._losses(y_true, y_pred)
            mask = valid
            if prediction_mask is not None:
                prediction_mask = member_view(ops.convert_to_tensor(y_true), prediction_mask, self.ensemble_size)[0]
                prediction_mask = ops.reshape(ops.cast(prediction_mask, "bool"), ops.shape(losses))
                mask = prediction_mask if mask is None else ops.logical_and(mask, prediction_mask)
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
    >>> probabilities = keras.ops.convert_to_tensor([[0.5, 0.5], [0.25, 0.75]])   # K=2, B=1
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
    >>> probabilities = keras.ops.convert_to_tensor([[0.5, 0.5], [0.25, 0.75]])   # K=2, B=1
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
    >>> heads = keras.ops.convert_to_tensor([[0.0, 1.0], [2.0, 1.0]])   # K=2, B=1: (mean, scale)
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
    >>> heads = keras.ops.convert_to_tensor([[0.0, 1.0], [2.0, 1.0]])
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
    >>> round(float(loss([[1.0]], keras.ops.convert_to_tensor([[0.0], [3.0]]))), 4)   # (1 + 4) / 2
    2.5
    """

    def __init__(self, ensemble_size, name="member_mean_squared_error", **kwargs):
        super().__init__(ensemble_size, name=name, **kwargs)

    def _log_likelihood(self, y_true, members):
        y_true = ops.cast(y_true, members.dtype)
        if len(y_true.shape) == len(members.shape) - 2 and members.shape[-1] == 1:
            y_true = y_true[..., None]
        if len(y_true.shape) != len(members.shape) - 1 or y_true.shape[-1] not in (None, members.shape[-1]):
            raise ValueError(
                f"y_true must have shape (B, ..., {members.shape[-1]}) like one member's prediction; got y_true "
                f"of shape {tuple(y_true.shape)}."
            )
        # "log-likelihood" up to constants: minus the squared error, so the average reduction is the MSE.
        return -ops.mean(ops.square(y_true[None] - members), axis=-1), None
