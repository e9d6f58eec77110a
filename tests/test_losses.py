"""Tests for the ensemble losses, the ensemble plumbing and KL annealing."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rank1_keras import ensemble
from rank1_keras.callbacks import KLAnnealing
from rank1_keras.ensemble import AverageMembers, TileEnsemble
from rank1_keras.layers import DenseRank1
from rank1_keras.losses import AverageNLL, MixtureNLL

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
    np.testing.assert_allclose(loss_class(K).call(labels, averaged).numpy(), expected, rtol=1e-5)
    # ... which is the mixture NLL of the members.
    np.testing.assert_allclose(expected, _mixture_nll(np.log(probabilities.astype(np.float64)), labels), rtol=1e-5)


def test_prediction_rows_must_be_b_or_k_times_b():
    _, probabilities, labels, _, _ = _data(4)
    # Known shapes: one ValueError naming both shapes, before any TensorFlow op.
    with pytest.raises(ValueError, match=rf"y_true has 3 rows, so y_pred must have 3 .* or {3 * K} rows \(ensemble_size={K} members"):
        AverageNLL(K).call(labels[:3], probabilities)
    # Shapes known only at run time (a traced step with a free batch axis): the in-graph check.
    spec_labels = tf.TensorSpec([None], tf.int64)
    spec_predictions = tf.TensorSpec([None, probabilities.shape[-1]], tf.float32)
    call = tf.function(lambda y, p: AverageNLL(K).call(y, p), input_signature=[spec_labels, spec_predictions])
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred must have B rows"):
        call(labels[:3].astype(np.int64), probabilities)


def test_per_example_values_and_block_order():
    logits, probabilities, labels, _, _ = _data(1)
    log_probabilities = np.log(probabilities.astype(np.float64))
    per_example_average = AverageNLL(K).call(labels, probabilities).numpy()
    per_example_mixture = MixtureNLL(K).call(labels, probabilities).numpy()
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
    probabilities = tf.constant([[0.5, 0.5], [0.25, 0.75]])
    np.testing.assert_allclose(float(AverageNLL(2)([1], probabilities)), -(math.log(0.5) + math.log(0.75)) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(MixtureNLL(2)([1], probabilities)), -math.log((0.5 + 0.75) / 2), rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("from_logits", [False, True])
def test_mixture_is_at_most_average(seed, from_logits):
    logits, probabilities, labels, _, _ = _data(10 + seed)
    y_pred = logits if from_logits else probabilities
    average = AverageNLL(K, from_logits=from_logits).call(labels, y_pred).numpy()
    mixture = MixtureNLL(K, from_logits=from_logits).call(labels, y_pred).numpy()
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
    average = AverageNLL(K, from_logits=True).call(labels, logits).numpy()
    mixture = MixtureNLL(K, from_logits=True).call(labels, logits).numpy()
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
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        AverageNLL(K)(np.zeros(B + 1, np.int64), probabilities)


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
    tiled = TileEnsemble(3)(x).numpy()
    np.testing.assert_array_equal(tiled, np.array([[1, 10], [2, 20]] * 3, np.float32))
    np.testing.assert_array_equal(ensemble.tile_members(x, 2).numpy(), np.concatenate([x, x]))
    images = np.arange(2 * 2 * 2 * 1, dtype=np.float32).reshape(2, 2, 2, 1)
    tiled_images = TileEnsemble(2)(images).numpy()
    np.testing.assert_array_equal(tiled_images[:2], images)
    np.testing.assert_array_equal(tiled_images[2:], images)
    assert TileEnsemble(3).compute_output_shape((None, 4)) == (None, 4)
    assert TileEnsemble(3).compute_output_shape((5, 4)) == (15, 4)


def test_tile_ensemble_tiles_the_mask():
    mask = np.array([[True, False], [True, True]])
    np.testing.assert_array_equal(TileEnsemble(2).compute_mask(None, mask).numpy(), np.concatenate([mask, mask]))
    assert TileEnsemble(2).compute_mask(None, None) is None


def test_split_members_and_average():
    rows = np.arange(K * B * C, dtype=np.float32).reshape(K * B, C)
    split = ensemble.split_members(rows, K).numpy()
    for k in range(K):
        np.testing.assert_array_equal(split[k], rows[k * B:(k + 1) * B])
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(C), size=K * B).astype(np.float32)
    expected = np.mean([probabilities[k * B:(k + 1) * B].astype(np.float64) for k in range(K)], axis=0)
    np.testing.assert_allclose(ensemble.average_member_probabilities(probabilities, K).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(AverageMembers(K)(probabilities).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(expected.sum(-1), 1.0, rtol=1e-6)
    assert AverageMembers(K).compute_output_shape((K * B, C)) == (B, C)


def test_average_members_hand_example_and_errors():
    probabilities = np.array([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0], [0.4, 0.6]], np.float32)  # K=2, B=2
    np.testing.assert_allclose(AverageMembers(2)(probabilities).numpy(), [[0.5, 0.5], [0.3, 0.7]], rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of ensemble_size"):
        ensemble.split_members(np.zeros((5, 2), np.float32), 2)
    with pytest.raises(ValueError, match="ensemble_size"):
        TileEnsemble(0)


def test_tile_then_average_is_identity():
    rng = np.random.default_rng(4)
    probabilities = rng.dirichlet(np.ones(C), size=B).astype(np.float32)
    np.testing.assert_allclose(AverageMembers(K)(TileEnsemble(K)(probabilities)).numpy(), probabilities, rtol=1e-6)


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
    assert all(float(layer.kl_weight.numpy()) == 1.0 for layer in layers)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=12)
    annealing = KLAnnealing(annealing_epochs=4)
    history = model.fit(x, y, batch_size=4, epochs=2, callbacks=[annealing], verbose=0)
    # 3 steps per epoch: the last step of epoch e sets (e + 3/3) / 4.
    assert history.history["kl_weight"] == pytest.approx([0.25, 0.5])
    for layer in layers:
        assert float(layer.kl_weight.numpy()) == pytest.approx(0.5)
    assert annealing.get_config() == {"annealing_epochs": 4.0}
