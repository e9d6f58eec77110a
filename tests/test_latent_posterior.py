"""LP-BNN layers against a float64 NumPy reference, with replayed latent samples.

The VAE of each encoded factor table is recomputed in NumPy:

    h = relu(alpha W_e + b_e), mu = h W_mu + b_mu, log_var = h W_v + b_v,
    z = mu + exp(log_var / 2) * eps,  alpha_hat = z W_d + b_d,

and the layer's output is the BatchEnsemble reference of
tests/test_numpy_reference.py with alpha_hat in place of alpha. The eps a
call uses is replayed from the layer's `factor_seed_generator`: the state is
read before the call, and the i-th encoded table (`latent_factor_names`
order) draws `tf.random.stateless_normal((K, latent_dim), seed=state + [0, i])`.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import rank1_keras as r1
from rank1_keras.ensemble import TileEnsemble
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
from tests.test_numpy_reference import (
    K,
    _conv_rank1_reference,
    _dense_rank1_reference,
    _lstm_reference,
)

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


def _make(kind, **kwargs):
    """A built layer of `kind` with moved-off-initial VAE weights, its caller and an input."""
    factory, input_shape, recurrent = KINDS[kind]
    kwargs = {"ensemble_size": K, "latent_dim": LATENT_DIM, "seed": 3, **kwargs}
    layer = factory(**kwargs)
    caller = keras.layers.RNN(layer, return_sequences=True) if recurrent else layer
    x = np.random.default_rng(0).standard_normal((K * B,) + input_shape).astype(np.float32)
    caller.build(x.shape)
    rng = np.random.default_rng(1)
    for variable in layer.latent_variables:  # non-zero biases, so a missing bias shows
        variable.assign(variable.numpy() + rng.normal(scale=0.3, size=variable.shape).astype(np.float32))
    return layer, caller, x


def _replay_noise(layer, jit_compile=False):
    """{factor name: eps (K, latent_dim)} the next sampled call of `layer` will use."""
    state = layer.factor_seed_generator.state.numpy().astype(np.int64)
    noise = {}
    for i, name in enumerate(layer.latent_factor_names):

        def draw(seed):
            return tf.random.stateless_normal((layer.ensemble_size, layer.latent_dim), seed=seed)

        if jit_compile:
            draw = tf.function(draw, jit_compile=True, autograph=False)
        noise[name] = np.asarray(draw(tf.constant(state + np.array([0, i]), tf.int32)), np.float64)
    return noise


def _numpy_vae(layer, name, noise=None):
    """(alpha_hat, mse, kl) of the VAE of table `name`; z = mu when noise is None."""
    p = {role: np.asarray(getattr(layer.latent_posteriors[name], role).numpy(), np.float64) for role in (
        "encoder_kernel", "encoder_bias", "mean_kernel", "mean_bias",
        "log_variance_kernel", "log_variance_bias", "decoder_kernel", "decoder_bias",
    )}
    alpha = np.asarray(layer.member_factors[name].variable.numpy(), np.float64)
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
        table = np.asarray(factor.variable.numpy(), np.float64)
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
    got = np.asarray(got, np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * max(np.abs(expected).max(), 1e-12))


# ---------------------------------------------------------------------------
# Forward pass and loss against NumPy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sampled_forward_and_loss_match_numpy(kind):
    layer, caller, x = _make(kind, latent_loss_weight=0.7)
    assert tuple(layer.factor_seed_generator.state.numpy()) == (3, 0)
    noise = _replay_noise(layer)
    y = caller(x, training=True)
    _assert_close(y, _reference_output(kind, layer, x, noise))
    # The replayed sample is far from the mean: the reference with z = mu differs.
    assert np.abs(_reference_output(kind, layer, x, None) - np.asarray(y)).max() > 1e-2
    # One latent draw per encoded table (two for the LSTM cell) per call / sequence.
    assert tuple(layer.factor_seed_generator.state.numpy()) == (3, len(layer.latent_factor_names))
    (loss,) = layer.losses
    np.testing.assert_allclose(float(loss), _reference_loss(layer, noise), rtol=RTOL)


def test_dense_additive_forward_matches_numpy():
    layer, _, x = _make("dense", use_additive_perturbation=True, activation="tanh")
    noise = _replay_noise(layer)
    factors = _reference_factors(layer, noise)
    _assert_close(layer(x, training=True), _dense_rank1_reference(layer, x, factors, np.tanh))


def test_conv2d_channels_first_matches_numpy_via_xla():
    """TF's CPU Conv2D has no NCHW kernel; XLA (jit_compile) does, as in test_numpy_reference."""
    layer = Conv2DLatentPosterior(
        4, 3, ensemble_size=K, latent_dim=LATENT_DIM, seed=21, padding="same", data_format="channels_first",
        **_point_factors(),
    )
    x = np.random.default_rng(9).standard_normal((K * B, 3, 6, 5)).astype(np.float32)
    layer.build(x.shape)
    assert tuple(layer.member_factors["alpha"].variable.shape) == (K, 3)
    noise = _replay_noise(layer, jit_compile=True)
    run = tf.function(lambda inputs: layer(inputs, training=True), jit_compile=True, autograph=False)
    y = run(tf.constant(x)).numpy()
    expected = _conv_rank1_reference(layer, np.transpose(x, (0, 2, 3, 1)), _reference_factors(layer, noise))
    _assert_close(y, np.transpose(expected, (0, 3, 1, 2)))


def test_loss_closed_forms():
    rng = np.random.default_rng(2)
    factor, decoded = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    mean, log_variance = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    np.testing.assert_allclose(float(reconstruction_error(factor, decoded)), np.mean((decoded - factor) ** 2), rtol=1e-12)
    # KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - log v) / 2 per dimension, summed, averaged over members.
    variance = np.exp(log_variance)
    expected_kl = np.mean(np.sum(0.5 * (variance + mean**2 - 1.0 - log_variance), axis=-1))
    np.testing.assert_allclose(float(kl_to_standard_normal(mean, log_variance)), expected_kl, rtol=1e-12)
    # Hand values: N(0, 1) has no KL; one member N(1, 1) in one dimension has KL 1/2.
    assert float(kl_to_standard_normal(np.zeros((2, 3)), np.zeros((2, 3)))) == 0.0
    np.testing.assert_allclose(float(kl_to_standard_normal(np.array([[1.0]]), np.array([[0.0]]))), 0.5)


def test_latent_loss_weight_scales_the_loss():
    layer, _, x = _make("conv2d", latent_loss_weight=1.0)
    twice = Conv2DLatentPosterior.from_config({**layer.get_config(), "latent_loss_weight": 2.5})
    twice.build(x.shape)
    twice.set_weights(layer.get_weights())
    losses = []
    for each in (layer, twice):
        each(x, training=True)
        losses.append(float(each.losses[0]))
    np.testing.assert_allclose(losses[1], 2.5 * losses[0], rtol=1e-6)
    zero = Conv2DLatentPosterior.from_config({**layer.get_config(), "latent_loss_weight": 0.0})
    zero(x, training=True)
    assert float(zero.losses[0]) == 0.0


# ---------------------------------------------------------------------------
# The latent sample changes every layer's output (the official code's conv pitfall)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_output_depends_on_the_latent_sample(kind):
    layer, caller, x = _make(kind)  # inference="mean" by default
    first = np.asarray(caller(x, training=True))
    second = np.asarray(caller(x, training=True))
    assert np.abs(first - second).max() > 1e-3
    other_seed, other_caller, _ = _make(kind, seed=4)
    other_seed.set_weights(layer.get_weights())  # same weights, seed state set back
    other_seed.factor_seed_generator.state.assign([4, 0])
    assert np.abs(np.asarray(other_caller(x, training=True)) - first).max() > 1e-3
    # Inference with "mean": deterministic and the decode of mu.
    state = tuple(layer.factor_seed_generator.state.numpy())
    mean_output = np.asarray(caller(x, training=False))
    np.testing.assert_array_equal(mean_output, np.asarray(caller(x, training=False)))
    _assert_close(mean_output, _reference_output(kind, layer, x, None))
    if kind != "lstm":
        # No seed consumed. (The LSTM cell's per-sequence hook does not know
        # `training`, so it draws a sample anyway and `call` uses the mean.)
        assert tuple(layer.factor_seed_generator.state.numpy()) == state


def test_sample_inference_draws_at_test_time():
    layer, _, x = _make("conv2d", inference="sample")
    noise = _replay_noise(layer)
    first = layer(x, training=False)
    _assert_close(first, _reference_output("conv2d", layer, x, noise))
    assert np.abs(np.asarray(layer(x, training=False)) - np.asarray(first)).max() > 1e-3


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
    with tf.GradientTape(persistent=True) as tape:
        output = tf.reduce_sum(caller(x, training=True) * weights)
        vae_loss = tf.add_n(layer.losses)
        total = output + vae_loss
    for source, label in ((output, "output"), (total, "output + loss")):
        gradients = tape.gradient(source, layer.trainable_variables)
        for variable, gradient in zip(layer.trainable_variables, gradients):
            assert gradient is not None, (label, variable.path)
            assert np.abs(np.asarray(gradient)).max() > 0, (label, variable.path)
    # The MSE reaches the factor table directly too (not only through the decoder).
    alpha = layer.member_factors["alpha"].variable
    assert np.abs(np.asarray(tape.gradient(vae_loss, alpha))).max() > 0


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
    for variable in model.trainable_variables:
        variable.assign(variable.numpy() + rng.normal(scale=0.2, size=variable.shape).astype(np.float32))
    x = rng.normal(size=(2, 5, 5, 2)).astype(np.float32)
    path = str(tmp_path / "lpbnn.keras")
    model.save(path)  # before the call: the saved seed states give the same draws
    expected = model(x, training=False).numpy()
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(x, training=False).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert [type(layer).__name__ for layer in restored.layers] == [type(layer).__name__ for layer in model.layers]
    dense = restored.layers[-1]
    assert (dense.latent_dim, dense.latent_loss_weight) == (4, 0.5)
    assert len(restored.losses) == 4 and all(np.isfinite(float(loss)) for loss in restored.losses)


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
    np.testing.assert_array_equal(layers["conv"].kernel.numpy(), original.get_layer("conv").kernel.numpy())
    # The model's losses are the layers' VAE terms: 0.6 x their mean (z = mu at inference).
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 1)).astype(np.float32)
    converted(x, training=False)
    assert len(converted.losses) == 2
    expected = 0.6 * np.mean([_numpy_vae(layers[name], "alpha")[1] + _numpy_vae(layers[name], "alpha")[2] for name in ("conv", "head")])
    np.testing.assert_allclose(float(tf.add_n(converted.losses)), expected, rtol=1e-5)
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
    assert len(converted.losses) == 2 and all(float(loss) > 0 for loss in converted.losses)
    # The training loss is the NLL plus those terms.
    members = converted(x[:8], training=True)
    nll = float(r1.AverageNLL(4)(y[:8], members))
    total = float(converted.compute_loss(x[:8], y[:8], members))
    np.testing.assert_allclose(total, nll + float(tf.add_n(converted.losses)), rtol=1e-5)


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
