"""Bad input fails early with a ValueError that names the argument and what was expected."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import rank1_keras as r1
from rank1_keras import layers
from rank1_keras.probability import initializers, regularizers

LAYER_FACTORIES = {
    "DenseRank1": lambda **kw: layers.DenseRank1(4, **kw),
    "DenseBatchEnsemble": lambda **kw: layers.DenseBatchEnsemble(4, **kw),
    "Conv1DRank1": lambda **kw: layers.Conv1DRank1(4, 3, **kw),
    "Conv1DBatchEnsemble": lambda **kw: layers.Conv1DBatchEnsemble(4, 3, **kw),
    "Conv2DRank1": lambda **kw: layers.Conv2DRank1(4, 3, **kw),
    "Conv2DBatchEnsemble": lambda **kw: layers.Conv2DBatchEnsemble(4, 3, **kw),
    "LSTMCellRank1": lambda **kw: layers.LSTMCellRank1(4, **kw),
    "LSTMCellBatchEnsemble": lambda **kw: layers.LSTMCellBatchEnsemble(4, **kw),
}
INPUTS = {  # a valid input for ensemble_size=2 (4 rows), per layer family
    "Dense": (4, 3),
    "Conv1D": (4, 8, 3),
    "Conv2D": (4, 6, 6, 3),
    "LSTMCell": (4, 5, 3),
}


def _call(name, layer, shape):
    x = tf.ones(shape)
    if name.startswith("LSTMCell"):
        return keras.layers.RNN(layer)(x)
    return layer(x)


def _family(name):
    return next(prefix for prefix in INPUTS if name.startswith(prefix))


@pytest.mark.parametrize("name", sorted(LAYER_FACTORIES))
@pytest.mark.parametrize("ensemble_size", [0, -2, 2.5, True, "4"])
def test_ensemble_size_must_be_a_positive_integer(name, ensemble_size):
    with pytest.raises(ValueError, match=r"ensemble_size must be a positive integer.*got ensemble_size="):
        LAYER_FACTORIES[name](ensemble_size=ensemble_size)


@pytest.mark.parametrize(
    "make",
    [
        lambda: r1.TileEnsemble(0),
        lambda: r1.AverageMembers(-1),
        lambda: r1.AverageNLL(0),
        lambda: r1.MixtureNLL(1.5),
    ],
)
def test_ensemble_utilities_check_ensemble_size(make):
    with pytest.raises(ValueError, match="ensemble_size"):
        make()


@pytest.mark.parametrize("name", sorted(LAYER_FACTORIES))
def test_batch_not_a_multiple_of_ensemble_size_is_valid(name):
    # Uneven member blocks (2, 1, 1 rows for 4 rows and 3 members); values in tests/test_member_rows.py.
    layer = LAYER_FACTORIES[name](ensemble_size=3)
    shape = (4,) + INPUTS[_family(name)][1:]
    outputs = _call(name, layer, shape)
    assert outputs.shape[0] == 4
    assert np.isfinite(outputs.numpy()).all()


def test_dynamic_batch_not_a_multiple_of_ensemble_size_runs_in_graphs():
    layer = layers.DenseBatchEnsemble(4, ensemble_size=3)
    layer.build((None, 3))
    function = tf.function(layer, input_signature=[tf.TensorSpec((None, 3))])
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    # The traced graph gives each row its own member for any row count: rows 0-1, 2-3, 4-5 at 6 rows.
    np.testing.assert_allclose(function(x).numpy(), layer(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(function(x[:4]).numpy(), layer(x[:4]).numpy(), rtol=1e-6)
    assert function(x[:0]).shape == (0, 4)


@pytest.mark.parametrize(
    "name, shape, expected",
    [
        ("DenseRank1", (4,), "expected min_ndim=2, found ndim=1"),
        ("Conv2DRank1", (4, 6, 3), "expected ndim=4, found ndim=3"),
        ("Conv2DBatchEnsemble", (4, 2, 6, 6, 3), "expected ndim=4, found ndim=5"),
        ("Conv1DRank1", (4, 6, 6, 3), "expected ndim=3, found ndim=4"),
    ],
)
def test_wrong_input_rank_names_the_expected_rank(name, shape, expected):
    layer = LAYER_FACTORIES[name](ensemble_size=2)
    with pytest.raises(ValueError, match=expected):
        layer(tf.ones(shape))


def test_wrong_input_rank_for_lstm_cell_in_rnn():
    rnn = keras.layers.RNN(layers.LSTMCellRank1(4, ensemble_size=2))
    with pytest.raises(ValueError, match=r"expected ndim=3 for the sequence; got a step input_shape=\(4,\)"):
        rnn(tf.ones((4, 3)))


def test_input_channels_must_match_the_built_layer():
    layer = layers.Conv2DRank1(4, 3, ensemble_size=2)
    layer(tf.ones((2, 6, 6, 3)))
    with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 3"):
        layer(tf.ones((2, 6, 6, 5)))


@pytest.mark.parametrize("stddev", [-0.1, 0.0, float("inf"), float("nan")])
def test_prior_stddev_must_be_positive_and_finite(stddev):
    with pytest.raises(ValueError, match=r"stddev must be positive and finite|stddev must be a finite number"):
        regularizers.NormalKLDivergence(stddev=stddev)
    with pytest.raises(ValueError, match=r"scale must be positive and finite|scale must be a finite number"):
        regularizers.CauchyKLDivergence(scale=stddev)


def test_prior_stddev_checked_through_layer_arguments():
    with pytest.raises(ValueError, match="stddev must be positive and finite; got stddev=-1"):
        layers.DenseRank1(4, alpha_regularizer={"class_name": "rank1_keras>NormalKLDivergence", "config": {"stddev": -1.0}})


@pytest.mark.parametrize("argument", ["alpha_initializer", "gamma_initializer"])
@pytest.mark.parametrize("name", sorted(LAYER_FACTORIES))
def test_unknown_initializer_names_the_argument(argument, name):
    with pytest.raises(ValueError, match=rf"Unknown {argument}: 'trainable_gaussian'.*'trainable_normal'"):
        LAYER_FACTORIES[name](**{argument: "trainable_gaussian"})


def test_unknown_recurrent_initializer_names_the_argument():
    with pytest.raises(ValueError, match="Unknown recurrent_alpha_initializer: 'nope'"):
        layers.LSTMCellRank1(4, recurrent_alpha_initializer="nope")


def test_unknown_regularizer_names_the_argument():
    with pytest.raises(ValueError, match="Unknown alpha_regularizer: 'normal_kl'"):
        layers.DenseRank1(4, alpha_regularizer="normal_kl")


def test_kl_regularizer_needs_a_trainable_initializer():
    with pytest.raises(ValueError, match="alpha_regularizer=NormalKLDivergence is a KL divergence"):
        layers.DenseBatchEnsemble(4, alpha_regularizer="normal_kl_divergence")


def test_point_regularizer_on_a_trainable_factor_is_rejected():
    with pytest.raises(ValueError, match="gamma_regularizer must be a KL regularizer"):
        layers.DenseRank1(4, gamma_regularizer="l2")


def test_constraint_on_a_trainable_factor_is_rejected():
    with pytest.raises(ValueError, match="alpha_constraint applies to point factors only"):
        layers.Conv2DRank1(4, 3, alpha_constraint="non_neg")


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: layers.DenseRank1(4, inference="median"), r"inference must be one of \['sample', 'mean'\]"),
        (lambda: layers.DenseRank1(0), "units must be a positive integer"),
        (lambda: layers.Conv2DRank1(0, 3), "filters must be a positive integer"),
        (lambda: layers.Conv2DRank1(4, (3, 0)), "kernel_size must be a positive integer or a tuple of 2"),
        (lambda: layers.Conv2DRank1(4, 3, strides=(1, 2, 3)), "strides must be a positive integer or a tuple of 2"),
        (lambda: layers.Conv2DRank1(4, 3, padding="causal"), r"padding must be one of \['valid', 'same'\]"),
        (lambda: layers.Conv2DRank1(4, 3, data_format="nhwc"), "data_format must be one of"),
        (lambda: layers.LSTMCellRank1(4, dropout=1.5), r"dropout must be a probability in \[0, 1\]"),
        (lambda: initializers.TrainableNormal(initial_stddev=0.0), "initial_stddev must be positive"),
        (lambda: initializers.TrainableCauchy(initial_scale=-1.0), "initial_scale must be positive"),
        (lambda: initializers.RandomSign(positive_probability=1.5), "positive_probability must be a probability"),
        (lambda: regularizers.NormalKLDivergence(scale_factor=-1.0), "scale_factor must be non-negative"),
        (lambda: regularizers.NormalKLDivergence(mean=float("nan")), "mean must be a finite number"),
        (lambda: regularizers.HierarchicalNormalKLDivergence(variance_scale=0.0), "variance_scale must be positive"),
        (lambda: r1.KLAnnealing(0), "annealing_epochs must be positive"),
    ],
)
def test_other_arguments_are_checked_at_construction(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_regularizer_rejects_a_plain_tensor():
    with pytest.raises(ValueError, match="expects a RandomVariable"):
        regularizers.NormalKLDivergence()(tf.ones((2, 3)))


def test_fresh_layers_give_finite_outputs_and_losses():
    # Tiny initial scales via softplus of a negative raw value: no NaN at init.
    x = tf.random.normal((8, 6, 6, 3))
    layer = layers.Conv2DRank1(4, 3, ensemble_size=4, gamma_initializer="trainable_cauchy", gamma_regularizer="cauchy_kl_divergence")
    outputs = layer(x, training=True)
    assert np.isfinite(outputs.numpy()).all()
    assert all(np.isfinite(loss.numpy()) for loss in layer.losses)
