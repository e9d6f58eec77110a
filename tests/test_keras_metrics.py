"""The Keras streaming metrics equal the NumPy metrics on the whole set, over any batching, on every backend."""

import keras
import numpy as np
import pytest

from rank1_keras import metrics
from rank1_keras.losses import AverageNLL

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _member_probabilities(members, count, classes, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(members, count, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, classes, size=count)
    return probabilities, labels


STREAMING = [
    (metrics.EnsembleAccuracy, metrics.accuracy),
    (metrics.EnsembleNLL, metrics.negative_log_likelihood),
    (metrics.BrierScore, metrics.brier_score),
    (metrics.ExpectedCalibrationError, metrics.expected_calibration_error),
]


@pytest.mark.parametrize("metric_class, reference", STREAMING, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("members", [1, 3])
def test_streaming_metric_equals_numpy_over_batches(metric_class, reference, members):
    member_probabilities, labels = _member_probabilities(members, 300, 5)
    metric = metric_class(ensemble_size=members)
    for start, stop in ((0, 7), (7, 128), (128, 300)):  # uneven batches
        rows = member_probabilities[:, start:stop].reshape(-1, 5)  # block order: member k's rows together
        metric.update_state(labels[start:stop], rows.astype("float32"))
    expected = reference(member_probabilities.mean(axis=0), labels)
    assert float(metric.result()) == pytest.approx(expected, rel=2e-5, abs=2e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_ece_bin_edges_match_numpy_on_exact_edges():
    # Confidences exactly on bin edges (k/15) go to the bin they close, as in metrics.ECE.
    confidences = np.array([1 / 15, 2 / 15, 0.5, 14 / 15, 1.0])
    probabilities = np.stack([confidences, 1 - confidences], axis=1)
    probabilities = np.where(probabilities[:, :1] >= 0.5, probabilities, probabilities[:, ::-1])
    labels = np.array([0, 1, 0, 0, 1])
    metric = metrics.ExpectedCalibrationError()
    metric.update_state(labels, probabilities.astype("float32"))
    assert float(metric.result()) == pytest.approx(metrics.expected_calibration_error(probabilities, labels), abs=1e-6)


def test_metrics_work_in_compile_and_round_trip():
    members = 2
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "sparse_categorical_crossentropy",
                  metrics=[metrics.EnsembleAccuracy(), metrics.ExpectedCalibrationError(num_bins=10)])
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = np.arange(64) % 3
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    probabilities = model.predict(x, verbose=0).astype("float64")
    assert logs["ensemble_accuracy"] == pytest.approx(metrics.accuracy(probabilities, y), abs=1e-6)
    assert logs["ece"] == pytest.approx(metrics.expected_calibration_error(probabilities, y, num_bins=10), abs=1e-5)
    for metric in (metrics.EnsembleNLL(members), metrics.ExpectedCalibrationError(members, num_bins=7)):
        clone = type(metric).from_config(metric.get_config())
        assert clone.get_config() == metric.get_config()


def test_wrong_row_count_and_bad_arguments_fail():
    metric = metrics.EnsembleAccuracy(ensemble_size=4)
    with pytest.raises(ValueError, match=r"y_true has 3 rows, so y_pred must have 3 .* or 12 rows"):
        metric.update_state(np.zeros(3), np.full((6, 2), 0.5, "float32"))
    with pytest.raises(ValueError, match="ensemble_size"):
        metrics.EnsembleNLL(ensemble_size=0)
    with pytest.raises(ValueError, match="num_bins"):
        metrics.ExpectedCalibrationError(num_bins=0)
    with pytest.raises(ValueError, match="sample_weight"):
        metrics.BrierScore().update_state([0], [[1.0, 0.0]], sample_weight=[1.0])


def _dense_members(seed=8, members=3):
    """Member logits (K*B, H, W, C) with labels (B, H, W), some of them the ignore label 255."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(members * 3, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(3, 4, 4))
    labels[0, 0] = 255
    labels[2, 1:3, 2] = 255
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    averaged = probabilities.astype(np.float64).reshape(members, 3, 4, 4, 3).mean(0).reshape(-1, 3)
    kept = labels.reshape(-1) != 255
    return logits, probabilities, labels, averaged[kept], labels.reshape(-1)[kept]


@pytest.mark.parametrize("metric_class, reference", STREAMING, ids=lambda v: getattr(v, "__name__", ""))
def test_dense_outputs_count_every_position_but_the_ignored_ones(metric_class, reference):
    members = 3
    logits, probabilities, labels, averaged, kept_labels = _dense_members(members=members)
    expected = reference(averaged, kept_labels)
    metric = metric_class(members, ignore_class=255)
    for rows in (slice(0, 1), slice(1, 3)):  # two batches: member k's rows of examples 0, then 1-2
        batch = probabilities.reshape(members, 3, 4, 4, 3)[:, rows].reshape(-1, 4, 4, 3)
        metric.update_state(labels[rows], batch)
    assert float(metric.result()) == pytest.approx(expected, rel=2e-5, abs=2e-6)
    from_logits = metric_class(members, from_logits=True, ignore_class=255)
    from_logits.update_state(labels, logits)
    assert float(from_logits.result()) == pytest.approx(expected, rel=2e-5, abs=2e-6)


def test_ignored_positions_count_in_a_compiled_evaluation():
    # evaluate() runs the metrics inside the traced step (tf.function, JAX's jit).
    members = 3
    _, probabilities, labels, averaged, kept_labels = _dense_members(members=members)
    features = np.swapaxes(probabilities.reshape(members, 3, 4, 4, 3), 0, 1)  # (B, K, H, W, C)
    inputs = keras.Input((members, 4, 4, 3))
    # Back to K*B member rows in block order, as a tiled ensemble outputs them.
    rows = keras.layers.Lambda(lambda x: keras.ops.reshape(keras.ops.swapaxes(x, 0, 1), (-1, 4, 4, 3)))(inputs)
    model = keras.Model(inputs, rows)
    model.compile(
        loss=AverageNLL(members, ignore_class=255),
        metrics=[
            metrics.EnsembleAccuracy(members, ignore_class=255),
            metrics.EnsembleNLL(members, ignore_class=255),
            metrics.BrierScore(members, ignore_class=255),
            metrics.ExpectedCalibrationError(members, ignore_class=255),
        ],
    )
    logs = model.evaluate(features, labels, batch_size=2, verbose=0, return_dict=True)  # batches of 2 and 1
    assert logs["ensemble_accuracy"] == pytest.approx(metrics.accuracy(averaged, kept_labels), abs=1e-6)
    assert logs["ensemble_nll"] == pytest.approx(metrics.negative_log_likelihood(averaged, kept_labels), rel=2e-5)
    assert logs["brier_score"] == pytest.approx(metrics.brier_score(averaged, kept_labels), rel=2e-5)
    assert logs["ece"] == pytest.approx(metrics.expected_calibration_error(averaged, kept_labels), abs=2e-6)
    # The loss of one batch: -(1/K) sum_k log p_k(y), averaged over the kept positions.
    member_view = probabilities.astype(np.float64).reshape(members, 3, 4, 4, 3)
    picked = np.take_along_axis(member_view, np.where(labels == 255, 0, labels)[None, ..., None], -1)[..., 0]
    expected_loss = -np.log(picked).mean(0)[labels != 255].mean()
    logs = model.evaluate(features, labels, batch_size=3, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(expected_loss, rel=2e-5)
