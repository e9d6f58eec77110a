"""One small model per public layer, shared by the serialization tests."""

import keras
import numpy as np

from rank1_keras import layers
from rank1_keras.models.ensemble import TileEnsemble
from rank1_keras.probability import initializers, regularizers

ENSEMBLE_SIZE = 3


def _rank1_arguments(**overrides):
    # Non-default, mixed arguments so a config round trip has something to lose.
    arguments = dict(
        ensemble_size=ENSEMBLE_SIZE,
        alpha_initializer=initializers.TrainableNormal(initial_stddev=0.05),
        gamma_initializer="trainable_cauchy",
        alpha_regularizer=regularizers.NormalKLDivergence(mean=1.0, stddev=0.3, scale_factor=0.01),
        gamma_regularizer=regularizers.CauchyKLDivergence(loc=1.0, scale=0.2, scale_factor=0.01),
        inference="mean",
        seed=7,
    )
    arguments.update(overrides)
    return arguments


def _batch_ensemble_arguments(**overrides):
    arguments = dict(ensemble_size=ENSEMBLE_SIZE, alpha_initializer="random_sign", use_additive_perturbation=False)
    arguments.update(overrides)
    return arguments


# name -> (input shape without batch, layer factory, wrap in RNN?)
CASES = {
    "DenseRank1": ((6,), lambda: layers.DenseRank1(5, activation="relu", **_rank1_arguments()), False),
    "DenseRank1_additive_hierarchical": (
        (6,),
        lambda: layers.DenseRank1(
            5,
            **_rank1_arguments(
                use_additive_perturbation=True,
                gamma_initializer="trainable_normal",
                gamma_regularizer="hierarchical_normal_kl_divergence",
            ),
        ),
        False,
    ),
    "DenseBatchEnsemble": ((6,), lambda: layers.DenseBatchEnsemble(5, **_batch_ensemble_arguments()), False),
    "Conv1DRank1": ((9, 4), lambda: layers.Conv1DRank1(3, 3, padding="causal", **_rank1_arguments()), False),
    "Conv1DBatchEnsemble": ((9, 4), lambda: layers.Conv1DBatchEnsemble(3, 2, strides=2, **_batch_ensemble_arguments()), False),
    "Conv2DRank1": ((7, 7, 2), lambda: layers.Conv2DRank1(4, 3, padding="same", **_rank1_arguments()), False),
    "Conv2DBatchEnsemble": (
        (7, 7, 2),
        lambda: layers.Conv2DBatchEnsemble(4, 3, dilation_rate=2, **_batch_ensemble_arguments(use_additive_perturbation=True)),
        False,
    ),
    "LSTMCellRank1": ((5, 3), lambda: layers.LSTMCellRank1(4, **_rank1_arguments()), True),
    "LSTMCellBatchEnsemble": ((5, 3), lambda: layers.LSTMCellBatchEnsemble(4, **_batch_ensemble_arguments()), True),
}


def build_case_model(name):
    input_shape, make_layer, recurrent = CASES[name]
    inputs = keras.Input(input_shape)
    x = TileEnsemble(ENSEMBLE_SIZE)(inputs)
    layer = make_layer()
    x = keras.layers.RNN(layer, return_sequences=True)(x) if recurrent else layer(x)
    return keras.Model(inputs, x), layer


def case_inputs(name, batch_size=2, seed=0):
    input_shape = CASES[name][0]
    return np.random.default_rng(seed).normal(size=(batch_size,) + input_shape).astype("float32")
