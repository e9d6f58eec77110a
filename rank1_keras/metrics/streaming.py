"""Keras (streaming) versions of the ensemble metrics, for `model.compile(metrics=...)`.

Each takes the model's output as it comes in training or evaluation: B rows
of probabilities for B labels, or K*B member rows in block order (a tiled
ensemble), which are averaged per example first (probabilities, never
logits: `from_logits=True` applies softmax to each member first). Dense
outputs (rows, d..., C) with labels (B, d...) count every position, less
those labelled `ignore_class` (per-pixel metrics for segmentation). They accumulate over batches and equal the NumPy functions of
`rank1_keras.metrics` on the whole set (tested to float32 precision):

| metric                      | accumulates                                    |
|-----------------------------|------------------------------------------------|
| `EnsembleAccuracy`          | correct predictions / examples                 |
| `EnsembleNLL`               | -log pbar_y summed / examples (mixture NLL)    |
| `BrierScore`                | sum_c (pbar_c - 1[c = y])^2 / examples         |
| `ExpectedCalibrationError`  | per-bin counts, correct and confidence sums    |

Example:

    model.compile("adam", rank1_keras.AverageNLL(4),
                  metrics=[EnsembleAccuracy(4), ExpectedCalibrationError(4)])
"""

import keras
import numpy as np
from keras import ops

from rank1_keras import validation
from rank1_keras.losses import member_view, sparse_labels

_PACKAGE = "rank1_keras"
# Floors the label's probability so log(0) is a large finite cost, not inf.
_PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)


def _average_members(y_true, y_pred, ensemble_size, from_logits=False, ignore_class=None):
    """(N,) int labels, (N, C) member-averaged probabilities and (N,) kept flags from B or K*B rows.

    Dense outputs (rows, d..., C) with labels (B, d...) give one entry per
    position (N = B x positions); those labelled `ignore_class` are not kept
    (their label reads 0). `kept` is None without `ignore_class`: every entry counts.
    """
    y_true = ops.convert_to_tensor(y_true)
    members = member_view(y_true, ops.cast(y_pred, "float32"), ensemble_size)
    probabilities = ops.softmax(members, axis=-1) if from_logits else members
    probabilities = ops.mean(probabilities, axis=0)  # probabilities, never logits
    labels = ops.cast(ops.reshape(sparse_labels(y_true, probabilities), [-1]), "int32")
    probabilities = ops.reshape(probabilities, (-1, ops.shape(probabilities)[-1]))
    kept = None
    if ignore_class is not None:
        # Flags, not a boolean mask: the entry count stays static (JAX's jit needs it).
        kept = ops.not_equal(labels, ignore_class)
        labels = ops.where(kept, labels, 0)
    return labels, probabilities, kept


def _kept_sum(values, kept):
    """The sum of the kept entries of (N,) `values`; every entry without `kept`."""
    return ops.sum(values if kept is None else ops.where(kept, values, ops.zeros_like(values)))


def _kept_count(values, kept):
    return ops.cast(ops.size(values), "float32") if kept is None else ops.sum(ops.cast(kept, "float32"))


class _EnsembleMeanMetric(keras.metrics.Metric):
    """A per-example quantity of the averaged probabilities, averaged over all examples."""

    def __init__(self, ensemble_size=1, name=None, dtype=None, from_logits=False, ignore_class=None):
        super().__init__(name=name, dtype=dtype)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.from_logits = bool(from_logits)
        self.ignore_class = None if ignore_class is None else validation.check_int(ignore_class, "ignore_class")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def per_example(self, labels, probabilities):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} takes no sample_weight; got one.")
        labels, probabilities, kept = _average_members(
            y_true, y_pred, self.ensemble_size, self.from_logits, self.ignore_class
        )
        values = self.per_example(labels, probabilities)
        self.total.assign_add(_kept_sum(values, kept))
        self.count.assign_add(_kept_count(values, kept))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "from_logits": self.from_logits,
            "ignore_class": self.ignore_class,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EnsembleAccuracy(_EnsembleMeanMetric):
    """Accuracy of the member-averaged probabilities (ties go to the lowest class)."""

    def __init__(self, ensemble_size=1, name="ensemble_accuracy", dtype=None, **kwargs):
        super().__init__(ensemble_size, name=name, dtype=dtype, **kwargs)

    def per_example(self, labels, probabilities):
        return ops.cast(ops.equal(ops.cast(ops.argmax(probabilities, axis=-1), "int32"), labels), "float32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EnsembleNLL(_EnsembleMeanMetric):
    """-log of the averaged probability of the label (the mixture NLL), per example."""

    def __init__(self, ensemble_size=1, name="ensemble_nll", dtype=None, **kwargs):
        super().__init__(ensemble_size, name=name, dtype=dtype, **kwargs)

    def per_example(self, labels, probabilities):
        picked = ops.take_along_axis(probabilities, labels[:, None], axis=1)[:, 0]
        return -ops.log(ops.maximum(picked, _PROBABILITY_FLOOR))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BrierScore(_EnsembleMeanMetric):
    """sum_c (pbar_c - 1[c = y])^2 per example, averaged."""

    def __init__(self, ensemble_size=1, name="brier_score", dtype=None, **kwargs):
        super().__init__(ensemble_size, name=name, dtype=dtype, **kwargs)

    def per_example(self, labels, probabilities):
        one_hot = ops.one_hot(labels, probabilities.shape[-1], dtype=probabilities.dtype)
        return ops.sum(ops.square(probabilities - one_hot), axis=-1)


def _inner_bin_edges(num_bins):
    """The num_bins - 1 inner edges b/B, as float32 b * (1/B): one NumPy constant, the same on every backend.

    (Bit for bit TensorFlow's linspace(0, 1, B + 1)[1:-1]: confidences on an edge keep their bins.)
    """
    return np.arange(1, num_bins, dtype=np.float32) * (np.float32(1.0) / np.float32(num_bins))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExpectedCalibrationError(keras.metrics.Metric):
    """ECE with `num_bins` equal-width confidence bins (lo, hi], the first one holding 0.

    ECE = sum_b (n_b / N) |acc_b - conf_b|, accumulated as per-bin counts,
    correct sums and confidence sums, so it is exact over any batching.
    """

    def __init__(self, ensemble_size=1, num_bins=15, name="ece", dtype=None, from_logits=False, ignore_class=None):
        super().__init__(name=name, dtype=dtype)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.from_logits = bool(from_logits)
        self.ignore_class = None if ignore_class is None else validation.check_int(ignore_class, "ignore_class")
        self.num_bins = validation.check_positive_int(num_bins, "num_bins")
        self.counts = self.add_variable(shape=(self.num_bins,), initializer="zeros", name="counts")
        self.correct_sums = self.add_variable(shape=(self.num_bins,), initializer="zeros", name="correct_sums")
        self.confidence_sums = self.add_variable(shape=(self.num_bins,), initializer="zeros", name="confidence_sums")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("ExpectedCalibrationError takes no sample_weight; got one.")
        labels, probabilities, kept = _average_members(
            y_true, y_pred, self.ensemble_size, self.from_logits, self.ignore_class
        )
        confidences = ops.max(probabilities, axis=-1)
        correct = ops.cast(ops.equal(ops.cast(ops.argmax(probabilities, axis=-1), "int32"), labels), "float32")
        ones = ops.ones_like(confidences)
        if kept is not None:  # an ignored entry adds 0 to its bin's count and sums
            zeros = ops.zeros_like(confidences)
            ones, correct, confidences = (ops.where(kept, value, zeros) for value in (ones, correct, confidences))
        # Bin b holds (b/B, (b+1)/B]: the count of inner edges strictly below the confidence.
        edges = ops.convert_to_tensor(_inner_bin_edges(self.num_bins))
        bins = ops.sum(ops.cast(ops.less(edges[None, :], confidences[:, None]), "int32"), axis=-1)
        self.counts.assign_add(ops.segment_sum(ones, bins, num_segments=self.num_bins))
        self.correct_sums.assign_add(ops.segment_sum(correct, bins, num_segments=self.num_bins))
        self.confidence_sums.assign_add(ops.segment_sum(confidences, bins, num_segments=self.num_bins))

    def result(self):
        total = ops.sum(self.counts)
        gaps = ops.abs(self.correct_sums - self.confidence_sums)  # n_b |acc_b - conf_b|
        return ops.divide_no_nan(ops.sum(gaps), total)

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "num_bins": self.num_bins,
            "from_logits": self.from_logits,
            "ignore_class": self.ignore_class,
        }
