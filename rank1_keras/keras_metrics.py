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
import tensorflow as tf

from rank1_keras import validation
from rank1_keras.losses import member_view, sparse_labels

_PACKAGE = "rank1_keras"
# Floors the label's probability so log(0) is a large finite cost, not inf.
_PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)


def _average_members(y_true, y_pred, ensemble_size, from_logits=False, ignore_class=None):
    """(N,) int labels and (N, C) member-averaged probabilities from B or K*B rows.

    Dense outputs (rows, d..., C) with labels (B, d...) give one entry per
    position (N = B x positions), less those labelled `ignore_class`.
    """
    members = member_view(tf.convert_to_tensor(y_true), tf.cast(y_pred, tf.float32), ensemble_size)
    probabilities = tf.nn.softmax(members, axis=-1) if from_logits else members
    probabilities = tf.reduce_mean(probabilities, axis=0)  # probabilities, never logits
    labels = tf.cast(tf.reshape(sparse_labels(tf.convert_to_tensor(y_true), probabilities), [-1]), tf.int32)
    probabilities = tf.reshape(probabilities, tf.stack([-1, tf.shape(probabilities)[-1]]))
    if ignore_class is not None:
        kept = tf.not_equal(labels, ignore_class)
        labels, probabilities = tf.boolean_mask(labels, kept), tf.boolean_mask(probabilities, kept)
    return labels, probabilities


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
        labels, probabilities = _average_members(y_true, y_pred, self.ensemble_size, self.from_logits, self.ignore_class)
        values = self.per_example(labels, probabilities)
        self.total.assign_add(tf.reduce_sum(values))
        self.count.assign_add(tf.cast(tf.size(values), tf.float32))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)

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
        return tf.cast(tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels), tf.float32)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EnsembleNLL(_EnsembleMeanMetric):
    """-log of the averaged probability of the label (the mixture NLL), per example."""

    def __init__(self, ensemble_size=1, name="ensemble_nll", dtype=None, **kwargs):
        super().__init__(ensemble_size, name=name, dtype=dtype, **kwargs)

    def per_example(self, labels, probabilities):
        picked = tf.gather(probabilities, labels, axis=1, batch_dims=1)
        return -tf.math.log(tf.maximum(picked, _PROBABILITY_FLOOR))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BrierScore(_EnsembleMeanMetric):
    """sum_c (pbar_c - 1[c = y])^2 per example, averaged."""

    def __init__(self, ensemble_size=1, name="brier_score", dtype=None, **kwargs):
        super().__init__(ensemble_size, name=name, dtype=dtype, **kwargs)

    def per_example(self, labels, probabilities):
        one_hot = tf.one_hot(labels, tf.shape(probabilities)[-1], dtype=probabilities.dtype)
        return tf.reduce_sum(tf.square(probabilities - one_hot), axis=-1)


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
        labels, probabilities = _average_members(y_true, y_pred, self.ensemble_size, self.from_logits, self.ignore_class)
        confidences = tf.reduce_max(probabilities, axis=-1)
        correct = tf.cast(tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels), tf.float32)
        # Bin b holds (b/B, (b+1)/B]: the count of inner edges strictly below the confidence.
        edges = tf.linspace(0.0, 1.0, self.num_bins + 1)[1:-1]
        bins = tf.reduce_sum(tf.cast(edges[None, :] < confidences[:, None], tf.int32), axis=-1)
        self.counts.assign_add(tf.math.bincount(bins, minlength=self.num_bins, maxlength=self.num_bins, dtype=tf.float32))
        self.correct_sums.assign_add(tf.math.unsorted_segment_sum(correct, bins, self.num_bins))
        self.confidence_sums.assign_add(tf.math.unsorted_segment_sum(confidences, bins, self.num_bins))

    def result(self):
        total = tf.reduce_sum(self.counts)
        gaps = tf.abs(self.correct_sums - self.confidence_sums)  # n_b |acc_b - conf_b|
        return tf.math.divide_no_nan(tf.reduce_sum(gaps), total)

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "num_bins": self.num_bins,
            "from_logits": self.from_logits,
            "ignore_class": self.ignore_class,
        }
