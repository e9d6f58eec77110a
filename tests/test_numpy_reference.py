"""Float64 NumPy reference forward passes of the rank-1 layers, with SAMPLED factors.

Each layer is built with a fixed `seed` and a large posterior stddev so the
samples are far from the means. The sample a call uses is fixed by replaying
the layer's seed stream: the layer owns `factor_seed_generator` (a
`keras.random.SeedGenerator`), whose state is read before the call; the
stochastic factors are drawn in `member_factors` order, the i-th with seed
`state + [0, i]`. The test redraws the standard noise eps that
`keras.random.normal` gives for that seed on the current backend, forms the
sample loc + scale * eps, and computes the expected output with its own
convolutions and rank-1 formula:

    multiplicative: y_k = act(((x o r_k) W) o s_k + b_k)
    additive:       y_k = act(x (W + r_k s_k^T) + b_k)

Rows [k*B, (k+1)*B) of the batch are member k (block order).

The module runs on every Keras backend; each backend's output is checked
against the same float64 formulas with the same tolerances.
"""

import keras
import numpy as np
import pytest

from rank1_keras.layers import (
    Conv1DBatchEnsemble,
    Conv1DRank1,
    Conv2DBatchEnsemble,
    Conv2DRank1,
    DenseBatchEnsemble,
    DenseRank1,
    LSTMCellBatchEnsemble,
    LSTMCellRank1,
)
from rank1_keras.probability import distributions
from rank1_keras.probability.initializers import TrainableNormal
from tests.backend_utils import numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

K = 3  # ensemble size
B = 2  # examples per member
STDDEV = 0.3  # posterior stddev: samples differ clearly from the means
RTOL = 1e-5


def _stochastic(**kwargs):
    """Factor arguments giving wide trainable Normal posteriors."""
    return {
        "alpha_initializer": TrainableNormal(initial_stddev=STDDEV),
        "gamma_initializer": TrainableNormal(initial_stddev=STDDEV),
        "bias_initializer": keras.initializers.RandomNormal(stddev=0.5, seed=11),
        **kwargs,
    }


def _assert_close(got, expected, rtol=RTOL):
    got = numpy(got).astype(np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-12)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)


def _replay_factors(layer, examples_per_member, sample=True, jit_compile=False):
    """The factor values the next call of `layer` will use, as (K, B, dim) float64.

    Must run before the call (it reads the seed generator's current state).
    With `jit_compile` (TensorFlow), the noise is drawn under XLA, for a call
    run under XLA (stateless samplers may pick another algorithm there). With
    `sample_per_example` the layer draws the (K, d) table once per row,
    K*B times, and row k*B + b keeps member k's column of its draw.
    """
    state = numpy(layer.factor_seed_generator.state).astype(np.int64)
    values = {}
    draw = 0
    for name, factor in layer.member_factors.items():
        if not factor.is_stochastic:
            value = numpy(factor.variable).astype(np.float64)[:, None, :]
        elif not sample:
            value = numpy(factor.initializer.loc).astype(np.float64)[:, None, :]
        else:
            assert distributions.family_name(factor.initializer.distribution()) == "Normal"
            rows = layer.ensemble_size * examples_per_member
            shape = ((rows,) if layer.sample_per_example else ()) + factor.initializer.shape
            eps = _standard_normal(state + np.array([0, draw]), shape, jit_compile)
            draw += 1
            # The float32 sample the layer forms: loc + scale * eps.
            drawn = numpy(factor.initializer.loc) + numpy(factor.initializer.scale) * eps
            if layer.sample_per_example:
                # (K*B, K, d) -> (K, B, K, d); [k, b] keeps draw k*B + b's member-k column.
                members = np.arange(layer.ensemble_size)
                value = drawn.reshape(layer.ensemble_size, examples_per_member, *drawn.shape[1:])[members, :, members]
            else:
                value = drawn[:, None, :]
        values[name] = np.broadcast_to(
            np.asarray(value, np.float64), (layer.ensemble_size, examples_per_member, value.shape[-1])
        )
    return values


def _standard_normal(seed_state, shape, jit_compile=False):
    """The float32 noise keras.random.normal gives for the seed `seed_state` on this backend."""
    generator = keras.random.SeedGenerator(0)
    generator.state.assign(keras.ops.convert_to_tensor(seed_state, dtype=generator.state.dtype))

    def noise():
        return keras.random.normal(shape, dtype="float32", seed=generator)

    if jit_compile:
        import tensorflow as tf

        noise = tf.function(noise, jit_compile=True, autograph=False)
    eps = numpy(noise())
    assert eps.dtype == np.float32
    return eps


def _stochastic_factor_count(layer):
    return sum(f.is_stochastic for f in layer.member_factors.values())


def _seed_state(layer):
    return tuple(int(v) for v in numpy(layer.factor_seed_generator.state))


def _members(x):
    """(K*B, ...) -> (K, B, ...) in block order, float64."""
    x = np.asarray(x, np.float64)
    return x.reshape((K, -1) + x.shape[1:])


# ---------------------------------------------------------------------------
# NumPy convolutions (channels_last, single example), TF padding rules.
# ---------------------------------------------------------------------------


def _pad_amounts(size, kernel, stride, dilation, padding):
    window = dilation * (kernel - 1) + 1
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return window - 1, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _conv_nd(x, kernel, strides, padding, dilations):
    """x: (*spatial, C); kernel: (*k, C, F). Cross-correlation as tf.nn.convolution."""
    rank = x.ndim - 1
    pads = [_pad_amounts(x.shape[i], kernel.shape[i], strides[i], dilations[i], padding) for i in range(rank)]
    xp = np.pad(x, pads + [(0, 0)])
    out_sizes = [
        (xp.shape[i] - (dilations[i] * (kernel.shape[i] - 1) + 1)) // strides[i] + 1 for i in range(rank)
    ]
    out = np.zeros(out_sizes + [kernel.shape[-1]])
    for position in np.ndindex(*kernel.shape[:rank]):
        window = tuple(
            slice(position[i] * dilations[i], position[i] * dilations[i] + strides[i] * (out_sizes[i] - 1) + 1, strides[i])
            for i in range(rank)
        )
        out += np.einsum("...c,cf->...f", xp[window], kernel[position])
    return out


def _conv_rank1_reference(layer, x, factors, activation=lambda v: v):
    """Per-example rank-1 convolution in NumPy; x is channels_last (K*B, *spatial, C)."""
    kernel = numpy(layer.kernel).astype(np.float64)
    xm = _members(x)
    rank = kernel.ndim - 2
    outputs = []
    for k in range(K):
        for b in range(xm.shape[1]):
            r = factors["alpha"][k, b]
            s = factors["gamma"][k, b]
            if layer.use_additive_perturbation:
                # W_k = W + r_k s_k^T at every kernel position.
                member_kernel = kernel + np.einsum("c,f->cf", r, s).reshape((1,) * rank + (len(r), len(s)))
                y = _conv_nd(xm[k, b], member_kernel, layer.strides, layer.padding, layer.dilation_rate)
            else:
                y = _conv_nd(xm[k, b] * r, kernel, layer.strides, layer.padding, layer.dilation_rate) * s
            if layer.use_bias:
                y = y + factors["bias"][k, b]
            outputs.append(activation(y))
    return np.stack(outputs)


def _dense_rank1_reference(layer, x, factors, activation=lambda v: v):
    kernel = numpy(layer.kernel).astype(np.float64)
    xm = _members(x)  # (K, B, ..., D)
    extra = xm.ndim - 3  # dims between the batch and the features

    def per_example(name):
        value = factors[name]  # (K, B, d)
        return value.reshape(value.shape[:2] + (1,) * extra + value.shape[-1:])

    r, s = per_example("alpha"), per_example("gamma")
    if layer.use_additive_perturbation:
        y = xm @ kernel + np.sum(xm * r, axis=-1, keepdims=True) * s
    else:
        y = ((xm * r) @ kernel) * s
    if layer.use_bias:
        y = y + per_example("bias")
    y = activation(y)
    return y.reshape((-1,) + y.shape[2:])


# ---------------------------------------------------------------------------
# Tests of the NumPy convolution itself (against hand-computed values).
# ---------------------------------------------------------------------------


def test_numpy_conv_reference_on_hand_example():
    x = np.arange(1.0, 6.0)[:, None]  # 1, 2, 3, 4, 5
    kernel = np.array([1.0, 10.0])[:, None, None]
    np.testing.assert_array_equal(_conv_nd(x, kernel, (1,), "valid", (1,))[:, 0], [21, 32, 43, 54])
    np.testing.assert_array_equal(_conv_nd(x, kernel, (1,), "causal", (1,))[:, 0], [10, 21, 32, 43, 54])
    np.testing.assert_array_equal(_conv_nd(x, kernel, (2,), "valid", (1,))[:, 0], [21, 43])
    np.testing.assert_array_equal(_conv_nd(x, kernel, (1,), "valid", (2,))[:, 0], [31, 42, 53])
    # "same" with an even kernel pads the extra zero after: [1..5, 0].
    np.testing.assert_array_equal(_conv_nd(x, kernel, (1,), "same", (1,))[:, 0], [21, 32, 43, 54, 5])
    x2 = np.arange(16.0).reshape(4, 4, 1)
    ones = np.ones((3, 3, 1, 1))
    same = _conv_nd(x2, ones, (2, 2), "same", (1, 1))[..., 0]
    # out = ceil(4/2) = 2, total pad 1 (0 before, 1 after): windows at rows/cols {0,1,2}, {2,3}.
    np.testing.assert_array_equal(same, [[x2[0:3, 0:3].sum(), x2[0:3, 2:4].sum()], [x2[2:4, 0:3].sum(), x2[2:4, 2:4].sum()]])


# ---------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------

DENSE_CASES = {
    "per_member": {},
    "per_example": {"sample_per_example": True},
    "additive": {"use_additive_perturbation": True},
    "additive_per_example": {"use_additive_perturbation": True, "sample_per_example": True},
    "tanh_no_bias": {"activation": "tanh", "use_bias": False},
}


@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_dense_rank1_sampled_forward_matches_numpy(case):
    keras.utils.set_random_seed(1)
    options = DENSE_CASES[case]
    layer = DenseRank1(5, ensemble_size=K, seed=7, **_stochastic(**options))
    x = np.random.default_rng(0).standard_normal((K * B, 4)).astype(np.float32)
    layer.build(x.shape)
    assert _seed_state(layer) == (7, 0)
    factors = _replay_factors(layer, B)
    # The samples really differ from the means (and between members).
    alpha_loc = numpy(layer.member_factors["alpha"].initializer.loc)
    assert np.abs(factors["alpha"] - alpha_loc[:, None, :]).max() > 0.1
    y = layer(x, training=True)
    activation = np.tanh if options.get("activation") == "tanh" else (lambda v: v)
    _assert_close(y, _dense_rank1_reference(layer, x, factors, activation))
    # Exactly one seed per stochastic factor was consumed.
    assert _seed_state(layer) == (7, _stochastic_factor_count(layer))


def test_dense_rank1_on_3d_inputs_matches_numpy():
    keras.utils.set_random_seed(2)
    layer = DenseRank1(3, ensemble_size=K, seed=3, sample_per_example=True, **_stochastic())
    x = np.random.default_rng(1).standard_normal((K * B, 4, 2)).astype(np.float32)
    layer.build(x.shape)
    factors = _replay_factors(layer, B)
    _assert_close(layer(x, training=True), _dense_rank1_reference(layer, x, factors))


def test_dense_rank1_second_call_uses_the_next_seeds():
    keras.utils.set_random_seed(3)
    layer = DenseRank1(4, ensemble_size=K, seed=5, **_stochastic())
    x = np.random.default_rng(2).standard_normal((K * B, 3)).astype(np.float32)
    first = numpy(layer(x, training=True))
    factors = _replay_factors(layer, B)
    second = numpy(layer(x, training=True))
    _assert_close(second, _dense_rank1_reference(layer, x, factors))
    assert np.abs(first - second).max() > 1e-3


def test_dense_rank1_default_inference_samples_at_test_time():
    keras.utils.set_random_seed(4)
    layer = DenseRank1(4, ensemble_size=K, seed=9, **_stochastic())
    x = np.random.default_rng(3).standard_normal((K * B, 3)).astype(np.float32)
    layer.build(x.shape)
    factors = _replay_factors(layer, B)
    _assert_close(layer(x, training=False), _dense_rank1_reference(layer, x, factors))


def test_dense_rank1_mean_inference_uses_the_loc_and_is_deterministic():
    keras.utils.set_random_seed(5)
    layer = DenseRank1(4, ensemble_size=K, seed=9, inference="mean", **_stochastic())
    x = np.random.default_rng(4).standard_normal((K * B, 3)).astype(np.float32)
    layer.build(x.shape)
    means = _replay_factors(layer, B, sample=False)
    first = numpy(layer(x, training=False))
    second = numpy(layer(x, training=False))
    _assert_close(first, _dense_rank1_reference(layer, x, means))
    np.testing.assert_array_equal(first, second)
    # In training the factors are still sampled: two calls differ, and each
    # matches its replayed sample.
    factors = _replay_factors(layer, B)
    train_first = numpy(layer(x, training=True))
    _assert_close(train_first, _dense_rank1_reference(layer, x, factors))
    train_second = numpy(layer(x, training=True))
    assert np.abs(train_first - train_second).max() > 1e-3
    assert np.abs(train_first - first).max() > 1e-3


def test_dense_batch_ensemble_matches_numpy_with_random_sign_factors():
    keras.utils.set_random_seed(6)
    layer = DenseBatchEnsemble(
        4,
        ensemble_size=K,
        alpha_initializer="random_sign",
        gamma_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=2),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=3),
    )
    x = np.random.default_rng(5).standard_normal((K * B, 3)).astype(np.float32)
    layer.build(x.shape)
    factors = _replay_factors(layer, B)
    assert set(np.unique(factors["alpha"])) == {-1.0, 1.0}
    y1 = numpy(layer(x, training=True))
    _assert_close(y1, _dense_rank1_reference(layer, x, factors))
    np.testing.assert_array_equal(y1, numpy(layer(x, training=True)))


def test_dense_block_order_member_k_sees_rows_k():
    """Only member 0's block is non-zero: rows of the other members are
    exactly their own biases, and the whole output matches NumPy."""
    keras.utils.set_random_seed(7)
    layer = DenseRank1(2, ensemble_size=K, seed=1, inference="mean", **_stochastic())
    x = np.zeros((K * B, 3), np.float32)
    x[:B] = 1.0  # only member 0's block is non-zero
    layer.build(x.shape)
    means = _replay_factors(layer, B, sample=False)
    y = numpy(layer(x, training=False))
    _assert_close(y, _dense_rank1_reference(layer, x, means))
    # Rows of members 1.. are just their biases.
    bias = numpy(layer.member_factors["bias"].variable)
    for k in range(1, K):
        np.testing.assert_allclose(y[k * B:(k + 1) * B], np.broadcast_to(bias[k], (B, 2)), rtol=1e-6)


# ---------------------------------------------------------------------------
# Conv2D
# ---------------------------------------------------------------------------

CONV2D_CASES = {
    "same_stride1": {"padding": "same"},
    "valid_stride1": {"padding": "valid"},
    "same_stride2": {"padding": "same", "strides": 2},
    "valid_stride2": {"padding": "valid", "strides": 2},
    "valid_dilation2": {"padding": "valid", "dilation_rate": 2},
    "same_per_example": {"padding": "same", "sample_per_example": True},
    "same_additive": {"padding": "same", "use_additive_perturbation": True},
    "valid_stride2_additive_per_example": {
        "padding": "valid",
        "strides": 2,
        "use_additive_perturbation": True,
        "sample_per_example": True,
    },
    "same_relu_rect_kernel": {"padding": "same", "kernel_size": (3, 2), "activation": "relu"},
}


def _relu(v):
    return np.maximum(v, 0.0)


@pytest.mark.parametrize("case", list(CONV2D_CASES))
def test_conv2d_rank1_sampled_forward_matches_numpy(case):
    keras.utils.set_random_seed(10)
    options = dict(CONV2D_CASES[case])
    kernel_size = options.pop("kernel_size", 3)
    layer = Conv2DRank1(4, kernel_size, ensemble_size=K, seed=13, **_stochastic(**options))
    x = np.random.default_rng(6).standard_normal((K * B, 7, 6, 3)).astype(np.float32)
    layer.build(x.shape)
    factors = _replay_factors(layer, B)
    y = layer(x, training=True)
    activation = _relu if options.get("activation") == "relu" else (lambda v: v)
    expected = _conv_rank1_reference(layer, x, factors, activation)
    _assert_close(y, expected)
    assert tuple(y.shape) == tuple(layer.compute_output_shape(x.shape))
    assert _seed_state(layer) == (13, 2)


def test_conv2d_rank1_mean_inference_is_deterministic_and_uses_loc():
    keras.utils.set_random_seed(11)
    layer = Conv2DRank1(4, 3, ensemble_size=K, seed=2, padding="same", inference="mean", **_stochastic())
    x = np.random.default_rng(7).standard_normal((K * B, 5, 5, 2)).astype(np.float32)
    layer.build(x.shape)
    means = _replay_factors(layer, B, sample=False)
    first = numpy(layer(x, training=False))
    _assert_close(first, _conv_rank1_reference(layer, x, means))
    np.testing.assert_array_equal(first, numpy(layer(x, training=False)))
    a, b = numpy(layer(x, training=True)), numpy(layer(x, training=True))
    assert np.abs(a - b).max() > 1e-3


def test_conv2d_batch_ensemble_matches_numpy():
    keras.utils.set_random_seed(12)
    layer = Conv2DBatchEnsemble(
        3,
        2,
        ensemble_size=K,
        strides=2,
        padding="same",
        alpha_initializer="random_sign",
        gamma_initializer="random_sign",
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1),
    )
    x = np.random.default_rng(8).standard_normal((K * B, 5, 5, 2)).astype(np.float32)
    layer.build(x.shape)
    factors = _replay_factors(layer, B)
    _assert_close(layer(x, training=True), _conv_rank1_reference(layer, x, factors))


@pytest.mark.parametrize("additive", [False, True])
def test_conv2d_rank1_channels_first_matches_numpy(additive):
    """TF's CPU Conv2D kernel does not implement NCHW, so on TensorFlow the
    layer is run through XLA (tf.function(jit_compile=True)), which does; JAX
    and PyTorch run it as it is."""
    keras.utils.set_random_seed(13)
    layer = Conv2DRank1(
        4,
        3,
        ensemble_size=K,
        seed=21,
        padding="same",
        strides=2,
        data_format="channels_first",
        **_stochastic(use_additive_perturbation=additive),
    )
    x = np.random.default_rng(9).standard_normal((K * B, 3, 6, 5)).astype(np.float32)
    layer.build(x.shape)
    on_tensorflow = keras.backend.backend() == "tensorflow"
    factors = _replay_factors(layer, B, jit_compile=on_tensorflow)
    if on_tensorflow:
        import tensorflow as tf

        run = tf.function(lambda inputs: layer(inputs, training=True), jit_compile=True, autograph=False)
        y = numpy(run(tf.constant(x)))
    else:
        y = numpy(layer(x, training=True))
    expected = _conv_rank1_reference(layer, np.transpose(x, (0, 2, 3, 1)), factors)
    _assert_close(y, np.transpose(expected, (0, 3, 1, 2)))
    assert tuple(y.shape) == tuple(layer.compute_output_shape(x.shape)) == (K * B, 4, 3, 3)
    assert _seed_state(layer) == (21, 2)


def test_conv2d_channels_first_shapes_and_errors():
    layer = Conv2DRank1(4, 3, ensemble_size=K, padding="valid", data_format="channels_first")
    assert layer.compute_output_shape((K * B, 3, 7, 6)) == (K * B, 4, 5, 4)
    symbolic = layer(keras.Input((3, 7, 6), batch_size=K * B))
    assert tuple(symbolic.shape) == (K * B, 4, 5, 4)
    # The factors scale the channel axis (axis 1).
    assert tuple(layer.member_factors["alpha"].initializer.shape) == (K, 3)
    assert tuple(layer.kernel.shape) == (3, 3, 3, 4)
    with pytest.raises(ValueError):
        layer(np.zeros((K * B, 7, 6, 3), np.float32))  # channels in the wrong place


def test_conv2d_rejects_bad_arguments():
    # Batches K does not divide are valid (uneven member blocks): tests/test_member_rows.py.
    with pytest.raises(ValueError, match="padding"):
        Conv2DRank1(4, 3, padding="causal")
    with pytest.raises(ValueError, match="data_format"):
        Conv2DRank1(4, 3, data_format="nhwc")
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2DRank1(4, (3, 3, 3))


# ---------------------------------------------------------------------------
# Conv1D
# ---------------------------------------------------------------------------

CONV1D_CASES = {
    "causal": {"padding": "causal"},
    "causal_dilation2": {"padding": "causal", "dilation_rate": 2},
    "causal_additive": {"padding": "causal", "use_additive_perturbation": True},
    "causal_per_example": {"padding": "causal", "sample_per_example": True},
    "same_stride2": {"padding": "same", "strides": 2},
    "valid": {"padding": "valid"},
}


@pytest.mark.parametrize("case", list(CONV1D_CASES))
def test_conv1d_rank1_sampled_forward_matches_numpy(case):
    keras.utils.set_random_seed(20)
    layer = Conv1DRank1(4, 3, ensemble_size=K, seed=31, **_stochastic(**CONV1D_CASES[case]))
    x = np.random.default_rng(10).standard_normal((K * B, 9, 3)).astype(np.float32)
    layer.build(x.shape)
    factors = _replay_factors(layer, B)
    y = layer(x, training=True)
    _assert_close(y, _conv_rank1_reference(layer, x, factors))
    assert tuple(y.shape) == tuple(layer.compute_output_shape(x.shape))


def test_conv1d_causal_output_ignores_the_future():
    keras.utils.set_random_seed(21)
    layer = Conv1DRank1(2, 3, ensemble_size=K, padding="causal", inference="mean", **_stochastic())
    rng = np.random.default_rng(11)
    x = rng.standard_normal((K * B, 8, 2)).astype(np.float32)
    changed = x.copy()
    changed[:, 5:] = rng.standard_normal(changed[:, 5:].shape)
    y, y_changed = numpy(layer(x)), numpy(layer(changed))
    np.testing.assert_array_equal(y[:, :5], y_changed[:, :5])
    assert np.abs(y[:, 5:] - y_changed[:, 5:]).max() > 1e-3


def test_conv1d_batch_ensemble_matches_numpy():
    keras.utils.set_random_seed(22)
    layer = Conv1DBatchEnsemble(
        3,
        2,
        ensemble_size=K,
        padding="causal",
        alpha_initializer="random_sign",
        gamma_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=4),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=5),
    )
    x = np.random.default_rng(12).standard_normal((K * B, 6, 2)).astype(np.float32)
    layer.build(x.shape)
    factors = _replay_factors(layer, B)
    _assert_close(layer(x, training=True), _conv_rank1_reference(layer, x, factors))


# ---------------------------------------------------------------------------
# LSTM cell inside keras.layers.RNN
# ---------------------------------------------------------------------------


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _lstm_reference(cell, x, factors, return_sequences=False):
    """x: (K*B, T, D); factors (K, B, dim) shared by every time step."""
    W = numpy(cell.kernel).astype(np.float64)
    U = numpy(cell.recurrent_kernel).astype(np.float64)
    units = cell.units
    xm = _members(x)  # (K, B, T, D)
    h = np.zeros((K, xm.shape[1], units))
    c = np.zeros_like(h)
    outputs = []
    for t in range(xm.shape[2]):
        xt = xm[:, :, t]
        if cell.use_additive_perturbation:
            z = xt @ W + np.sum(xt * factors["alpha"], -1, keepdims=True) * factors["gamma"]
            z = z + h @ U + np.sum(h * factors["recurrent_alpha"], -1, keepdims=True) * factors["recurrent_gamma"]
        else:
            z = ((xt * factors["alpha"]) @ W) * factors["gamma"]
            z = z + ((h * factors["recurrent_alpha"]) @ U) * factors["recurrent_gamma"]
        if cell.use_bias:
            z = z + factors["bias"]
        i, f, g, o = (z[..., j * units:(j + 1) * units] for j in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        outputs.append(h)
    if return_sequences:
        return np.stack(outputs, axis=2).reshape(K * xm.shape[1], xm.shape[2], units)
    return h.reshape(K * xm.shape[1], units)


def _lstm_stochastic(**kwargs):
    return {
        "alpha_initializer": TrainableNormal(initial_stddev=STDDEV),
        "gamma_initializer": TrainableNormal(initial_stddev=STDDEV),
        "recurrent_alpha_initializer": TrainableNormal(initial_stddev=STDDEV),
        "recurrent_gamma_initializer": TrainableNormal(initial_stddev=STDDEV),
        "bias_initializer": keras.initializers.RandomNormal(stddev=0.5, seed=6),
        **kwargs,
    }


LSTM_CASES = {
    "per_member": {},
    "per_example": {"sample_per_example": True},
    "additive": {"use_additive_perturbation": True},
}


@pytest.mark.parametrize("case", list(LSTM_CASES))
@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_rank1_sampled_forward_matches_numpy(case, return_sequences):
    keras.utils.set_random_seed(30)
    cell = LSTMCellRank1(3, ensemble_size=K, seed=41, **_lstm_stochastic(**LSTM_CASES[case]))
    rnn = keras.layers.RNN(cell, return_sequences=return_sequences)
    x = np.random.default_rng(13).standard_normal((K * B, 5, 2)).astype(np.float32)
    rnn.build(x.shape)
    assert tuple(cell.member_factors["bias"].variable.shape) == (K, 12)
    factors = _replay_factors(cell, B)
    y = rnn(x, training=True)
    _assert_close(y, _lstm_reference(cell, x, factors, return_sequences))
    # The factors are drawn once per sequence: 4 seeds for 5 time steps.
    assert _seed_state(cell) == (41, 4)


def test_lstm_rank1_mean_inference_uses_loc_and_is_deterministic():
    keras.utils.set_random_seed(31)
    cell = LSTMCellRank1(3, ensemble_size=K, seed=42, inference="mean", **_lstm_stochastic())
    rnn = keras.layers.RNN(cell)
    x = np.random.default_rng(14).standard_normal((K * B, 4, 2)).astype(np.float32)
    rnn.build(x.shape)
    means = _replay_factors(cell, B, sample=False)
    first = numpy(rnn(x, training=False))
    _assert_close(first, _lstm_reference(cell, x, means))
    np.testing.assert_array_equal(first, numpy(rnn(x, training=False)))
    factors = _replay_factors(cell, B)
    train = numpy(rnn(x, training=True))
    _assert_close(train, _lstm_reference(cell, x, factors))
    assert np.abs(train - numpy(rnn(x, training=True))).max() > 1e-3


def test_lstm_default_bias_has_unit_forget_gate_per_member():
    cell = LSTMCellRank1(3, ensemble_size=K)
    keras.layers.RNN(cell).build((K * B, 4, 2))
    bias = numpy(cell.member_factors["bias"].variable)
    expected = np.concatenate([np.zeros((K, 3)), np.ones((K, 3)), np.zeros((K, 6))], axis=1)
    np.testing.assert_array_equal(bias, expected)


def test_lstm_batch_ensemble_matches_numpy():
    keras.utils.set_random_seed(32)
    cell = LSTMCellBatchEnsemble(
        3,
        ensemble_size=K,
        alpha_initializer="random_sign",
        gamma_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=7),
        recurrent_alpha_initializer="random_sign",
        recurrent_gamma_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=8),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=9),
    )
    rnn = keras.layers.RNN(cell, return_sequences=True)
    x = np.random.default_rng(15).standard_normal((K * B, 4, 2)).astype(np.float32)
    rnn.build(x.shape)
    factors = _replay_factors(cell, B)
    _assert_close(rnn(x, training=True), _lstm_reference(cell, x, factors, return_sequences=True))
