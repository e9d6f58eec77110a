"""Uneven member blocks: `MemberRows` and every ensemble layer on a batch K does not divide.

Row i of R rows belongs to member floor(i K / R). Every value here is checked
against a float64 NumPy computation that assigns rows with that formula
itself, never with `MemberRows`. On every backend; the row counts known only
when a traced TensorFlow step runs (tf.function) are TensorFlow's own tests.
"""

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.layers import (
    Conv2DBatchEnsemble,
    Conv2DLowRankEnsemble,
    DenseBatchEnsemble,
    DenseLatentPosterior,
    DenseLowRankEnsemble,
    DenseRank1,
    LSTMCellBatchEnsemble,
    MemberRows,
)
from rank1_keras.layers.normalization import EnsembleBatchNormalization
from rank1_keras.probability.initializers import TrainableNormal
from tests.backend_utils import gradients, numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

ROW_COUNTS = [0, 1, 3, 7, 8, 21, 32]
ENSEMBLE_SIZES = [1, 3, 4]
K = 4
R = 21  # rows 0-5 member 0, 6-10 member 1, 11-15 member 2, 16-20 member 3
RTOL = 1e-5


def _ids(rows, ensemble_size):
    """The NumPy reference: floor(i K / R) for each row i."""
    return np.array([i * ensemble_size // rows for i in range(rows)], dtype=np.int64)


def _assert_close(got, expected, rtol=RTOL):
    got = np.asarray(numpy(got), np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-12) if expected.size else 1.0
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)


def _dynamic(function, width):
    """`function` traced once for any row count (the batch size unknown in the graph): TensorFlow only."""
    import tensorflow as tf

    return tf.function(function, input_signature=[tf.TensorSpec((None, width), tf.float32)])


def _member_mask(ids, k, shape):
    """1.0 on member k's rows, 0.0 elsewhere, broadcast to `shape`: sum(y * mask) is the sum over its rows."""
    return np.broadcast_to((ids == k).astype(np.float32).reshape((-1,) + (1,) * (len(shape) - 1)), shape)


# ---------------------------------------------------------------------------
# MemberRows
# ---------------------------------------------------------------------------


def test_reference_on_a_hand_example():
    # 7 rows, 3 members: 7/3 = 2.33 -> blocks of 3, 2, 2.
    np.testing.assert_array_equal(_ids(7, 3), [0, 0, 0, 1, 1, 2, 2])
    rows = MemberRows(7, 3)
    np.testing.assert_array_equal(numpy(rows.ids), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(numpy(rows.sizes), [3, 2, 2])


@pytest.mark.parametrize("ensemble_size", ENSEMBLE_SIZES)
@pytest.mark.parametrize("row_count", ROW_COUNTS)
def test_ids_and_sizes_match_the_formula(row_count, ensemble_size):
    expected = _ids(row_count, ensemble_size)
    x = np.zeros((row_count, 2), np.float32)
    for rows in (MemberRows(row_count, ensemble_size), MemberRows(x, ensemble_size)):
        np.testing.assert_array_equal(numpy(rows.ids), expected)
        sizes = numpy(rows.sizes)
        np.testing.assert_array_equal(sizes, np.bincount(expected, minlength=ensemble_size))
        assert sizes.sum() == row_count
        assert sizes.max() - sizes.min() <= 1
        # Contiguous blocks: the ids never decrease.
        assert np.all(np.diff(expected) >= 0)
    if row_count % ensemble_size == 0:
        # Today's block order: rows [k*B, (k+1)*B) are member k's.
        np.testing.assert_array_equal(expected, np.repeat(np.arange(ensemble_size), row_count // ensemble_size))


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("ensemble_size", ENSEMBLE_SIZES)
@pytest.mark.parametrize("row_count", ROW_COUNTS)
def test_ids_and_sizes_when_the_row_count_is_known_only_at_run_time(row_count, ensemble_size):
    expected = _ids(row_count, ensemble_size)
    x = np.zeros((row_count, 2), np.float32)
    dynamic = _dynamic(lambda t: (MemberRows(t, ensemble_size).ids, MemberRows(t, ensemble_size).sizes), 2)
    ids, sizes = dynamic(x)
    np.testing.assert_array_equal(ids.numpy(), expected)
    np.testing.assert_array_equal(sizes.numpy(), np.bincount(expected, minlength=ensemble_size))


def _expand_case(row_count, ensemble_size):
    """(member ids, a (K, 5) table, (R, K, 5) draws, (R, 2, 3) inputs, (R, 5) values), float64."""
    rng = np.random.default_rng(row_count * 10 + ensemble_size)
    return (_ids(row_count, ensemble_size), rng.normal(size=(ensemble_size, 5)),
            rng.normal(size=(row_count, ensemble_size, 5)), rng.normal(size=(row_count, 2, 3)),
            rng.normal(size=(row_count, 5)))


@pytest.mark.parametrize("ensemble_size", ENSEMBLE_SIZES)
@pytest.mark.parametrize("row_count", ROW_COUNTS)
def test_expand_select_split_and_sum_match_numpy(row_count, ensemble_size):
    ids, table, draws, x, values = _expand_case(row_count, ensemble_size)

    def check(rows, table, draws, x, values):
        _assert_close(rows.expand(table), table[ids])
        _assert_close(rows.select(draws), draws[np.arange(row_count), ids])
        parts = rows.split(x)
        assert len(parts) == ensemble_size
        for k, part in enumerate(parts):
            _assert_close(part, x[ids == k])
        _assert_close(rows.concat(parts), x)
        _assert_close(rows.sum(values), np.stack([values[ids == k].sum(0) for k in range(ensemble_size)]))
        _assert_close(rows.one_hot("float64"), np.eye(ensemble_size)[ids])

    check(MemberRows(row_count, ensemble_size), table, draws, x, values)
    check(MemberRows(x, ensemble_size), table, draws, x, values)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("ensemble_size", ENSEMBLE_SIZES)
@pytest.mark.parametrize("row_count", ROW_COUNTS)
def test_expand_select_split_and_sum_with_a_row_count_known_only_at_run_time(row_count, ensemble_size):
    import tensorflow as tf

    ids, table, draws, x, values = _expand_case(row_count, ensemble_size)

    @tf.function(
        input_signature=[
            tf.TensorSpec((ensemble_size, 5), tf.float64),
            tf.TensorSpec((None, ensemble_size, 5), tf.float64),
            tf.TensorSpec((None, 2, 3), tf.float64),
            tf.TensorSpec((None, 5), tf.float64),
        ]
    )
    def dynamic(table, draws, x, values):
        rows = MemberRows(x, ensemble_size)
        return rows.expand(table), rows.select(draws), rows.split(x), rows.sum(values)

    expanded, selected, parts, sums = dynamic(table, draws, x, values)
    _assert_close(expanded, table[ids])
    _assert_close(selected, draws[np.arange(row_count), ids])
    for k, part in enumerate(parts):
        _assert_close(part, x[ids == k])
    _assert_close(sums, np.stack([values[ids == k].sum(0) for k in range(ensemble_size)]))


@pytest.mark.backends("tensorflow")
def test_expand_and_split_compile_with_xla():
    import tensorflow as tf

    table = np.arange(8.0, dtype=np.float32).reshape(K, 2)

    @tf.function(input_signature=[tf.TensorSpec((None, 2), tf.float32)], jit_compile=True)
    def function(x):
        rows = MemberRows(x, K)
        return rows.expand(table), [part + 1.0 for part in rows.split(x)]

    x = np.zeros((R, 2), np.float32)
    expanded, parts = function(x)
    _assert_close(expanded, table[_ids(R, K)])
    assert [part.shape[0] for part in parts] == [6, 5, 5, 5]


def test_the_gradient_of_expand_is_each_members_sum():
    table = keras.Variable(np.ones((K, 3), np.float32))
    weights = np.random.default_rng(0).normal(size=(R, 3)).astype(np.float32)
    (gradient,) = gradients(lambda: keras.ops.sum(keras.ops.multiply(MemberRows(R, K).expand(table), weights)), [table])
    ids = _ids(R, K)
    _assert_close(gradient, np.stack([weights[ids == k].sum(0) for k in range(K)]))


def test_negative_row_count_is_a_value_error():
    with pytest.raises(ValueError, match="non-negative"):
        MemberRows(-1, K)
    with pytest.raises(ValueError, match="ensemble_size"):
        MemberRows(3, 0)


# ---------------------------------------------------------------------------
# Rank-1 layers on R = 21 rows, K = 4
# ---------------------------------------------------------------------------


def _set_random(variable, rng, scale=1.0):
    variable.assign(rng.normal(scale=scale, size=variable.shape).astype(np.float32))


def _factor(layer, name):
    """The (K, dim) table of a point factor, or the posterior mean of a stochastic one, float64."""
    factor = layer.member_factors[name]
    value = factor.initializer.loc if factor.is_stochastic else factor.variable
    return np.asarray(numpy(value), np.float64)


def _conv_valid(x, kernel):
    """x: (H, W, C); kernel: (kh, kw, C, F): stride 1, no padding, cross-correlation."""
    kh, kw = kernel.shape[:2]
    out_h, out_w = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    out = np.zeros((out_h, out_w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("hwc,cf->hwf", x[i : i + out_h, j : j + out_w], kernel[i, j])
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: DenseBatchEnsemble(3, ensemble_size=K),
        lambda: DenseRank1(3, ensemble_size=K, inference="mean", alpha_regularizer=None, gamma_regularizer=None,
                           alpha_initializer=TrainableNormal(), gamma_initializer=TrainableNormal()),
        lambda: DenseBatchEnsemble(3, ensemble_size=K, use_additive_perturbation=True),
    ],
    ids=["batchensemble", "rank1_mean", "additive"],
)
def test_dense_layers_on_uneven_blocks_match_numpy(make):
    rng = np.random.default_rng(1)
    layer = make()
    x = rng.normal(size=(R, 5)).astype(np.float32)
    layer.build(x.shape)
    _set_random(layer.kernel, rng)
    _set_random(layer.member_factors["bias"].variable, rng)
    if layer.member_factors["alpha"].is_stochastic:
        for name in ("alpha", "gamma"):
            _set_random(layer.member_factors[name].initializer.loc, rng)
    kernel = np.asarray(numpy(layer.kernel), np.float64)
    alpha, gamma, bias = (_factor(layer, name) for name in ("alpha", "gamma", "bias"))
    expected = []
    for i, k in enumerate(_ids(R, K)):
        if layer.use_additive_perturbation:
            member_kernel = kernel + np.outer(alpha[k], gamma[k])
        else:
            member_kernel = kernel * np.outer(alpha[k], gamma[k])
        expected.append(x[i].astype(np.float64) @ member_kernel + bias[k])
    _assert_close(layer(x, training=False), np.stack(expected))


def test_rank1_dense_sampled_per_example_on_uneven_blocks_matches_numpy():
    # sample_per_example draws the (K, d) table R times; row i keeps its member's column of draw i.
    layer = DenseRank1(3, ensemble_size=K, seed=4, sample_per_example=True, alpha_regularizer=None,
                       gamma_regularizer=None, alpha_initializer=TrainableNormal(initial_stddev=0.3),
                       gamma_initializer=TrainableNormal(initial_stddev=0.3))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(R, 5)).astype(np.float32)
    layer.build(x.shape)
    _set_random(layer.member_factors["bias"].variable, rng)
    # The layer's draws: loc + scale * eps, eps the standard normals its seed generator gives next,
    # alpha's (R, K, 5) then gamma's (R, K, 3); a copy of the generator replays them.
    replay = keras.random.SeedGenerator(0)
    replay.state.assign(numpy(layer.factor_seed_generator.state))
    draws = {}
    for name, width in (("alpha", 5), ("gamma", 3)):
        distribution = layer.member_factors[name].initializer.distribution()
        noise = numpy(keras.random.normal((R, K, width), seed=replay)).astype(np.float64)
        loc, scale = (np.asarray(numpy(value), np.float64) for value in (distribution.mean(), distribution.stddev()))
        draws[name] = loc + scale * noise  # (R, K, d)
    kernel = np.asarray(numpy(layer.kernel), np.float64)
    bias = _factor(layer, "bias")
    ids = _ids(R, K)
    expected = np.stack(
        [((x[i] * draws["alpha"][i, k]) @ kernel) * draws["gamma"][i, k] + bias[k] for i, k in enumerate(ids)]
    )
    got = numpy(layer(x, training=True))
    _assert_close(got, expected)
    # Rows of one member differ: each row has a draw of its own.
    assert np.abs(draws["alpha"][0, 0] - draws["alpha"][1, 0]).max() > 1e-3


def test_conv2d_batch_ensemble_on_uneven_blocks_matches_numpy():
    rng = np.random.default_rng(3)
    layer = Conv2DBatchEnsemble(3, 3, ensemble_size=K)
    x = rng.normal(size=(R, 5, 5, 2)).astype(np.float32)
    layer.build(x.shape)
    _set_random(layer.member_factors["bias"].variable, rng)
    kernel = np.asarray(numpy(layer.kernel), np.float64)
    alpha, gamma, bias = (_factor(layer, name) for name in ("alpha", "gamma", "bias"))
    expected = np.stack(
        [
            _conv_valid(x[i].astype(np.float64), kernel * np.outer(alpha[k], gamma[k])) + bias[k]
            for i, k in enumerate(_ids(R, K))
        ]
    )
    _assert_close(layer(x), expected)


def test_lpbnn_dense_on_uneven_blocks_matches_numpy():
    # inference="mean": r_hat_k = decoder(mu(encoder(alpha_k))), no noise.
    rng = np.random.default_rng(4)
    layer = DenseLatentPosterior(3, ensemble_size=K, latent_dim=4)
    x = rng.normal(size=(R, 5)).astype(np.float32)
    layer.build(x.shape)
    vae = {variable.name: np.asarray(numpy(variable), np.float64) for variable in layer.latent_variables}

    def affine(values, role):
        return values @ vae[f"alpha_{role}_kernel"] + vae[f"alpha_{role}_bias"]

    decoded = affine(affine(np.maximum(affine(_factor(layer, "alpha"), "encoder"), 0.0), "mean"), "decoder")
    kernel = np.asarray(numpy(layer.kernel), np.float64)
    gamma, bias = _factor(layer, "gamma"), _factor(layer, "bias")
    expected = np.stack(
        [((x[i] * decoded[k]) @ kernel) * gamma[k] + bias[k] for i, k in enumerate(_ids(R, K))]
    )
    _assert_close(layer(x), expected)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_lstm_cell_on_uneven_blocks_matches_numpy():
    rng = np.random.default_rng(5)
    cell = LSTMCellBatchEnsemble(2, ensemble_size=K)
    rnn = keras.layers.RNN(cell)
    x = rng.normal(size=(R, 3, 4)).astype(np.float32)
    rnn.build(x.shape)
    _set_random(cell.member_factors["bias"].variable, rng, 0.5)
    kernel = np.asarray(numpy(cell.kernel), np.float64)
    recurrent = np.asarray(numpy(cell.recurrent_kernel), np.float64)
    f = {name: _factor(cell, name) for name in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma", "bias")}
    expected = []
    for i, k in enumerate(_ids(R, K)):
        h, c = np.zeros(2), np.zeros(2)
        for t in range(x.shape[1]):
            z = ((x[i, t] * f["alpha"][k]) @ kernel) * f["gamma"][k]
            z = z + ((h * f["recurrent_alpha"][k]) @ recurrent) * f["recurrent_gamma"][k] + f["bias"][k]
            zi, zf, zc, zo = np.split(z, 4)
            c = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zc)
            h = _sigmoid(zo) * np.tanh(c)
        expected.append(h)
    _assert_close(rnn(x), np.stack(expected))


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: DenseBatchEnsemble(3, ensemble_size=K), ("alpha", "gamma", "bias")),
        (lambda: Conv2DBatchEnsemble(2, 3, ensemble_size=K), ("alpha", "gamma", "bias")),
    ],
    ids=["dense", "conv2d"],
)
def test_a_members_rows_send_gradient_only_to_its_factor_row(make, names):
    layer = make()
    shape = (R, 5) if isinstance(layer, DenseBatchEnsemble) else (R, 4, 4, 2)
    x = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    layer.build(x.shape)
    tables = [layer.member_factors[name].variable for name in names]
    ids = _ids(R, K)
    for k in range(K):
        mask = _member_mask(ids, k, layer.compute_output_shape(x.shape))
        for name, gradient in zip(names, gradients(lambda: keras.ops.sum(keras.ops.multiply(layer(x), mask)), tables)):
            gradient = numpy(gradient)
            others = np.delete(gradient, k, axis=0)
            assert np.all(others == 0.0), (name, k)
            assert np.abs(gradient[k]).max() > 1e-6, (name, k)


def test_per_example_draws_send_gradient_only_to_their_members_posterior():
    layer = DenseRank1(3, ensemble_size=K, sample_per_example=True, alpha_regularizer=None, gamma_regularizer=None)
    x = np.random.default_rng(7).normal(size=(R, 5)).astype(np.float32)
    layer.build(x.shape)
    locs = [layer.member_factors[name].initializer.loc for name in ("alpha", "gamma")]
    ids = _ids(R, K)
    for k in range(K):
        mask = _member_mask(ids, k, (R, 3))
        for gradient in gradients(lambda: keras.ops.sum(keras.ops.multiply(layer(x, training=True), mask)), locs):
            gradient = numpy(gradient)
            assert np.all(np.delete(gradient, k, axis=0) == 0.0)
            assert np.abs(gradient[k]).max() > 1e-6


# ---------------------------------------------------------------------------
# Per-member batch normalisation
# ---------------------------------------------------------------------------


def _batch_norm_reference(x, ids, gamma, beta, epsilon, channel_axis):
    """Per-member biased moments over each member's rows and every non-channel axis."""
    x = np.moveaxis(np.asarray(x, np.float64), channel_axis, -1)
    means, variances = {}, {}
    outputs = np.zeros_like(x)
    for k in np.unique(ids):
        block = x[ids == k]
        mean = block.reshape(-1, block.shape[-1]).mean(0)
        variance = block.reshape(-1, block.shape[-1]).var(0)
        means[k], variances[k] = mean, variance
        outputs[ids == k] = gamma[k] * (block - mean) / np.sqrt(variance + epsilon) + beta[k]
    return np.moveaxis(outputs, -1, channel_axis), means, variances


@pytest.mark.parametrize("axis, shape", [(-1, (R, 3, 2, 3)), (1, (R, 3, 2, 2)), (-1, (R, 3))])
def test_per_member_batch_norm_on_uneven_blocks_matches_numpy(axis, shape):
    rng = np.random.default_rng(8)
    layer = EnsembleBatchNormalization(ensemble_size=K, axis=axis, momentum=0.9)
    x = (rng.normal(size=shape) * 2.0 + 1.0).astype(np.float32)
    layer.build(x.shape)
    _set_random(layer.gamma, rng)
    _set_random(layer.beta, rng)
    gamma, beta = (np.asarray(numpy(v), np.float64) for v in (layer.gamma, layer.beta))
    ids = _ids(R, K)
    expected, means, variances = _batch_norm_reference(x, ids, gamma, beta, layer.epsilon, axis % len(shape))
    _assert_close(layer(x, training=True), expected, rtol=1e-4)
    mean_table = np.stack([means[k] for k in range(K)])
    variance_table = np.stack([variances[k] for k in range(K)])
    _assert_close(layer.moving_mean, 0.1 * mean_table, rtol=1e-4)
    _assert_close(layer.moving_variance, 0.9 + 0.1 * variance_table, rtol=1e-4)
    # Inference normalises row i with its member's moving statistics.
    moving_mean, moving_variance = numpy(layer.moving_mean), numpy(layer.moving_variance)
    channels_last = np.moveaxis(x.astype(np.float64), axis % len(shape), -1)
    inference = np.stack(
        [
            gamma[k] * (channels_last[i] - moving_mean[k]) / np.sqrt(moving_variance[k] + layer.epsilon) + beta[k]
            for i, k in enumerate(ids)
        ]
    )
    _assert_close(layer(x, training=False), np.moveaxis(inference, -1, axis % len(shape)), rtol=1e-4)


def test_per_member_batch_norm_keeps_a_rowless_members_statistics():
    # R=2, K=4: rows 0 and 1 are members 0 and 2; members 1 and 3 have no rows.
    rng = np.random.default_rng(9)
    layer = EnsembleBatchNormalization(ensemble_size=K, momentum=0.5)
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    layer.build(x.shape)
    ids = _ids(2, K)
    np.testing.assert_array_equal(ids, [0, 2])
    outputs = layer(x, training=True)  # one training step's moving-statistics update
    expected, means, variances = _batch_norm_reference(x, ids, np.ones((K, 3)), np.zeros((K, 3)), layer.epsilon, 2)
    _assert_close(outputs, expected, rtol=1e-4)
    moving_mean, moving_variance = numpy(layer.moving_mean), numpy(layer.moving_variance)
    assert np.isfinite(moving_mean).all() and np.isfinite(moving_variance).all()
    for k in (1, 3):
        np.testing.assert_array_equal(moving_mean[k], 0.0)
        np.testing.assert_array_equal(moving_variance[k], 1.0)
    for k in (0, 2):
        _assert_close(moving_mean[k], 0.5 * means[k], rtol=1e-4)
        _assert_close(moving_variance[k], 0.5 + 0.5 * variances[k], rtol=1e-4)
    # The gradient reads the batch's own statistics, not the moving ones.
    def loss():
        return keras.ops.sum(keras.ops.multiply(layer(x, training=True), x))

    for gradient in gradients(loss, [layer.gamma, layer.beta]):
        gradient = numpy(gradient)
        assert np.isfinite(gradient).all()
        np.testing.assert_array_equal(gradient[[1, 3]], 0.0)


# ---------------------------------------------------------------------------
# Bella's low-rank particles
# ---------------------------------------------------------------------------


def test_bella_dense_on_uneven_blocks_matches_numpy():
    rng = np.random.default_rng(10)
    layer = DenseLowRankEnsemble(4, ensemble_size=K, rank=2, perturbation_scale=3.0)
    x = rng.normal(size=(R, 2, 5)).astype(np.float32)  # a further axis before the features
    layer.build(x.shape)
    _set_random(layer.output_factor, rng)
    _set_random(layer.bias, rng)
    weights = (layer.kernel, layer.bias, layer.input_factor, layer.output_factor)
    kernel, bias, a, b = (np.asarray(numpy(v), np.float64) for v in weights)
    expected = np.stack([x[i] @ (kernel + 1.5 * a[k] @ b[k]) + bias for i, k in enumerate(_ids(R, K))])
    _assert_close(layer(x), expected)


def test_bella_conv_on_uneven_blocks_matches_numpy():
    rng = np.random.default_rng(11)
    layer = Conv2DLowRankEnsemble(3, 3, ensemble_size=K, rank=2)
    x = rng.normal(size=(R, 5, 5, 2)).astype(np.float32)
    layer.build(x.shape)
    _set_random(layer.output_factor, rng)
    weights = (layer.kernel, layer.bias, layer.input_factor, layer.output_factor)
    kernel, bias, a, b = (np.asarray(numpy(v), np.float64) for v in weights)
    expected = np.stack(
        [
            _conv_valid(x[i].astype(np.float64), kernel + np.einsum("hwcr,rf->hwcf", a[k], b[k])) + bias
            for i, k in enumerate(_ids(R, K))
        ]
    )
    _assert_close(layer(x), expected)


# ---------------------------------------------------------------------------
# model.fit with training_batch="split" on batches K does not divide
# ---------------------------------------------------------------------------

METHODS = {"batchensemble": {}, "rank1": {"train_size": 64}, "lpbnn": {}}


def _plain(batch_norm=False):
    layers = [keras.Input((5,)), keras.layers.Dense(8, activation="relu")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(3, activation="softmax"))
    return keras.Sequential(layers)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 5)).astype("float32"), rng.integers(0, 3, n)


def _assert_members_differ(model, x):
    members = numpy(r1.member_outputs(model)(x))  # (N, K, C)
    assert np.isfinite(members).all()
    for k in range(1, K):
        assert np.abs(members[:, 0] - members[:, k]).max() > 1e-4


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fit_on_an_uneven_batch_then_an_even_one(method):
    x, y = _data(64)
    model = r1.convert(_plain(), method, K, training_batch="split", **METHODS[method])
    model.compile("adam", "sparse_categorical_crossentropy")
    first = model.fit(x[:21], y[:21], batch_size=21, epochs=1, verbose=0)
    second = model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(first.history["loss"]).all() and np.isfinite(second.history["loss"]).all()
    _assert_members_differ(model, x)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_with_a_short_last_batch_and_per_member_batch_norm(jit_compile):
    # 341 examples at batch size 32: ten batches of 32 and a last one of 21 rows.
    x, y = _data(341, seed=1)
    model = r1.convert(_plain(batch_norm=True), "batchensemble", K, training_batch="split")
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    batch_norm = next(layer for layer in model._flatten_layers() if isinstance(layer, EnsembleBatchNormalization))
    assert np.isfinite(numpy(batch_norm.moving_mean)).all() and np.isfinite(numpy(batch_norm.moving_variance)).all()
    # Every member saw its own rows: its moving mean moved away from the initial zeros, differently.
    moving_mean = numpy(batch_norm.moving_mean)
    assert np.all(np.abs(moving_mean).max(axis=1) > 1e-3)
    assert np.abs(moving_mean[0] - moving_mean[1]).max() > 1e-4
    _assert_members_differ(model, x[:50])
