"""Every trainable variable of a rank-1 / BatchEnsemble model gets a gradient and trains (every backend)."""

import functools

import keras
import numpy as np
import pytest

from rank1_keras.layers import (
    Conv2DBatchEnsemble,
    Conv2DRank1,
    DenseBatchEnsemble,
    DenseRank1,
    LSTMCellBatchEnsemble,
    LSTMCellRank1,
)
from rank1_keras.layers.rank1_mechanics import Rank1Mixin
from rank1_keras.losses import AverageNLL
from rank1_keras.models.ensemble import TileEnsemble
from tests.backend_utils import gradients, numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

K, B, CLASSES = 2, 3, 3

FAMILIES = {
    "rank1": (Conv2DRank1, LSTMCellRank1, DenseRank1),
    "batch_ensemble": (Conv2DBatchEnsemble, LSTMCellBatchEnsemble, DenseBatchEnsemble),
}


def _model(family):
    conv_cls, cell_cls, dense_cls = FAMILIES[family]
    image = keras.Input((5, 5, 2), name="image")
    sequence = keras.Input((4, 3), name="sequence")
    features = conv_cls(3, 3, ensemble_size=K, padding="same", activation="relu", seed=1)(TileEnsemble(K)(image))
    features = keras.layers.Flatten()(features)
    recurrent = keras.layers.RNN(cell_cls(4, ensemble_size=K, seed=2))(TileEnsemble(K)(sequence))
    hidden = keras.layers.Concatenate()([features, recurrent])
    outputs = dense_cls(CLASSES, ensemble_size=K, activation="softmax", seed=3)(hidden)
    return keras.Model([image, sequence], outputs)


def _data(seed, n=B):
    rng = np.random.default_rng(seed)
    x = [
        rng.standard_normal((n, 5, 5, 2)).astype(np.float32),
        rng.standard_normal((n, 4, 3)).astype(np.float32),
    ]
    y = rng.integers(0, CLASSES, size=n)
    return x, y


def _total(losses):
    return functools.reduce(keras.ops.add, losses)


def _rank1_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, Rank1Mixin)]


def _expected_variable_names(family):
    """Trainable variable names, by layer kind (independent of the library's list)."""
    if family == "rank1":
        def factor(name):
            return [f"{name}_loc", f"{name}_unconstrained_scale"]
    else:
        def factor(name):
            return [name]
    conv = ["kernel"] + factor("alpha") + factor("gamma") + ["bias"]
    dense = list(conv)
    lstm = ["kernel", "recurrent_kernel"] + [
        v for name in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma") for v in factor(name)
    ] + ["bias"]
    return sorted(conv + dense + lstm)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_trainable_variable_gets_a_finite_nonzero_gradient(family):
    keras.utils.set_random_seed(0)
    model = _model(family)
    names = sorted(v.name for v in model.trainable_variables)
    assert names == _expected_variable_names(family)
    x, y = _data(0)
    loss_fn = AverageNLL(K)

    def loss():
        outputs = model(x, training=True)
        nll = loss_fn(y, outputs)
        return nll + _total(model.losses) if model.losses else nll

    grads = gradients(loss, model.trainable_variables)
    for variable, gradient in zip(model.trainable_variables, grads):
        assert gradient is not None, variable.path
        gradient = numpy(gradient)
        assert np.all(np.isfinite(gradient)), variable.path
        assert np.abs(gradient).max() > 0, variable.path
        # Each member's row of a per-member table is used by its own block of rows.
        if len(variable.shape) == 2 and variable.shape[0] == K and "kernel" not in variable.name:
            assert np.all(np.abs(gradient).max(axis=1) > 0), variable.path
    if family == "batch_ensemble":
        assert model.losses == []


def _normal_kl(mu, s, m=1.0, t=0.1):
    return np.sum(np.log(t / s) + (s**2 + (mu - m) ** 2) / (2 * t**2) - 0.5)


def test_model_losses_are_the_kl_of_every_stochastic_factor_once():
    keras.utils.set_random_seed(1)
    model = _model("rank1")
    # Move the posteriors away from their initial values so the KL is specific.
    rng = np.random.default_rng(1)
    for variable in model.trainable_variables:
        if variable.name.endswith("_unconstrained_scale"):
            variable.assign(rng.uniform(-4.0, -1.0, variable.shape).astype(np.float32))
    layers = _rank1_layers(model)
    assert len(layers) == 3
    layers[0].kl_weight.assign(0.5)
    x, _ = _data(1)

    def eager_kl():
        model(x, training=True)
        return _total(model.losses)

    def stateless_kl(trainable, non_trainable, inputs):
        _, _, losses = model.stateless_call(trainable, non_trainable, inputs, training=True, return_losses=True)
        return _total(losses)

    # Eager and traced (tf.function, jax.jit; PyTorch: the stateless call as it
    # is); losses are reset, not accumulated, between calls.
    computations = [eager_kl, eager_kl]
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def graph_kl(inputs):
            model(inputs, training=True)
            return _total(model.losses)

        computations += [lambda: graph_kl(x), lambda: graph_kl(x)]
        traced = tf.function(stateless_kl)
    elif backend == "jax":
        import jax

        traced = jax.jit(stateless_kl)
    else:
        traced = stateless_kl
    computations += [lambda: traced(trainable, non_trainable, x)] * 2
    for compute_kl in computations:
        total = float(numpy(compute_kl()))
        expected = 0.0
        for layer in layers:
            layer_kl = 0.0
            for factor in layer.member_factors.values():
                if factor.is_stochastic:
                    mu = numpy(factor.initializer.loc).astype(np.float64)
                    raw = numpy(factor.initializer.parameters["unconstrained_scale"]).astype(np.float64)
                    layer_kl += _normal_kl(mu, np.log1p(np.exp(raw)))
            expected += float(numpy(layer.kl_weight)) * layer_kl
        np.testing.assert_allclose(total, expected, rtol=1e-5)
    eager_kl()
    assert len(model.losses) == 3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fit_changes_every_trainable_variable(family):
    keras.utils.set_random_seed(2)
    model = _model(family)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=AverageNLL(K))
    before = {v.path: numpy(v).copy() for v in model.trainable_variables}
    x, y = _data(2, n=2 * B)
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for variable in model.trainable_variables:
        assert np.all(np.isfinite(numpy(variable))), variable.path
        assert np.abs(numpy(variable) - before[variable.path]).max() > 0, variable.path
    # Non-trainable KL weights are untouched by the optimizer.
    for layer in _rank1_layers(model):
        if layer.kl_weight is not None:
            assert float(numpy(layer.kl_weight)) == 1.0
