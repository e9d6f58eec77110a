"""Per-member batch norm, Packed-Ensembles and Bella's low-rank layers on every Keras backend.

Each layer gets known weights and R = 7 rows for K = 3 members (uneven
blocks 3, 2, 2: row i belongs to member floor(i K / R)), or an even tiled
batch where a layer has a separate even path. Checked against float64 NumPy:

    outputs      the layer's maths written out per member (W_k materialised);
    gradients    of L = sum(y * w), w fixed, for every trainable weight:
                 central differences of the float64 reference;
    .keras file  a one-layer functional model saved and loaded predicts the same.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np
import pytest

from rank1_keras.layers import (
    Conv1DLowRankEnsemble,
    Conv1DPackedEnsemble,
    Conv2DLowRankEnsemble,
    Conv2DPackedEnsemble,
    DenseLowRankEnsemble,
    DensePackedEnsemble,
)
from rank1_keras.layers.normalization import EnsembleBatchNormalization
from tests.backend_utils import gradients, numpy
from tests.numpy_references import conv as _conv

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

K = 3
ROWS = 7  # blocks of 3, 2, 2 rows
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _member_ids(rows, members=K):
    return np.arange(rows) * members // rows


# -- float64 NumPy references ----------------------------------------------------


def _channels_last(x, data_format):
    return np.moveaxis(x, 1, -1) if data_format == "channels_first" else x


def _from_channels_last(x, data_format):
    return np.moveaxis(x, -1, 1) if data_format == "channels_first" else x


def _activation(layer):
    """The layer's activation in NumPy (the cases use these two)."""
    return {"linear": lambda v: v, "tanh": np.tanh}[layer.activation.__name__]


def _dense_packed_reference(layer, x, w):
    """y = act(x W_k + b_k), W_k block-diagonal with `groups` blocks."""
    groups, d_in, units = layer.groups, x.shape[-1], layer.units
    outputs = np.zeros(x.shape[:-1] + (units,))
    for k in range(K):
        full = np.zeros((d_in, units))
        for g in range(groups):
            full[g * d_in // groups:(g + 1) * d_in // groups, g * units // groups:(g + 1) * units // groups] = (
                w["kernel"][k, g]
            )
        rows = _member_ids(len(x)) == k
        outputs[rows] = x[rows] @ full + w["bias"][k]
    return _activation(layer)(outputs)


def _conv_packed_reference(layer, x, w):
    """y = act(conv(x, W_k, groups) + b_k) on member k's rows."""
    outputs = None
    for k in range(K):
        rows = _member_ids(len(x)) == k
        y = _conv(x[rows], w["kernel"][k], layer.strides[0], layer.padding, layer.dilation_rate[0], layer.groups,
                  layer.data_format)
        y = _from_channels_last(_channels_last(y, layer.data_format) + w["bias"][k], layer.data_format)
        if outputs is None:
            outputs = np.zeros((len(x),) + y.shape[1:])
        outputs[rows] = y
    return _activation(layer)(outputs)


def _low_rank_kernel(layer, w, k):
    """W_k = W0 + (scale / r) reshape(A_k B_k)."""
    a = w["input_factor"][k]
    return w["kernel"] + layer.perturbation_factor * (a.reshape(-1, a.shape[-1]) @ w["output_factor"][k]).reshape(
        w["kernel"].shape
    )


def _dense_low_rank_reference(layer, x, w):
    outputs = np.zeros(x.shape[:-1] + (layer.units,))
    for k in range(K):
        rows = _member_ids(len(x)) == k
        outputs[rows] = x[rows] @ _low_rank_kernel(layer, w, k) + w["bias"]
    return _activation(layer)(outputs)


def _conv_low_rank_reference(layer, x, w):
    outputs = None
    for k in range(K):
        rows = _member_ids(len(x)) == k
        y = _conv(x[rows], _low_rank_kernel(layer, w, k), layer.strides[0], layer.padding, layer.dilation_rate[0],
                  data_format=layer.data_format)
        y = _from_channels_last(_channels_last(y, layer.data_format) + w["bias"], layer.data_format)
        if outputs is None:
            outputs = np.zeros((len(x),) + y.shape[1:])
        outputs[rows] = y
    return _activation(layer)(outputs)


def _batch_norm_moments(layer, x):
    """Each member's biased mean and variance over its rows and every non-channel axis: (K, C) each."""
    x = np.moveaxis(x, layer.axis, -1)
    ids = _member_ids(len(x))
    blocks = [x[ids == k].reshape(-1, x.shape[-1]) for k in range(K)]
    return np.stack([b.mean(0) for b in blocks]), np.stack([b.var(0) for b in blocks])


def _batch_norm_reference(layer, x, w, training):
    """y = gamma_k (x - mean_k) / sqrt(var_k + eps) + beta_k: batch moments in training, moving ones at inference."""
    mean, variance = _batch_norm_moments(layer, x) if training else (w["moving_mean"], w["moving_variance"])
    ids = _member_ids(len(x))
    channels_last = np.moveaxis(x, layer.axis, -1)
    outputs = np.stack([
        w["gamma"][k] * (row - mean[k]) / np.sqrt(variance[k] + layer.epsilon) + w["beta"][k]
        for row, k in zip(channels_last, ids)
    ])
    return np.moveaxis(outputs, -1, layer.axis)


# -- the cases ----------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    make: Callable  # () -> a fresh layer
    input_shape: tuple
    reference: Callable  # (layer, x, weights) -> float64 outputs
    training: bool = None  # passed to the call when not None (batch norm)

    def call(self, layer, x):
        return layer(x) if self.training is None else layer(x, training=self.training)


def _batch_norm_case(name, input_shape, training, axis=-1):
    return Case(
        name,
        lambda: EnsembleBatchNormalization(ensemble_size=K, axis=axis, momentum=0.9),
        input_shape,
        lambda layer, x, w: _batch_norm_reference(layer, x, w, training),
        training,
    )


CASES = [
    _batch_norm_case("batch_norm_training", (ROWS, 2, 3, 4), True),
    _batch_norm_case("batch_norm_inference", (ROWS, 2, 3, 4), False),
    _batch_norm_case("batch_norm_channels_first_training", (ROWS, 4, 3), True, axis=1),
    _batch_norm_case("batch_norm_dense_training", (ROWS, 4), True),
    Case("dense_packed_uneven", lambda: DensePackedEnsemble(6, ensemble_size=K, groups=2, activation="tanh"),
         (ROWS, 8), _dense_packed_reference),
    # K divides the rows: every member in one einsum.
    Case("dense_packed_even_sequence", lambda: DensePackedEnsemble(6, ensemble_size=K, groups=2),
         (2 * K, 2, 8), _dense_packed_reference),
    Case("conv2d_packed", lambda: Conv2DPackedEnsemble(4, 3, ensemble_size=K, groups=2, strides=2, padding="same"),
         (ROWS, 6, 5, 4), _conv_packed_reference),
    Case("conv2d_packed_channels_first",
         lambda: Conv2DPackedEnsemble(4, (3, 2), ensemble_size=K, groups=2, data_format="channels_first",
                                      activation="tanh"),
         (ROWS, 4, 5, 5), _conv_packed_reference),
    Case("conv1d_packed_causal", lambda: Conv1DPackedEnsemble(4, 3, ensemble_size=K, padding="causal", dilation_rate=2),
         (ROWS, 9, 2), _conv_packed_reference),
    Case("dense_low_rank",
         lambda: DenseLowRankEnsemble(5, ensemble_size=K, rank=2, perturbation_scale=3.0, activation="tanh"),
         (ROWS, 4), _dense_low_rank_reference),
    Case("conv2d_low_rank", lambda: Conv2DLowRankEnsemble(4, (3, 2), ensemble_size=K, rank=2, strides=2, padding="same"),
         (ROWS, 7, 6, 3), _conv_low_rank_reference),
    Case("conv2d_low_rank_channels_first",
         lambda: Conv2DLowRankEnsemble(4, 3, ensemble_size=K, rank=2, dilation_rate=2, data_format="channels_first"),
         (ROWS, 3, 7, 7), _conv_low_rank_reference),
    Case("conv1d_low_rank_causal", lambda: Conv1DLowRankEnsemble(4, 3, ensemble_size=K, rank=1, padding="causal"),
         (ROWS, 8, 2), _conv_low_rank_reference),
]


def _setup(case, seed=0):
    """A built layer with known weights (float32 on the layer, float64 in the returned dict) and its input."""
    rng = np.random.default_rng(seed)
    layer = case.make()
    layer.build(case.input_shape)
    weights = {}
    for variable in layer.weights:
        if variable.name == "moving_variance":
            value = rng.uniform(0.5, 2.0, size=variable.shape)
        else:
            value = rng.normal(size=variable.shape)
        value = value.astype(np.float32)
        variable.assign(value)
        weights[variable.name] = value.astype(np.float64)
    x = (rng.normal(size=case.input_shape) * 2.0 + 0.5).astype(np.float32)
    return layer, weights, x


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_outputs_match_numpy(case):
    layer, weights, x = _setup(case)
    outputs = numpy(case.call(layer, x))
    expected = case.reference(layer, x.astype(np.float64), weights)
    assert outputs.shape == expected.shape == tuple(layer.compute_output_shape(x.shape))
    np.testing.assert_allclose(outputs, expected, **TOLERANCE)
    if isinstance(layer, EnsembleBatchNormalization):
        moving = (weights["moving_mean"], weights["moving_variance"])
        if case.training:  # m <- momentum m + (1 - momentum) batch moment, every member has rows
            moving = tuple(0.9 * m + 0.1 * b for m, b in zip(moving, _batch_norm_moments(layer, x.astype(np.float64))))
        np.testing.assert_allclose(numpy(layer.moving_mean), moving[0], **TOLERANCE)
        np.testing.assert_allclose(numpy(layer.moving_variance), moving[1], **TOLERANCE)


def _numeric_gradient(loss, weights, name, step=1e-6):
    """d loss(weights) / d weights[name] by central differences (float64)."""
    gradient = np.zeros_like(weights[name])
    for index in np.ndindex(gradient.shape):
        shifted = []
        for sign in (1.0, -1.0):
            value = weights[name].copy()
            value[index] += sign * step
            shifted.append(loss({**weights, name: value}))
        gradient[index] = (shifted[0] - shifted[1]) / (2 * step)
    return gradient


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_gradients_reach_every_trainable_weight(case):
    layer, weights, x = _setup(case)
    cotangent = np.random.default_rng(1).normal(size=case.reference(layer, x.astype(np.float64), weights).shape)
    trainable = list(layer.trainable_weights)
    assert trainable
    weighting = keras.ops.convert_to_tensor(cotangent, "float32")
    gradient_values = gradients(lambda: keras.ops.sum(case.call(layer, x) * weighting), trainable)

    def loss(values):
        return float(np.sum(case.reference(layer, x.astype(np.float64), values) * cotangent))

    for variable, gradient in zip(trainable, gradient_values):
        assert gradient is not None, variable.path
        gradient = numpy(gradient)
        # Every member owns rows, so every member's slice of the (K, ...) weight gets a gradient.
        assert all(np.abs(gradient[k]).max() > 0 for k in range(K)), variable.path
        np.testing.assert_allclose(gradient, _numeric_gradient(loss, weights, variable.name), err_msg=variable.path,
                                   **TOLERANCE)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_keras_file_round_trip(case, tmp_path):
    layer, weights, x = _setup(case)
    inputs = keras.Input(case.input_shape[1:])
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.layers[-1]
    assert type(loaded_layer) is type(layer) and loaded_layer.get_config() == layer.get_config()
    for variable, loaded_variable in zip(layer.weights, loaded_layer.weights):
        np.testing.assert_array_equal(numpy(loaded_variable), weights[variable.name], err_msg=variable.path)
    expected = model.predict(x, verbose=0)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    if not case.training:  # predict runs at inference: the reference, moving statistics included
        np.testing.assert_allclose(expected, case.reference(layer, x.astype(np.float64), weights), **TOLERANCE)


def test_batch_norm_member_without_rows_keeps_its_statistics():
    # R = 2 rows, 4 members: rows 0 and 1 are members 0 and 2; members 1 and 3 have none.
    members = 4
    layer = EnsembleBatchNormalization(ensemble_size=members, momentum=0.5)
    x = np.random.default_rng(2).normal(size=(2, 3, 2)).astype(np.float32)
    layer.build(x.shape)
    outputs = numpy(layer(x, training=True))
    for row, member in enumerate(_member_ids(2, members)):  # a member's one row, normalised over its positions
        expected = (x[row] - x[row].mean(0)) / np.sqrt(x[row].var(0) + layer.epsilon)
        np.testing.assert_allclose(outputs[row], expected, **TOLERANCE)
        np.testing.assert_allclose(numpy(layer.moving_mean)[member], 0.5 * x[row].mean(0), **TOLERANCE)
        np.testing.assert_allclose(numpy(layer.moving_variance)[member], 0.5 + 0.5 * x[row].var(0), **TOLERANCE)
    for member in (1, 3):
        np.testing.assert_array_equal(numpy(layer.moving_mean)[member], 0.0)
        np.testing.assert_array_equal(numpy(layer.moving_variance)[member], 1.0)
    weighting = keras.ops.convert_to_tensor(x)
    for gradient in gradients(lambda: keras.ops.sum(layer(x, training=True) * weighting), [layer.gamma, layer.beta]):
        gradient = numpy(gradient)
        assert np.isfinite(gradient).all()
        np.testing.assert_array_equal(gradient[[1, 3]], 0.0)  # nothing to normalise, nothing to learn
        assert np.abs(gradient[[0, 2]]).min() > 0
