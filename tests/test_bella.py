"""Bella: the low-rank ensemble layers, the "bella" conversion, to_bella, trainable_fraction.

Every layer is checked against a float64 NumPy computation that materialises
W_k = W0 + (scale/rank) A_k B_k (here only; the layers never do), converted
models against the original network they start from, and saved models
against their outputs before the round trip.
"""

import math

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.bella import particle_variables, to_bella, trainable_fraction
from rank1_keras.layers import (
    Conv1DLowRankEnsemble,
    Conv2DLowRankEnsemble,
    DenseLowRankEnsemble,
)
from rank1_keras.layers.low_rank import low_rank_layers
from rank1_keras.models import small_cnn
from tests.backend_utils import numpy
from tests.numpy_references import conv as _conv

PARTICLES = 3
EXAMPLES = 2  # per particle


def _max_error(actual, expected):
    return float(np.max(np.abs(numpy(actual).astype(np.float64) - numpy(expected).astype(np.float64))))


def _assign_random(layer, rng):
    """Random W0, b, A, B (B nonzero, so every particle differs); returns them as float64."""
    values = {}
    for name, variable in (
        ("kernel", layer.kernel),
        ("bias", layer.bias),
        ("input_factor", layer.input_factor),
        ("output_factor", layer.output_factor),
    ):
        value = rng.normal(size=variable.shape).astype(np.float32)
        variable.assign(value)
        values[name] = value.astype(np.float64)
    return values


def _particle_kernels(values, factor):
    """W_k = W0 + factor * reshape(A_k B_k), for every particle k (NumPy, float64)."""
    kernel = values["kernel"]
    kernels = []
    for input_factor, output_factor in zip(values["input_factor"], values["output_factor"]):
        delta = input_factor.reshape(-1, input_factor.shape[-1]) @ output_factor
        kernels.append(kernel + factor * delta.reshape(kernel.shape))
    return kernels


# -- the layers against NumPy ------------------------------------------------------


@pytest.mark.backends("tensorflow", "jax", "torch")  # the layers alone: every backend
@pytest.mark.parametrize("input_shape", [(5,), (2, 5)])
def test_dense_matches_numpy(input_shape):
    rng = np.random.default_rng(0)
    layer = DenseLowRankEnsemble(4, ensemble_size=PARTICLES, rank=2, perturbation_scale=3.0, activation="tanh")
    inputs = rng.normal(size=(PARTICLES * EXAMPLES, *input_shape)).astype(np.float32)
    layer(inputs)
    values = _assign_random(layer, rng)
    outputs = numpy(layer(inputs))
    assert layer.perturbation_factor == 1.5
    for k, kernel in enumerate(_particle_kernels(values, 1.5)):
        rows = slice(k * EXAMPLES, (k + 1) * EXAMPLES)
        expected = np.tanh(inputs[rows].astype(np.float64) @ kernel + values["bias"])
        assert _max_error(outputs[rows], expected) < 1e-5


@pytest.mark.backends("tensorflow", "jax", "torch")  # the layers alone: every backend
@pytest.mark.parametrize(
    "strides, padding, dilation",
    [(2, "same", 1), (2, "valid", 1), (1, "valid", 2), (1, "same", 2)],
)
def test_conv2d_matches_numpy(strides, padding, dilation):
    rng = np.random.default_rng(1)
    layer = Conv2DLowRankEnsemble(
        4, 3, ensemble_size=PARTICLES, rank=2, strides=strides, padding=padding, dilation_rate=dilation
    )
    inputs = rng.normal(size=(PARTICLES * EXAMPLES, 9, 8, 3)).astype(np.float32)
    layer(inputs)
    values = _assign_random(layer, rng)
    outputs = numpy(layer(inputs))
    assert outputs.shape == layer.compute_output_shape(inputs.shape)
    for k, kernel in enumerate(_particle_kernels(values, 1.0)):
        rows = slice(k * EXAMPLES, (k + 1) * EXAMPLES)
        expected = _conv(inputs[rows].astype(np.float64), kernel, strides, padding, dilation) + values["bias"]
        assert _max_error(outputs[rows], expected) < 1e-5


@pytest.mark.backends("tensorflow", "jax", "torch")  # the layers alone: every backend
@pytest.mark.parametrize("padding", ["causal", "same"])
def test_conv1d_matches_numpy(padding):
    rng = np.random.default_rng(2)
    layer = Conv1DLowRankEnsemble(4, 3, ensemble_size=PARTICLES, rank=2, padding=padding, dilation_rate=2)
    inputs = rng.normal(size=(PARTICLES * EXAMPLES, 10, 3)).astype(np.float32)
    layer(inputs)
    values = _assign_random(layer, rng)
    outputs = numpy(layer(inputs))
    for k, kernel in enumerate(_particle_kernels(values, 1.0)):
        rows = slice(k * EXAMPLES, (k + 1) * EXAMPLES)
        expected = _conv(inputs[rows].astype(np.float64), kernel, 1, padding, 2) + values["bias"]
        assert _max_error(outputs[rows], expected) < 1e-5


@pytest.mark.backends("tensorflow", "jax", "torch")  # the layers alone: every backend
def test_initial_factors_and_variable_roles():
    layer = Conv2DLowRankEnsemble(6, 3, ensemble_size=PARTICLES, rank=4, seed=3)
    layer(np.zeros((PARTICLES, 5, 5, 2), np.float32))
    input_factor, output_factor = layer.perturbation_variables
    assert input_factor is layer.input_factor and output_factor is layer.output_factor
    assert [v.trainable for v in layer.weights if v is layer.kernel or v is layer.bias] == [False, False]
    assert {id(v) for v in layer.trainable_weights} == {id(input_factor), id(output_factor)}
    assert not np.any(numpy(output_factor))  # every particle starts at W0
    values = numpy(input_factor)
    assert np.max(np.abs(values)) <= 1.0 / math.sqrt(3 * 3 * 2)  # LoRA's Kaiming-uniform bound
    assert not np.allclose(values[0], values[1])  # particles differ through A
    again = Conv2DLowRankEnsemble(6, 3, ensemble_size=PARTICLES, rank=4, seed=3)
    again(np.zeros((PARTICLES, 5, 5, 2), np.float32))
    np.testing.assert_array_equal(numpy(again.input_factor), values)  # the seed fixes A


# -- conversion ------------------------------------------------------------------


def _bn_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="bn_model")
    # Moving statistics away from (0, 1), so training-mode BN would show.
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype(np.float32))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype(np.float32))
    return model


def _mlp(name="mlp"):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def _check_reproduces(original, converted, inputs, tolerance=1e-6):
    # Eager calls in inference mode: no predict() tracing for a one-off batch.
    expected = original(inputs, training=False)
    members = r1.member_outputs(converted)(inputs, training=False)
    for k in range(PARTICLES):
        assert _max_error(members[:, k], expected) < tolerance
    assert _max_error(converted(inputs, training=False), expected) < tolerance


@pytest.mark.parametrize("builder", [lambda: small_cnn((12, 12, 1), 10, padding="same"), _bn_model])
def test_fresh_conversion_reproduces_original(builder):
    original = builder()
    converted = to_bella(original, num_particles=PARTICLES, rank=2)
    inputs = np.random.default_rng(0).normal(size=(4, *original.input_shape[1:])).astype(np.float32)
    _check_reproduces(original, converted, inputs)
    kernel_layers = [l for l in original.layers if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))]
    assert len(low_rank_layers(converted)) == len(kernel_layers)
    assert {id(v) for v in converted.trainable_weights} == {id(v) for v in particle_variables(converted)}


def test_keras_application_from_weights_file(tmp_path):
    """A keras.applications network (weights=None, no download) saved to .weights.h5 and loaded back."""
    application = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)
    path = str(tmp_path / "mobilenet.weights.h5")
    application.save_weights(path)
    loaded = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)
    loaded.load_weights(path)
    rank = 4
    converted = to_bella(loaded, num_particles=PARTICLES, rank=rank)
    kernel_layers = [l for l in loaded.layers if type(l) in (keras.layers.Conv2D, keras.layers.Dense)]
    assert sorted(l.name for l in low_rank_layers(converted)) == sorted(l.name for l in kernel_layers)
    inputs = np.random.default_rng(0).uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
    # Equal to the network the weights came from, so they did come from the file.
    _check_reproduces(application, converted, inputs)
    # A: prod(kernel.shape[:-1]) x rank, B: rank x outputs, per converted layer and particle.
    per_particle = sum(int(np.prod(l.kernel.shape[:-1])) * rank + rank * l.kernel.shape[-1] for l in kernel_layers)
    fraction = trainable_fraction(converted, loaded)
    assert fraction.parameters_per_particle == per_particle
    assert fraction.trainable_parameters == PARTICLES * per_particle
    assert fraction.per_particle == pytest.approx(per_particle / loaded.count_params())


def test_training_moves_only_the_perturbations():
    original = _bn_model()
    converted = to_bella(original, num_particles=PARTICLES, rank=2)
    frozen = {id(v): v.numpy().copy() for v in converted.non_trainable_weights}
    low_rank = low_rank_layers(converted)
    assert all(id(layer.kernel) in frozen and id(layer.bias) in frozen for layer in low_rank)
    bn = next(l for l in converted._flatten_layers() if isinstance(l, keras.layers.BatchNormalization))
    assert not bn.trainable and id(bn.moving_mean) in frozen and id(bn.moving_variance) in frozen
    before = [v.numpy().copy() for v in particle_variables(converted)]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=24)
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(PARTICLES))
    converted.fit(x, y, batch_size=8, epochs=2, verbose=0)

    for variable in converted.non_trainable_weights:
        np.testing.assert_array_equal(variable.numpy(), frozen[id(variable)], err_msg=variable.path)
    for variable, value in zip(particle_variables(converted), before):
        assert not np.allclose(variable.numpy(), value), variable.path
    for layer in low_rank:
        output_factor = layer.output_factor.numpy()
        assert np.any(output_factor)
        for i in range(PARTICLES):
            for j in range(i + 1, PARTICLES):
                assert not np.allclose(output_factor[i], output_factor[j])  # particles differ
    # Frozen weights, trained perturbations: predictions now differ from the original.
    assert _max_error(converted.predict(x[:4], verbose=0), original.predict(x[:4], verbose=0)) > 1e-4


def test_layer_selection_freezes_the_rest():
    original = _mlp()
    converted = r1.convert(original, "bella", ensemble_size=PARTICLES, layers=["head"], rank=3, perturbation_scale=6.0)
    (layer,) = low_rank_layers(converted)
    assert layer.name == "head" and layer.rank == 3 and layer.perturbation_factor == 2.0
    hidden = next(l for l in converted._flatten_layers() if l.name == "hidden")
    assert type(hidden) is keras.layers.Dense and not hidden.trainable
    np.testing.assert_array_equal(hidden.kernel.numpy(), original.get_layer("hidden").kernel.numpy())


def test_prediction_averages_probabilities():
    converted = to_bella(_mlp(), num_particles=PARTICLES, rank=2)
    rng = np.random.default_rng(0)
    for layer in low_rank_layers(converted):
        layer.output_factor.assign(rng.normal(size=layer.output_factor.shape).astype(np.float32))
    x = rng.normal(size=(5, 4)).astype(np.float32)
    members = np.moveaxis(r1.member_outputs(converted).predict(x, verbose=0), 1, 0)  # (PARTICLES, 5, 3)
    prediction = converted.predict(x, verbose=0)
    assert _max_error(prediction, members.mean(axis=0)) < 1e-6
    # Averaging logits would give softmax(mean_k log p_k) instead, which differs here.
    log_mean = np.log(members).mean(axis=0)
    logit_average = np.exp(log_mean) / np.exp(log_mean).sum(axis=-1, keepdims=True)
    assert _max_error(prediction, logit_average) > 1e-3


# -- serialisation -------------------------------------------------------------------


@pytest.mark.backends("tensorflow", "jax", "torch")  # the layers alone: every backend
@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (DenseLowRankEnsemble(5, ensemble_size=PARTICLES, rank=2, perturbation_scale=4.0, activation="relu", seed=1), (4,)),
        (Conv2DLowRankEnsemble(5, (3, 2), ensemble_size=PARTICLES, rank=2, strides=2, padding="same", use_bias=False), (7, 7, 2)),
        (Conv1DLowRankEnsemble(5, 3, ensemble_size=PARTICLES, rank=1, padding="causal"), (8, 2)),
    ],
)
def test_config_round_trip(layer, input_shape):
    inputs = np.random.default_rng(0).normal(size=(PARTICLES * EXAMPLES, *input_shape)).astype(np.float32)
    layer(inputs)
    layer.output_factor.assign(np.random.default_rng(1).normal(size=layer.output_factor.shape).astype(np.float32))
    config = layer.get_config()
    clone = type(layer).from_config(config)
    clone(inputs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    assert _max_error(clone(inputs), layer(inputs)) == 0.0


def test_keras_file_round_trip(tmp_path):
    converted = to_bella(_bn_model(), num_particles=PARTICLES, rank=2)
    rng = np.random.default_rng(0)
    for layer in low_rank_layers(converted):
        layer.output_factor.assign(rng.normal(size=layer.output_factor.shape).astype(np.float32))
    path = str(tmp_path / "bella.keras")
    converted.save(path)
    loaded = keras.saving.load_model(path)
    x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
    assert _max_error(loaded.predict(x, verbose=0), converted.predict(x, verbose=0)) == 0.0
    assert len(loaded.trainable_weights) == len(converted.trainable_weights)
    assert [type(l).__name__ for l in low_rank_layers(loaded)] == [type(l).__name__ for l in low_rank_layers(converted)]


# -- parameter counts and arguments ----------------------------------------------------


def test_trainable_fraction_hand_count():
    base = _mlp()
    assert base.count_params() == 4 * 8 + 8 + 8 * 3 + 3  # 67
    fraction = trainable_fraction(to_bella(base, num_particles=PARTICLES, rank=2), base)
    per_particle = (4 * 2 + 2 * 8) + (8 * 2 + 2 * 3)  # A and B of both layers: 46
    assert fraction.parameters_per_particle == per_particle
    assert fraction.trainable_parameters == PARTICLES * per_particle
    assert fraction.base_parameters == 67
    assert fraction.per_particle == pytest.approx(46 / 67)
    assert fraction.total == pytest.approx(138 / 67)
    assert "per particle: 46" in str(fraction)


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: DenseLowRankEnsemble(4, rank=0), "rank"),
        (lambda: DenseLowRankEnsemble(4, ensemble_size=0), "ensemble_size"),
        (lambda: Conv2DLowRankEnsemble(4, 3, rank=1.5), "rank"),
        (lambda: DenseLowRankEnsemble(4, perturbation_scale=-1.0), "perturbation_scale"),
        (lambda: DenseLowRankEnsemble(4, seed="a"), "seed"),
        (lambda: Conv2DLowRankEnsemble(4, 3, padding="full"), "padding"),
        (lambda: to_bella(_mlp(), rank=0), "rank"),
        (lambda: to_bella(_mlp(), num_particles=0), "num_particles"),
        (lambda: r1.convert(_mlp(), "bella", ensemble_size=0), "ensemble_size"),
        (lambda: r1.convert(_mlp(), "bella", rank=0), "rank"),
        (lambda: to_bella(_mlp(), layers=["no_such_layer"]), "layers"),
        (lambda: to_bella(_bn_model(), layers=[keras.layers.BatchNormalization]), "layers"),
        (lambda: r1.convert(_mlp(), "bella", alpha_initializer="ones"), "alpha_initializer"),
    ],
)
def test_bad_arguments(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


@pytest.mark.backends("tensorflow", "jax", "torch")  # the layers alone: every backend
def test_fewer_rows_than_particles_go_to_the_first_particles():
    # Row i belongs to particle floor(i K / R): 2 rows, 3 particles -> particles 0 and 1.
    layer = DenseLowRankEnsemble(4, ensemble_size=PARTICLES, use_bias=False)
    layer.build((None, 2))
    rng = np.random.default_rng(0)
    layer.output_factor.assign(rng.normal(size=layer.output_factor.shape).astype("float32"))
    x = rng.normal(size=(2, 2)).astype("float32")
    kernel, input_factor, output_factor = (numpy(v) for v in (layer.kernel, layer.input_factor, layer.output_factor))
    kernels = [kernel + input_factor[k] @ output_factor[k] for k in range(2)]
    expected = np.stack([x[0] @ kernels[0], x[1] @ kernels[1]])
    np.testing.assert_allclose(numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)
