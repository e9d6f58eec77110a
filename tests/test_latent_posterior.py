"""LP-BNN layers against a float64 NumPy reference, with replayed latent samples.

The VAE of each encoded factor table is recomputed in NumPy:

    h = relu(alpha W_e + b_e), mu = h W_mu + b_mu, log_var = h W_v + b_v,
    z = mu + exp(log_var / 2) * eps,  alpha_hat = z W_d + b_d,

and the layer's output is the BatchEnsemble reference of
tests/test_numpy_reference.py with alpha_hat in place of alpha. The eps a
call uses is replayed from the layer's `factor_seed_generator`: its state is
copied before the call into a fresh `keras.random.SeedGenerator`, from which
the encoded tables (`latent_factor_names` order) draw
`keras.random.normal((K, latent_dim))` in turn, the i-th with seed
state + [0, i]. The replay is exact on every backend; on TensorFlow that draw
is `tf.random.stateless_normal((K, latent_dim), seed=state + [0, i])`.
"""

import contextlib
import functools
import json

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.layers import (
    Conv1DLatentPosterior,
    Conv2DLatentPosterior,
    DenseLatentPosterior,
    LSTMCellLatentPosterior,
)
from rank1_keras.layers.latent_posterior import (
    kl_to_standard_normal,
    reconstruction_error,
)
from rank1_keras.models.ensemble import TileEnsemble
from tests.backend_utils import gradients, numpy
from tests.test_numpy_reference import (
    K,
    _conv_rank1_reference,
    _dense_rank1_reference,
    _lstm_reference,
)

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

B = 2  # examples per member
LATENT_DIM = 5
RTOL = 1e-5


def _point_factors(names=("alpha", "gamma")):
    # Members differ from the start, so a member mix-up shows in the outputs.
    arguments = {f"{name}_initializer": keras.initializers.RandomNormal(1.0, 0.5, seed=i) for i, name in enumerate(names)}
    arguments["bias_initializer"] = keras.initializers.RandomNormal(stddev=0.5, seed=17)
    return arguments


LSTM_FACTORS = ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")

# kind -> (layer factory, input shape without batch, wrap in keras.layers.RNN?)
KINDS = {
    "dense": (lambda **kw: DenseLatentPosterior(4, **{**_point_factors(), **kw}), (3,), False),
    "conv1d": (lambda **kw: Conv1DLatentPosterior(3, 3, padding="causal", **{**_point_factors(), **kw}), (7, 2), False),
    "conv2d": (lambda **kw: Conv2DLatentPosterior(3, 3, padding="same", strides=2, **{**_point_factors(), **kw}), (5, 6, 2), False),
    "lstm": (lambda **kw: LSTMCellLatentPosterior(3, **{**_point_factors(LSTM_FACTORS), **kw}), (4, 2), True),
}


def _perturb(variables, rng, scale):
    """Moves variables off their initial values (non-zero biases, so a missing bias shows)."""
    for variable in variables:
        variable.assign(numpy(variable) + rng.normal(scale=scale, size=variable.shape).astype(np.float32))


def _make(kind, **kwargs):
    """A built layer of `kind` with moved-off-initial VAE weights, its caller and an input."""
    factory, input_shape, recurrent = KINDS[kind]
    kwargs = {"ensemble_size": K, "latent_dim": LATENT_DIM, "seed": 3, **kwargs}
    layer = factory(**kwargs)
    caller = keras.layers.RNN(layer, return_sequences=True) if recurrent else layer
    x = np.random.default_rng(0).standard_normal((K * B,) + input_shape).astype(np.float32)
    caller.build(x.shape)
    _perturb(layer.latent_variables, np.random.default_rng(1), 0.3)
    return layer, caller, x


def _seed_state(layer):
    return tuple(int(value) for value in numpy(layer.factor_seed_generator.state))


def _replay_noise(layer, jit_compile=False):
    """{factor name: eps (K, latent_dim)} the next sampled call of `layer` will use.

    Draws from a copy of the layer's seed generator as it is now, so it must
    run before the call. `jit_compile` (TensorFlow only) draws under XLA, for
    a call run under XLA (stateless samplers may pick another algorithm there).
    """
    replay = keras.random.SeedGenerator(0)
    replay.state.assign(numpy(layer.factor_seed_generator.state))

    def draw():
        shape = (layer.ensemble_size, layer.latent_dim)
        return [keras.random.normal(shape, dtype="float32", seed=replay) for _ in layer.latent_factor_names]

    if jit_compile:
        import tensorflow as tf

        draw = tf.function(draw, jit_compile=True, autograph=False)
    return {name: numpy(eps).astype(np.float64) for name, eps in zip(layer.latent_factor_names, draw())}


def _numpy_vae(layer, name, noise=None):
    """(alpha_hat, mse, kl) of the VAE of table `name`; z = mu when noise is None."""
    p = {role: numpy(getattr(layer.latent_posteriors[name], role)).astype(np.float64) for role in (
        "encoder_kernel", "encoder_bias", "mean_kernel", "mean_bias",
        "log_variance_kernel", "log_variance_bias", "decoder_kernel", "decoder_bias",
    )}
    alpha = numpy(layer.member_factors[name].variable).astype(np.float64)
    hidden = np.maximum(alpha @ p["encoder_kernel"] + p["encoder_bias"], 0.0)
    mean = hidden @ p["mean_kernel"] + p["mean_bias"]
    log_variance = hidden @ p["log_variance_kernel"] + p["log_variance_bias"]
    latent = mean if noise is None else mean + np.exp(0.5 * log_variance) * noise
    decoded = latent @ p["decoder_kernel"] + p["decoder_bias"]
    mse = np.mean((decoded - alpha) ** 2)
    kl = np.mean(-0.5 * np.sum(1.0 + log_variance - mean**2 - np.exp(log_variance), axis=-1))
    return decoded, mse, kl


def _reference_factors(layer, noise):
    """Per-row factors (K, B, dim) for the NumPy references; noise None -> z = mu."""
    factors = {}
    for name, factor in layer.member_factors.items():
        table = numpy(factor.variable).astype(np.float64)
        if name in layer.latent_factor_names:
            table = _numpy_vae(layer, name, None if noise is None else noise[name])[0]
        factors[name] = np.broadcast_to(table[:, None, :], (K, B, table.shape[-1]))
    return factors


def _reference_output(kind, layer, x, noise):
    factors = _reference_factors(layer, noise)
    if kind == "dense":
        return _dense_rank1_reference(layer, x, factors)
    if kind == "lstm":
        return _lstm_reference(layer, x, factors, return_sequences=True)
    return _conv_rank1_reference(layer, x, factors)


def _reference_loss(layer, noise):
    terms = []
    for name in layer.latent_factor_names:
        _, mse, kl = _numpy_vae(layer, name, None if noise is None else noise[name])
        terms.append(mse + kl)
    return layer.latent_loss_weight * np.mean(terms)


def _assert_close(got, expected, rtol=RTOL):
    got = numpy(got).astype(np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * max(np.abs(expected).max(), 1e-12))


def _total(losses):
    """The sum of a list of scalar losses, as a float."""
    return float(numpy(functools.reduce(keras.ops.add, losses)))


def _float64():
    """A context in which float64 inputs are computed in float64 (JAX truncates them to float32 otherwise)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------
# Forward pass and loss against NumPy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sampled_forward_and_loss_match_numpy(kind):
    layer, caller, x = _make(kind, latent_loss_weight=0.7)
    assert _seed_state(layer) == (3, 0)
    noise = _replay_noise(layer)
    y = caller(x, training=True)
    _assert_close(y, _reference_output(kind, layer, x, noise))
    # The replayed sample is far from the mean: the reference with z = mu differs.
    assert np.abs(_reference_output(kind, layer, x, None) - numpy(y)).max() > 1e-2
    # One latent draw per encoded table (two for the LSTM cell) per call / sequence.
    assert _seed_state(layer) == (3, len(layer.latent_factor_names))
    (loss,) = layer.losses
    np.testing.assert_allclose(float(numpy(loss)), _reference_loss(layer, noise), rtol=RTOL)


@pytest.mark.backends("tensorflow")
def test_tensorflow_latent_noise_is_stateless_normal_of_the_seed_state():
    """On TensorFlow table i draws tf.random.stateless_normal((K, latent_dim), seed=state + [0, i])."""
    import tensorflow as tf

    layer, caller, x = _make("lstm")
    state = np.array(_seed_state(layer), np.int64)
    noise = {
        name: tf.random.stateless_normal((K, LATENT_DIM), seed=tf.constant(state + [0, i], tf.int32)).numpy().astype(np.float64)
        for i, name in enumerate(layer.latent_factor_names)
    }
    for name, eps in _replay_noise(layer).items():
        np.testing.assert_array_equal(eps, noise[name])
    _assert_close(caller(x, training=True), _reference_output("lstm", layer, x, noise))


def test_dense_additive_forward_matches_numpy():
    layer, _, x = _make("dense", use_additive_perturbation=True, activation="tanh")
    noise = _replay_noise(layer)
    factors = _reference_factors(layer, noise)
    _assert_close(layer(x, training=True), _dense_rank1_reference(layer, x, factors, np.tanh))


def test_conv2d_channels_first_matches_numpy():
    layer = Conv2DLatentPosterior(
        4, 3, ensemble_size=K, latent_dim=LATENT_DIM, seed=21, padding="same", data_format="channels_first",
        **_point_factors(),
    )
    x = np.random.default_rng(9).standard_normal((K * B, 3, 6, 5)).astype(np.float32)
    layer.build(x.shape)
    assert tuple(layer.member_factors["alpha"].variable.shape) == (K, 3)
    if keras.backend.backend() == "tensorflow":
        # TF's CPU Conv2D has no NCHW kernel; XLA (jit_compile) does, as in test_numpy_reference.
        import tensorflow as tf

        noise = _replay_noise(layer, jit_compile=True)
        run = tf.function(lambda inputs: layer(inputs, training=True), jit_compile=True, autograph=False)
        y = run(tf.constant(x))
    else:
        noise = _replay_noise(layer)
        y = layer(x, training=True)
    expected = _conv_rank1_reference(layer, np.transpose(x, (0, 2, 3, 1)), _reference_factors(layer, noise))
    _assert_close(y, np.transpose(expected, (0, 3, 1, 2)))


def test_loss_closed_forms():
    rng = np.random.default_rng(2)
    factor, decoded = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    mean, log_variance = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    with _float64():
        mse = float(reconstruction_error(factor, decoded))
        kl = float(kl_to_standard_normal(mean, log_variance))
        no_kl = float(kl_to_standard_normal(np.zeros((2, 3)), np.zeros((2, 3))))
        half = float(kl_to_standard_normal(np.array([[1.0]]), np.array([[0.0]])))
    np.testing.assert_allclose(mse, np.mean((decoded - factor) ** 2), rtol=1e-12)
    # KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - log v) / 2 per dimension, summed, averaged over members.
    variance = np.exp(log_variance)
    expected_kl = np.mean(np.sum(0.5 * (variance + mean**2 - 1.0 - log_variance), axis=-1))
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-12)
    # Hand values: N(0, 1) has no KL; one member N(1, 1) in one dimension has KL 1/2.
    assert no_kl == 0.0
    np.testing.assert_allclose(half, 0.5)


def test_latent_loss_weight_scales_the_loss():
    layer, _, x = _make("conv2d", latent_loss_weight=1.0)
    twice = Conv2DLatentPosterior.from_config({**layer.get_config(), "latent_loss_weight": 2.5})
    twice.build(x.shape)
    twice.set_weights(layer.get_weights())
    losses = []
    for each in (layer, twice):
        each(x, training=True)
        losses.append(float(numpy(each.losses[0])))
    np.testing.assert_allclose(losses[1], 2.5 * losses[0], rtol=1e-6)
    zero = Conv2DLatentPosterior.from_config({**layer.get_config(), "latent_loss_weight": 0.0})
    zero(x, training=True)
    assert float(numpy(zero.losses[0])) == 0.0


# ---------------------------------------------------------------------------
# The latent sample changes every layer's output (the official code's conv pitfall)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_output_depends_on_the_latent_sample(kind):
    layer, caller, x = _make(kind)  # inference="mean" by default
    first = numpy(caller(x, training=True))
    second = numpy(caller(x, training=True))
    assert np.abs(first - second).max() > 1e-3
    other_seed, other_caller, _ = _make(kind, seed=4)
    other_seed.set_weights(layer.get_weights())  # same weights, seed state set back
    other_seed.factor_seed_generator.state.assign(np.array([4, 0]))
    assert np.abs(numpy(other_caller(x, training=True)) - first).max() > 1e-3
    # Inference with "mean": deterministic and the decode of mu.
    state = _seed_state(layer)
    mean_output = numpy(caller(x, training=False))
    np.testing.assert_array_equal(mean_output, numpy(caller(x, training=False)))
    _assert_close(mean_output, _reference_output(kind, layer, x, None))
    if kind != "lstm":
        # No seed consumed. (The LSTM cell's per-sequence hook does not know
        # `training`, so it draws a sample anyway and `call` uses the mean.)
        assert _seed_state(layer) == state


def test_sample_inference_draws_at_test_time():
    layer, _, x = _make("conv2d", inference="sample")
    noise = _replay_noise(layer)
    first = numpy(layer(x, training=False))
    _assert_close(first, _reference_output("conv2d", layer, x, noise))
    assert np.abs(numpy(layer(x, training=False)) - first).max() > 1e-3


def test_compiled_predict_draws_a_new_latent_sample_each_call():
    """Under the backend's compiled predict (jit on JAX) the layer's seed state advances:
    an unseeded or module-level draw would repeat its noise there."""
    inputs = keras.Input((3,))
    layer = DenseLatentPosterior(4, ensemble_size=K, latent_dim=LATENT_DIM, inference="sample", seed=5, **_point_factors())
    model = keras.Model(inputs, layer(inputs))
    _perturb(layer.latent_variables, np.random.default_rng(1), 0.3)
    x = np.random.default_rng(0).standard_normal((K * B, 3)).astype(np.float32)
    assert _seed_state(layer) == (5, 0)
    noise = _replay_noise(layer)
    first = model.predict(x, batch_size=K * B, verbose=0)
    _assert_close(first, _reference_output("dense", layer, x, noise))
    second = model.predict(x, batch_size=K * B, verbose=0)
    assert np.abs(second - first).max() > 1e-3
    assert _seed_state(layer) == (5, 2)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_reach_every_trainable_variable(kind):
    layer, caller, x = _make(kind)
    weights = np.random.default_rng(3).normal(size=caller.compute_output_shape(x.shape)).astype(np.float32)
    # kernel (and recurrent kernel), alpha, gamma (recurrent ones), bias, 8 per VAE.
    expected_count = 1 + (kind == "lstm") + len(layer.member_factors) + 8 * len(layer.latent_factor_names)
    assert len(layer.trainable_variables) == expected_count
    assert {id(v) for v in layer.latent_variables} <= {id(v) for v in layer.trainable_variables}

    def output():
        return keras.ops.sum(keras.ops.multiply(caller(x, training=True), weights))

    def vae_loss():
        caller(x, training=True)
        return functools.reduce(keras.ops.add, layer.losses)

    def total():
        weighted_sum = output()
        return weighted_sum + functools.reduce(keras.ops.add, layer.losses)

    for loss_fn, label in ((output, "output"), (total, "output + loss")):
        for variable, gradient in zip(layer.trainable_variables, gradients(loss_fn, layer.trainable_variables)):
            assert gradient is not None, (label, variable.path)
            assert np.abs(numpy(gradient)).max() > 0, (label, variable.path)
    # The MSE reaches the factor table directly too (not only through the decoder).
    alpha = layer.member_factors["alpha"].variable
    (alpha_gradient,) = gradients(vae_loss, [alpha])
    assert np.abs(numpy(alpha_gradient)).max() > 0


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_get_config_from_config_round_trip(kind):
    layer, _, _ = _make(kind, latent_dim=6, latent_loss_weight=0.25, inference="sample", alpha_initializer="random_sign")
    config = layer.get_config()
    assert (config["latent_dim"], config["latent_loss_weight"], config["inference"]) == (6, 0.25, "sample")
    clone = type(layer).from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert (clone.latent_dim, clone.latent_loss_weight, clone.inference) == (6, 0.25, "sample")


def test_keras_file_round_trip_replays_the_samples(tmp_path):
    inputs = keras.Input((5, 5, 2))
    h = TileEnsemble(K)(inputs)
    h = Conv2DLatentPosterior(3, 3, ensemble_size=K, latent_dim=4, inference="sample", seed=1)(h)  # (3, 3, 3)
    h = keras.layers.Reshape((9, 3))(h)
    h = Conv1DLatentPosterior(4, 2, ensemble_size=K, latent_dim=4, seed=2)(h)
    h = keras.layers.RNN(LSTMCellLatentPosterior(3, ensemble_size=K, latent_dim=4, inference="sample", seed=3))(h)
    outputs = DenseLatentPosterior(2, ensemble_size=K, latent_dim=4, latent_loss_weight=0.5, seed=4)(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(4)
    _perturb(model.trainable_variables, rng, 0.2)
    x = rng.normal(size=(2, 5, 5, 2)).astype(np.float32)
    path = str(tmp_path / "lpbnn.keras")
    model.save(path)  # before the call: the saved seed states give the same draws
    expected = numpy(model(x, training=False))
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(restored(x, training=False)), expected, rtol=1e-6, atol=1e-6)
    assert [type(layer).__name__ for layer in restored.layers] == [type(layer).__name__ for layer in model.layers]
    dense = restored.layers[-1]
    assert (dense.latent_dim, dense.latent_loss_weight) == (4, 0.5)
    assert len(restored.losses) == 4 and all(np.isfinite(float(numpy(loss))) for loss in restored.losses)


# ---------------------------------------------------------------------------
# convert(model, "lpbnn")
# ---------------------------------------------------------------------------


def _small_cnn():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs)


def _core_layers(converted):
    core = next(layer for layer in converted.layers if layer.name.endswith("_members"))
    return {layer.name: layer for layer in core.layers}


def test_convert_averages_the_latent_loss_over_layers():
    original = _small_cnn()
    converted = r1.convert(
        original, "lpbnn", ensemble_size=K, latent_dim=6, latent_loss_weight=0.6, inference="mean", output_type="regression"
    )
    layers = _core_layers(converted)
    assert type(layers["conv"]) is Conv2DLatentPosterior and type(layers["head"]) is DenseLatentPosterior
    assert type(layers["bn"]).__name__ == "EnsembleBatchNormalization"
    for name in ("conv", "head"):
        assert layers[name].latent_loss_weight == pytest.approx(0.3)
        assert (layers[name].latent_dim, layers[name].inference) == (6, "mean")
    np.testing.assert_array_equal(numpy(layers["conv"].kernel), numpy(original.get_layer("conv").kernel))
    # The model's losses are the layers' VAE terms: 0.6 x their mean (z = mu at inference).
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 1)).astype(np.float32)
    converted(x, training=False)
    assert len(converted.losses) == 2
    expected = 0.6 * np.mean([_numpy_vae(layers[name], "alpha")[1] + _numpy_vae(layers[name], "alpha")[2] for name in ("conv", "head")])
    np.testing.assert_allclose(_total(converted.losses), expected, rtol=1e-5)
    # An LSTM cell counts as one layer.
    inputs = keras.Input((4, 2))
    recurrent = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LSTM(3, name="lstm")(inputs)))
    layers = _core_layers(r1.convert(recurrent, "lpbnn", ensemble_size=K, output_type="regression"))
    assert type(layers["lstm"].cell) is LSTMCellLatentPosterior
    assert layers["lstm"].cell.latent_loss_weight == pytest.approx(0.5)
    # Other methods are unchanged: a batchensemble layer has no latent weight.
    assert not hasattr(_core_layers(r1.convert(original, "batchensemble", ensemble_size=K))["head"], "latent_loss_weight")


def test_converted_cnn_trains_and_its_loss_includes_the_vae_term():
    converted = r1.convert(_small_cnn(), "lpbnn", ensemble_size=4, latent_dim=8)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    converted.compile(keras.optimizers.Adam(5e-3), r1.AverageNLL(4))
    history = converted.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][1] < history.history["loss"][0]
    converted(x[:8], training=True)
    assert len(converted.losses) == 2 and all(float(numpy(loss)) > 0 for loss in converted.losses)
    # The training loss is the NLL plus those terms.
    members = converted(x[:8], training=True)
    nll = float(numpy(r1.AverageNLL(4)(y[:8], members)))
    total = float(numpy(converted.compute_loss(x[:8], y[:8], members)))
    np.testing.assert_allclose(total, nll + _total(converted.losses), rtol=1e-5)


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"latent_loss_weight": -0.1}, "latent_loss_weight"),
        ({"latent_loss_weight": float("nan")}, "latent_loss_weight"),
        ({"inference": "mode"}, "inference"),
        ({"sample_per_example": True}, "sample_per_example"),
        ({"alpha_initializer": "trainable_normal"}, "alpha_initializer"),
        ({"gamma_initializer": "trainable_cauchy"}, "gamma_initializer"),
    ],
)
@pytest.mark.parametrize("layer_class", [DenseLatentPosterior, Conv2DLatentPosterior, LSTMCellLatentPosterior])
def test_bad_arguments_name_the_argument(layer_class, kwargs, argument):
    positional = (4, 3) if layer_class is Conv2DLatentPosterior else (4,)
    with pytest.raises(ValueError, match=argument):
        layer_class(*positional, **kwargs)


def test_convert_rejects_bad_lpbnn_options():
    with pytest.raises(ValueError, match="latent_dim"):
        r1.convert(_small_cnn(), "lpbnn", latent_dim=0)
    with pytest.raises(ValueError, match="recurrent_alpha_initializer"):
        LSTMCellLatentPosterior(3, recurrent_alpha_initializer="trainable_normal")
