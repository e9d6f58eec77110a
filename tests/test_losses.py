"""Tests for the ensemble losses, the ensemble plumbing and KL annealing, on every backend."""

import math

import keras
import numpy as np
import pytest

from rank1_keras.callbacks import KLAnnealing
from rank1_keras.layers import DenseRank1
from rank1_keras.losses import (
    AverageGaussianNLL,
    AverageNLL,
    MemberMeanSquaredError,
    MixtureGaussianNLL,
    MixtureNLL,
)
from rank1_keras.models import ensemble
from rank1_keras.models.ensemble import AverageMembers, MemberAxis, TileEnsemble
from tests.backend_utils import numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

K, B, C = 3, 4, 5


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _logsumexp(a, axis):
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


def _data(seed):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.standard_normal((K * B, C))).astype(np.float32)
    probabilities = np.exp(_log_softmax(logits)).astype(np.float32)
    labels = rng.integers(0, C, size=B)
    member_labels = rng.integers(0, C, size=K * B)
    weights = rng.uniform(0.0, 2.0, size=B).astype(np.float32)
    return logits, probabilities, labels, member_labels, weights


def _per_row_nll(log_probabilities, labels):
    """-log p_row(y_row): one prediction row per label (split training, averaged outputs)."""
    log_probabilities = np.asarray(log_probabilities, np.float64)
    return -np.array([log_probabilities[i, labels[i]] for i in range(len(labels))])


def _member_log_likelihood(log_probabilities, labels):
    """(K, B) log p_k(y_b): the B labels are shared by the K member blocks."""
    log_probabilities = np.asarray(log_probabilities, np.float64).reshape(K, B, C)
    labels = np.tile(labels, (K, 1))
    out = np.empty((K, B))
    for k in range(K):
        for b in range(B):
            out[k, b] = log_probabilities[k, b, labels[k, b]]
    return out


def _average_nll(log_probabilities, labels):
    return -_member_log_likelihood(log_probabilities, labels).mean(0)


def _mixture_nll(log_probabilities, labels):
    ll = _member_log_likelihood(log_probabilities, labels)
    return -(_logsumexp(ll, 0) - math.log(K))


def _reduce(per_example, weights=None):
    # Keras' default "sum_over_batch_size": sum of (weighted) losses / number of examples.
    per_example = per_example if weights is None else per_example * weights
    return per_example.sum() / per_example.size


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_kind", ["sparse", "sparse_column", "one_hot", "per_member_sparse", "per_member_one_hot"])
@pytest.mark.parametrize("weighted", [False, True])
def test_losses_match_numpy(from_logits, label_kind, weighted):
    logits, probabilities, labels, member_labels, weights = _data(0)
    log_probabilities = _log_softmax(logits) if from_logits else np.log(probabilities.astype(np.float64))
    y_pred = logits if from_logits else probabilities
    reference_labels = member_labels if label_kind.startswith("per_member") else labels
    y_true = {
        "sparse": labels,
        "sparse_column": labels[:, None],
        "one_hot": np.eye(C, dtype=np.float32)[labels],
        "per_member_sparse": member_labels,
        "per_member_one_hot": np.eye(C, dtype=np.float32)[member_labels],
    }[label_kind]
    per_member = label_kind.startswith("per_member")
    if per_member:
        # One label per prediction row (split training): both losses are the per-row NLL.
        weights = np.tile(weights, K)
        expected_average = expected_mixture = _per_row_nll(log_probabilities, reference_labels)
    else:
        expected_average = _average_nll(log_probabilities, reference_labels)
        expected_mixture = _mixture_nll(log_probabilities, reference_labels)
    sample_weight = weights if weighted else None
    w = weights.astype(np.float64) if weighted else None
    average = AverageNLL(K, from_logits=from_logits)(y_true, y_pred, sample_weight=sample_weight)
    mixture = MixtureNLL(K, from_logits=from_logits)(y_true, y_pred, sample_weight=sample_weight)
    np.testing.assert_allclose(float(average), _reduce(expected_average, w), rtol=1e-5)
    np.testing.assert_allclose(float(mixture), _reduce(expected_mixture, w), rtol=1e-5)


@pytest.mark.parametrize("loss_class", [AverageNLL, MixtureNLL])
def test_averaged_predictions_give_the_plain_nll(loss_class):
    """At evaluation the model outputs (B, C) averaged probabilities: plain NLL."""
    _, probabilities, labels, _, _ = _data(3)
    averaged = probabilities.reshape(K, B, C).mean(0)
    expected = _per_row_nll(np.log(averaged.astype(np.float64)), labels)
    np.testing.assert_allclose(numpy(loss_class(K).call(labels, averaged)), expected, rtol=1e-5)
    # ... which is the mixture NLL of the members.
    np.testing.assert_allclose(expected, _mixture_nll(np.log(probabilities.astype(np.float64)), labels), rtol=1e-5)


def test_prediction_rows_must_be_b_or_k_times_b():
    _, probabilities, labels, _, _ = _data(4)
    # Known shapes (always on JAX and PyTorch): one ValueError naming both shapes, before any op.
    with pytest.raises(ValueError, match=rf"y_true has 3 rows, so y_pred must have 3 .* or {3 * K} rows \(ensemble_size={K} members"):
        AverageNLL(K).call(labels[:3], probabilities)


@pytest.mark.backends("tensorflow")
def test_prediction_rows_known_only_at_run_time_stop_the_traced_step():
    import tensorflow as tf

    _, probabilities, labels, _, _ = _data(4)
    # Shapes known only at run time (a traced step with a free batch axis): the in-graph check.
    spec_labels = tf.TensorSpec([None], tf.int64)
    spec_predictions = tf.TensorSpec([None, probabilities.shape[-1]], tf.float32)
    call = tf.function(lambda y, p: AverageNLL(K).call(y, p), input_signature=[spec_labels, spec_predictions])
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred must have B rows"):
        call(labels[:3].astype(np.int64), probabilities)


def test_per_example_values_and_block_order():
    logits, probabilities, labels, _, _ = _data(1)
    log_probabilities = np.log(probabilities.astype(np.float64))
    per_example_average = numpy(AverageNLL(K).call(labels, probabilities))
    per_example_mixture = numpy(MixtureNLL(K).call(labels, probabilities))
    np.testing.assert_allclose(per_example_average, _average_nll(log_probabilities, labels), rtol=1e-5)
    np.testing.assert_allclose(per_example_mixture, _mixture_nll(log_probabilities, labels), rtol=1e-5)
    # Hand check of block order for example 0: rows 0, B, 2B are its members.
    rows = [k * B for k in range(K)]
    hand = -np.mean([math.log(probabilities[r, labels[0]]) for r in rows])
    np.testing.assert_allclose(per_example_average[0], hand, rtol=1e-5)
    # An interleaved (member-major within example) reading would give another value.
    wrong = -np.mean([math.log(probabilities[r, labels[0]]) for r in range(K)])
    assert abs(hand - wrong) > 1e-3


def test_docstring_examples():
    probabilities = keras.ops.convert_to_tensor([[0.5, 0.5], [0.25, 0.75]])
    np.testing.assert_allclose(float(AverageNLL(2)([1], probabilities)), -(math.log(0.5) + math.log(0.75)) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(MixtureNLL(2)([1], probabilities)), -math.log((0.5 + 0.75) / 2), rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("from_logits", [False, True])
def test_mixture_is_at_most_average(seed, from_logits):
    logits, probabilities, labels, _, _ = _data(10 + seed)
    y_pred = logits if from_logits else probabilities
    average = numpy(AverageNLL(K, from_logits=from_logits).call(labels, y_pred))
    mixture = numpy(MixtureNLL(K, from_logits=from_logits).call(labels, y_pred))
    assert np.all(mixture <= average + 1e-6)
    assert np.any(mixture < average - 1e-3)  # strict for disagreeing members


def test_members_that_agree_give_equal_losses():
    row = np.array([[0.1, 0.2, 0.3, 0.15, 0.25]], np.float32)
    probabilities = np.tile(row, (K * B, 1))
    labels = np.array([0, 1, 2, 4])
    expected = -np.log(row[0, labels].astype(np.float64)).mean()
    np.testing.assert_allclose(float(AverageNLL(K)(labels, probabilities)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(MixtureNLL(K)(labels, probabilities)), expected, rtol=1e-6)


def test_large_logits_are_stable():
    logits = np.zeros((K * B, C), np.float32)
    logits[:, 0] = 1000.0
    labels = np.array([0, 1, 0, 1])
    log_probabilities = _log_softmax(logits)
    average = numpy(AverageNLL(K, from_logits=True).call(labels, logits))
    mixture = numpy(MixtureNLL(K, from_logits=True).call(labels, logits))
    np.testing.assert_allclose(average, _average_nll(log_probabilities, labels), rtol=1e-5)
    np.testing.assert_allclose(mixture, _mixture_nll(log_probabilities, labels), rtol=1e-5)
    np.testing.assert_allclose(mixture[1], 1000.0, rtol=1e-5)


def test_zero_probability_gives_large_finite_loss():
    tiny = np.finfo(np.float32).tiny
    probabilities = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)  # K=2, B=1
    average = float(AverageNLL(2)([1], probabilities))
    mixture = float(MixtureNLL(2)([1], probabilities))
    np.testing.assert_allclose(average, -(math.log(tiny) + math.log(0.5)) / 2, rtol=1e-5)
    np.testing.assert_allclose(mixture, -math.log((tiny + 0.5) / 2), rtol=1e-5)


def test_mismatched_label_rows_raise():
    _, probabilities, _, _, _ = _data(2)
    with pytest.raises(ValueError, match=rf"y_true has {B + 1} rows"):
        AverageNLL(K)(np.zeros(B + 1, np.int64), probabilities)


@pytest.mark.parametrize("labels", [[0, 7], [-2, 1]], ids=["too_large", "negative"])
def test_a_class_index_outside_the_classes_is_a_value_error(labels):
    probabilities = np.full((K * 2, 3), 1 / 3, np.float32)
    low, high = min(labels), max(labels)
    for loss in (AverageNLL(K), MixtureNLL(K, from_logits=True)):
        with pytest.raises(ValueError, match=rf"class index outside \[0, 3\) .*min and max: {low} {high}"):
            loss(np.array(labels), probabilities)
    # The ignored label may lie outside [0, C); the others may not.
    with pytest.raises(ValueError, match=r"class index outside \[0, 3\)"):
        AverageNLL(K, ignore_class=-2)(np.array([-2, 3]), probabilities)
    # Only the kept position counts: -log(1/3).
    np.testing.assert_allclose(float(AverageNLL(K, ignore_class=-2)(np.array([-2, 1]), probabilities)),
                               math.log(3.0), rtol=1e-6)


@pytest.mark.backends("tensorflow")
def test_a_class_index_outside_the_classes_stops_a_traced_tensorflow_step():
    import tensorflow as tf

    probabilities = np.full((K * 2, 3), 1 / 3, np.float32)
    step = tf.function(lambda y, p: AverageNLL(K)(y, p))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class index outside \[0, 3\)"):
        step(np.array([0, 7]), probabilities)
    # XLA drops assertions: the loss is NaN there, never a silent partial value.
    compiled = tf.function(lambda y, p: AverageNLL(K)(y, p), jit_compile=True)
    assert np.isnan(float(compiled(np.array([0, 7]), probabilities)))
    np.testing.assert_allclose(float(compiled(np.array([0, 2]), probabilities)), math.log(3.0), rtol=1e-6)


@pytest.mark.backends("jax")
def test_a_class_index_outside_the_classes_gives_a_nan_loss_under_jit():
    import jax

    probabilities = np.full((K * 2, 3), 1 / 3, np.float32)
    step = jax.jit(lambda y, p: MixtureNLL(K)(y, p))
    assert np.isnan(float(step(np.array([0, 7]), probabilities)))
    np.testing.assert_allclose(float(step(np.array([0, 2]), probabilities)), math.log(3.0), rtol=1e-6)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _average_and_mixture(log_likelihood):
    """(K, ...) member log-likelihoods -> the mean average NLL and the mean mixture NLL."""
    return -log_likelihood.mean(0).mean(), -(_logsumexp(log_likelihood, 0) - math.log(len(log_likelihood))).mean()


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("column", [False, True])
def test_one_unit_heads_are_bernoulli(from_logits, column):
    rng = np.random.default_rng(20)
    logits = (2.0 * rng.standard_normal((K * B, 1))).astype(np.float32)
    labels = rng.integers(0, 2, size=B)
    p = _sigmoid(logits).reshape(K, B)
    log_likelihood = labels * np.log(p) + (1 - labels) * np.log(1 - p)
    average, mixture = _average_and_mixture(log_likelihood)
    y_pred = logits if from_logits else _sigmoid(logits).astype(np.float32)
    y_true = labels[:, None] if column else labels
    np.testing.assert_allclose(float(AverageNLL(K, from_logits=from_logits)(y_true, y_pred)), average, rtol=1e-5)
    np.testing.assert_allclose(float(MixtureNLL(K, from_logits=from_logits)(y_true, y_pred)), mixture, rtol=1e-5)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("ignore_class", [None, -1, 2])
def test_per_position_losses_leave_out_the_ignored_label(from_logits, ignore_class):
    rng = np.random.default_rng(21)
    logits = rng.normal(size=(K * 2, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 4, 4))
    if ignore_class is not None:
        labels[0, :2] = ignore_class
    log_probabilities = _log_softmax(logits).reshape(K, 2, 4, 4, 3)
    kept = np.ones_like(labels, bool) if ignore_class is None else labels != ignore_class
    picked = np.take_along_axis(log_probabilities, np.where(kept, labels, 0)[None, ..., None], axis=-1)[..., 0]
    average = -picked.mean(0)[kept].mean()
    mixture = -(_logsumexp(picked, 0) - math.log(K))[kept].mean()
    y_pred = logits if from_logits else np.exp(log_probabilities).reshape(K * 2, 4, 4, 3).astype(np.float32)
    for loss_class, expected in ((AverageNLL, average), (MixtureNLL, mixture)):
        loss = loss_class(K, from_logits=from_logits, ignore_class=ignore_class)
        np.testing.assert_allclose(float(loss(labels, y_pred)), expected, rtol=1e-5)
        per_position = numpy(loss.call(labels, y_pred))
        assert per_position.shape == (2, 4, 4)
        np.testing.assert_array_equal(per_position[~kept], 0.0)


def test_gaussian_losses_match_the_closed_form():
    rng = np.random.default_rng(22)
    means = rng.normal(size=(K * B, 2))
    scales = rng.uniform(0.5, 2.0, size=(K * B, 2))
    heads = np.concatenate([means, scales], axis=-1).astype(np.float32)
    targets = rng.normal(size=(B, 2)).astype(np.float32)
    mu, sigma = (np.asarray(v, np.float32).astype(np.float64).reshape(K, B, 2) for v in (means, scales))
    log_density = -0.5 * np.log(2 * np.pi) - np.log(sigma) - 0.5 * ((targets - mu) / sigma) ** 2
    average, mixture = _average_and_mixture(log_density.sum(-1))
    np.testing.assert_allclose(float(AverageGaussianNLL(K)(targets, heads)), average, rtol=1e-5)
    np.testing.assert_allclose(float(MixtureGaussianNLL(K)(targets, heads)), mixture, rtol=1e-5)
    # One output: (B,) targets for (rows, 2) heads.
    one = np.concatenate([means[:, :1], scales[:, :1]], axis=-1).astype(np.float32)
    np.testing.assert_allclose(
        float(AverageGaussianNLL(K)(targets[:, 0], one)), -log_density[..., 0].mean(0).mean(), rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"y_true must have shape \(B, \.\.\., 2\)"):
        AverageGaussianNLL(K)(np.zeros((B, 3), np.float32), heads)


def test_member_mean_squared_error_is_each_members_squared_error():
    rng = np.random.default_rng(23)
    predictions = rng.normal(size=(K * B, 2)).astype(np.float32)
    targets = rng.normal(size=(B, 2)).astype(np.float32)
    errors = (predictions.astype(np.float64).reshape(K, B, 2) - targets) ** 2
    np.testing.assert_allclose(float(MemberMeanSquaredError(K)(targets, predictions)), errors.mean(), rtol=1e-5)
    # B rows: one prediction per example, the plain MSE.
    np.testing.assert_allclose(float(MemberMeanSquaredError(K)(targets, predictions[:B])), errors[0].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"y_true must have shape \(B, \.\.\., 2\)"):
        MemberMeanSquaredError(K)(np.zeros((B, 3), np.float32), predictions)


def test_a_masked_sequence_leaves_the_masked_steps_out_of_the_loss():
    # Embedding(mask_zero) -> TileEnsemble tiles the mask -> per-step softmax; AverageMembers
    # returns the member rows in training, so the loss reads a (K*B, T) mask.
    keras.utils.set_random_seed(3)
    steps = 6
    inputs = keras.Input((steps,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    tiled = TileEnsemble(K)(embedded)
    members = keras.layers.Dense(C, activation="softmax")(tiled)
    model = keras.Model(inputs, AverageMembers(K, training_output="members")(members))
    rng = np.random.default_rng(24)
    tokens = rng.integers(1, 10, size=(B, steps)).astype(np.int32)
    tokens[:, 4:] = 0  # padding
    tokens[0, 2:] = 0
    labels = rng.integers(0, C, size=(B, steps))
    kept = tokens != 0
    for training in (True, False):
        outputs = model(tokens, training=training)
        log_probabilities = np.log(numpy(outputs).astype(np.float64))
        rows = K if training else 1
        picked = np.take_along_axis(log_probabilities.reshape(rows, B, steps, C), labels[None, ..., None], -1)[..., 0]
        mixture = -(_logsumexp(picked, 0) - math.log(rows))
        for loss_class, expected in ((AverageNLL, -picked.mean(0)), (MixtureNLL, mixture)):
            np.testing.assert_allclose(float(numpy(loss_class(K)(labels, outputs))), expected[kept].mean(), rtol=1e-5)


@pytest.mark.parametrize("cls", [AverageNLL, MixtureNLL])
def test_loss_config_round_trip(cls):
    loss = cls(ensemble_size=4, from_logits=True)
    config = loss.get_config()
    assert config["ensemble_size"] == 4 and config["from_logits"] is True
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is cls
    assert restored.ensemble_size == 4 and restored.from_logits is True
    with pytest.raises(ValueError, match="ensemble_size"):
        cls(ensemble_size=0)


# ---------------------------------------------------------------------------
# Ensemble plumbing
# ---------------------------------------------------------------------------


def test_tile_ensemble_block_order():
    x = np.array([[1.0, 10.0], [2.0, 20.0]], np.float32)
    tiled = numpy(TileEnsemble(3)(x))
    np.testing.assert_array_equal(tiled, np.array([[1, 10], [2, 20]] * 3, np.float32))
    np.testing.assert_array_equal(numpy(ensemble.tile_members(x, 2)), np.concatenate([x, x]))
    images = np.arange(2 * 2 * 2 * 1, dtype=np.float32).reshape(2, 2, 2, 1)
    tiled_images = numpy(TileEnsemble(2)(images))
    np.testing.assert_array_equal(tiled_images[:2], images)
    np.testing.assert_array_equal(tiled_images[2:], images)
    assert TileEnsemble(3).compute_output_shape((None, 4)) == (None, 4)
    assert TileEnsemble(3).compute_output_shape((5, 4)) == (15, 4)


def test_tile_ensemble_tiles_the_mask():
    mask = np.array([[True, False], [True, True]])
    np.testing.assert_array_equal(numpy(TileEnsemble(2).compute_mask(None, mask)), np.concatenate([mask, mask]))
    assert TileEnsemble(2).compute_mask(None, None) is None


def test_split_members_and_average():
    rows = np.arange(K * B * C, dtype=np.float32).reshape(K * B, C)
    split = numpy(ensemble.split_members(rows, K))
    for k in range(K):
        np.testing.assert_array_equal(split[k], rows[k * B:(k + 1) * B])
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(C), size=K * B).astype(np.float32)
    expected = np.mean([probabilities[k * B:(k + 1) * B].astype(np.float64) for k in range(K)], axis=0)
    np.testing.assert_allclose(numpy(ensemble.average_member_probabilities(probabilities, K)), expected, rtol=1e-6)
    np.testing.assert_allclose(numpy(AverageMembers(K)(probabilities)), expected, rtol=1e-6)
    np.testing.assert_allclose(expected.sum(-1), 1.0, rtol=1e-6)
    assert AverageMembers(K).compute_output_shape((K * B, C)) == (B, C)


def test_average_members_hand_example_and_errors():
    probabilities = np.array([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0], [0.4, 0.6]], np.float32)  # K=2, B=2
    np.testing.assert_allclose(numpy(AverageMembers(2)(probabilities)), [[0.5, 0.5], [0.3, 0.7]], rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of ensemble_size"):
        ensemble.split_members(np.zeros((5, 2), np.float32), 2)
    with pytest.raises(ValueError, match="ensemble_size"):
        TileEnsemble(0)


def test_average_members_of_logits_is_the_log_of_the_mixture():
    rng = np.random.default_rng(5)
    logits = (2.0 * rng.standard_normal((K * B, C))).astype(np.float32)
    mixture = np.exp(_log_softmax(logits)).reshape(K, B, C).mean(0)
    np.testing.assert_allclose(numpy(ensemble.average_members(logits, K, "logits")), np.log(mixture), rtol=1e-5)
    np.testing.assert_allclose(numpy(AverageMembers(K, output_type="logits")(logits)), np.log(mixture), rtol=1e-5)
    # One sigmoid unit: the logit of the mixture's p(y = 1).
    p = _sigmoid(logits[:, :1]).reshape(K, B, 1).mean(0)
    one_unit = numpy(ensemble.average_members(logits[:, :1], K, "logits"))
    np.testing.assert_allclose(one_unit, np.log(p / (1 - p)), rtol=1e-5)


def test_average_members_of_gaussian_heads_and_point_predictions():
    rng = np.random.default_rng(6)
    means = rng.normal(size=(K * B, 2)).astype(np.float32)
    scales = rng.uniform(0.5, 2.0, size=(K * B, 2)).astype(np.float32)
    mu, sigma = means.astype(np.float64).reshape(K, B, 2), scales.astype(np.float64).reshape(K, B, 2)
    mixture_mean = mu.mean(0)
    # sigma^2 = mean_k sigma_k^2 (aleatoric) + var_k mu_k (epistemic)
    stddev = np.sqrt((sigma**2).mean(0) + ((mu - mixture_mean) ** 2).mean(0))
    heads = np.concatenate([means, scales], axis=-1)
    np.testing.assert_allclose(
        numpy(AverageMembers(K, output_type="gaussian")(heads)), np.concatenate([mixture_mean, stddev], -1), rtol=1e-5
    )
    point = numpy(AverageMembers(K, output_type="regression")(means))
    np.testing.assert_allclose(point, mixture_mean, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="output_type must be one of"):
        ensemble.average_members(heads, K, "median")
    with pytest.raises(ValueError, match=r"2\*D outputs"):
        ensemble.average_members(heads[:, :3], K, "gaussian")


def test_class_probabilities_of_logits_probabilities_and_one_unit():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32)
    softmax = np.exp(_log_softmax(logits))
    np.testing.assert_allclose(numpy(ensemble.class_probabilities(logits, "logits")), softmax, rtol=1e-6)
    probabilities = np.exp(_log_softmax(logits)).astype(np.float32)
    np.testing.assert_array_equal(numpy(ensemble.class_probabilities(probabilities)), probabilities)
    p = _sigmoid(2.0)
    unit = np.array([[0.0], [2.0]], np.float32)
    np.testing.assert_allclose(numpy(ensemble.class_probabilities(unit, "logits")), [[0.5, 0.5], [1 - p, p]], rtol=1e-6)
    np.testing.assert_allclose(numpy(ensemble.class_probabilities(np.array([[0.25]], np.float32))), [[0.75, 0.25]])
    with pytest.raises(ValueError, match="class probabilities need a classifier"):
        ensemble.class_probabilities(logits, "regression")


def test_member_axis_puts_member_k_at_index_k_and_keeps_the_first_mask_block():
    rows = np.arange(K * B * 2, dtype=np.float32).reshape(K * B, 2)
    moved = numpy(MemberAxis(K)(rows))
    assert moved.shape == (B, K, 2)
    for k in range(K):
        np.testing.assert_array_equal(moved[:, k], rows[k * B : (k + 1) * B])
    np.testing.assert_array_equal(numpy(ensemble.swap_member_axes(moved)), rows.reshape(K, B, 2))
    assert MemberAxis(K).compute_output_shape((None, 2)) == (None, K, 2)
    mask = np.tile(np.array([True, False, True, True]), K)
    np.testing.assert_array_equal(numpy(MemberAxis(K).compute_mask(rows, mask)), mask[:B])
    layer = AverageMembers(K, training_output="members")
    np.testing.assert_array_equal(numpy(layer(rows, training=True)), rows)
    assert layer.compute_mask(rows, mask) is mask  # member rows keep their mask
    layer(rows, training=False)
    np.testing.assert_array_equal(numpy(layer.compute_mask(rows, mask)), mask[:B])


def test_tile_and_average_in_a_model_for_any_batch_size():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, AverageMembers(K, output_type="regression")(dense(TileEnsemble(K)(inputs))))
    x = np.random.default_rng(7).normal(size=(11, 3)).astype(np.float32)
    for batch_size in (1, 4, 11):
        predicted = model.predict(x, batch_size=batch_size, verbose=0)
        np.testing.assert_allclose(predicted, numpy(dense(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.backends("tensorflow")
def test_split_and_average_trace_with_unknown_axes():
    import tensorflow as tf

    spec = [tf.TensorSpec([None, None, C], tf.float32)]
    average = tf.function(lambda x: ensemble.average_members(x, K, "logits"), input_signature=spec)
    split = tf.function(lambda x: ensemble.split_members(x, K), input_signature=spec)
    logits = np.random.default_rng(8).normal(size=(K * B, 2, C)).astype(np.float32)
    mixture = np.exp(_log_softmax(logits)).reshape(K, B, 2, C).mean(0)
    np.testing.assert_allclose(average(logits).numpy(), np.log(mixture), rtol=1e-5)
    np.testing.assert_array_equal(split(logits).numpy(), logits.reshape(K, B, 2, C))


def test_tile_then_average_is_identity():
    rng = np.random.default_rng(4)
    probabilities = rng.dirichlet(np.ones(C), size=B).astype(np.float32)
    np.testing.assert_allclose(numpy(AverageMembers(K)(TileEnsemble(K)(probabilities))), probabilities, rtol=1e-6)


# ---------------------------------------------------------------------------
# KL annealing
# ---------------------------------------------------------------------------


def test_kl_annealing_weight_at_per_step():
    annealing = KLAnnealing(annealing_epochs=4)
    steps = 10
    expected = {
        (0, 0): 0.1 / 4,
        (0, 9): 1.0 / 4,
        (1, 4): 1.5 / 4,
        (2, 0): 2.1 / 4,
        (3, 8): 3.9 / 4,
        (3, 9): 1.0,
        (7, 3): 1.0,
    }
    for (epoch, step), weight in expected.items():
        assert annealing.weight_at(epoch, step, steps) == pytest.approx(weight, abs=1e-12)


def test_kl_annealing_weight_at_per_epoch():
    annealing = KLAnnealing(annealing_epochs=4)
    assert [annealing.weight_at(e) for e in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    fractional = KLAnnealing(annealing_epochs=2.5)
    assert [fractional.weight_at(e) for e in range(3)] == pytest.approx([0.4, 0.8, 1.0])


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_kl_annealing_rejects_bad_epochs(bad):
    with pytest.raises(ValueError, match="annealing_epochs"):
        KLAnnealing(annealing_epochs=bad)


def test_kl_annealing_sets_layer_weights_during_fit():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = DenseRank1(4, ensemble_size=2, activation="relu")(TileEnsemble(2)(inputs))
    outputs = DenseRank1(2, ensemble_size=2, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=AverageNLL(2))
    layers = [layer for layer in model.layers if isinstance(layer, DenseRank1)]
    assert all(float(numpy(layer.kl_weight)) == 1.0 for layer in layers)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=12)
    annealing = KLAnnealing(annealing_epochs=4)
    history = model.fit(x, y, batch_size=4, epochs=2, callbacks=[annealing], verbose=0)
    # 3 steps per epoch: the last step of epoch e sets (e + 3/3) / 4.
    assert history.history["kl_weight"] == pytest.approx([0.25, 0.5])
    for layer in layers:
        assert float(numpy(layer.kl_weight)) == pytest.approx(0.5)
    assert annealing.get_config() == {"annealing_epochs": 4.0}
