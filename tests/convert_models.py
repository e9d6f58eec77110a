"""Model builders, inputs and weight helpers for tests/test_convert.py.

Four originals cover what `rank1_keras.convert` must handle: a Sequential
MLP (with a Dropout layer), a functional CNN with a residual Add and
BatchNormalization, a masked LSTM on zero-padded variable-length sequences
(final state or `return_sequences`), and Keras' ResNet-50.
"""

import keras
import numpy as np

import rank1_keras as r1
from rank1_keras.layers.dropout import MCDropout

MODEL_NAMES = ("mlp", "cnn", "lstm", "lstm_sequences", "resnet50")
LSTM_STEPS, LSTM_FEATURES = 6, 3
LSTM_LENGTHS = (6, 3)  # valid steps per example; the tails are zero padding
RESNET_SHAPE = (64, 64, 3)


def build_mlp():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu", name="hidden_a"),
            keras.layers.Dropout(0.25, name="drop"),
            keras.layers.Dense(8, activation="tanh", name="hidden_b"),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ],
        name="mlp",
    )


def build_cnn():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    h = keras.layers.BatchNormalization(name="bn_a")(h)
    h = keras.layers.Activation("relu", name="relu_a")(h)
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv_b")(h)
    y = keras.layers.BatchNormalization(name="bn_b")(y)
    h = keras.layers.Add(name="residual")([h, y])
    h = keras.layers.Activation("relu", name="relu_b")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    h = keras.layers.Dropout(0.2, name="drop")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="cnn")


def build_lstm(return_sequences=False):
    inputs = keras.Input((LSTM_STEPS, LSTM_FEATURES))
    h = keras.layers.Masking(0.0, name="mask")(inputs)
    h = keras.layers.LSTM(5, return_sequences=return_sequences, name="lstm")(h)
    h = keras.layers.Dense(4, activation="relu", name="hidden")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="lstm_sequences" if return_sequences else "lstm")


def build_resnet50():
    return keras.applications.ResNet50(weights=None, input_shape=RESNET_SHAPE, classes=10)


BUILDERS = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "lstm": build_lstm,
    "lstm_sequences": lambda: build_lstm(return_sequences=True),
    "resnet50": build_resnet50,
}


def inputs_for(name, batch_size=2, seed=0):
    """A small float32 batch for model `name` (masked LSTMs: zero-padded tails)."""
    rng = np.random.default_rng(seed)
    if name == "mlp":
        return rng.normal(size=(batch_size, 6)).astype("float32")
    if name == "cnn":
        return rng.normal(size=(batch_size, 8, 8, 3)).astype("float32")
    if name.startswith("lstm"):
        x = rng.normal(size=(batch_size, LSTM_STEPS, LSTM_FEATURES)).astype("float32")
        for i in range(batch_size):
            x[i, LSTM_LENGTHS[i % len(LSTM_LENGTHS)]:] = 0.0
        return x
    if name == "resnet50":
        # Examples of different brightness, so that rows mixed up between
        # examples would show in the outputs.
        scales = 1.0 + 2.0 * np.arange(batch_size).reshape(-1, 1, 1, 1)
        return (scales * rng.uniform(0.0, 1.0, size=(batch_size,) + RESNET_SHAPE)).astype("float32")
    raise KeyError(name)


def perturb_original(model, seed=0):
    """Moves biases and batch-norm parameters/statistics off their initial values.

    Nonzero moving means, non-unit moving variances, gammas away from one and
    nonzero betas and biases, so that a converted layer that dropped or
    mis-copied any of them shows up in the outputs.
    """
    rng = np.random.default_rng(seed)

    def assign(variable, value):
        variable.assign(np.asarray(value, dtype=variable.dtype))

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            assign(layer.moving_mean, rng.normal(scale=0.1, size=shape))
            assign(layer.moving_variance, rng.uniform(0.6, 1.6, size=shape))
            assign(layer.gamma, rng.uniform(0.6, 1.2, size=shape))
            assign(layer.beta, rng.normal(scale=0.1, size=shape))
        elif isinstance(layer, keras.layers.LSTM):
            # Kernels drawn here, not by Keras' initializers, whose draws differ per backend: the
            # same LSTM on every backend (its glorot-uniform and orthogonal initial distributions).
            cell = layer.cell
            fan_in, fan_out = cell.kernel.shape
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            assign(cell.kernel, rng.uniform(-limit, limit, size=cell.kernel.shape))
            q, r = np.linalg.qr(rng.normal(size=cell.recurrent_kernel.shape[::-1]))
            assign(cell.recurrent_kernel, (q * np.sign(np.diag(r))).T)
            assign(cell.bias, cell.bias.numpy() + rng.normal(scale=0.3, size=cell.bias.shape))
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            assign(layer.bias, rng.normal(scale=0.1, size=layer.bias.shape))
    return model


def build(name, seed=0):
    keras.utils.set_random_seed(1000 + seed)
    return perturb_original(BUILDERS[name](), seed)


def all_layers(model):
    """Every layer of `model`, descending into nested models."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def mc_dropout_layers(model):
    return [layer for layer in all_layers(model) if isinstance(layer, MCDropout)]


def deactivate_mc_dropout(model):
    """Turns every MCDropout of `model` into plain (inference-off) dropout."""
    layers = mc_dropout_layers(model)
    for layer in layers:
        layer.active = False
    return layers


def unit_factor_options():
    """rank1 options whose posterior means are one and are used at inference."""

    def normal_at_one():
        return r1.initializers.TrainableNormal(mean_initializer="ones")

    return dict(
        alpha_initializer=normal_at_one(),
        gamma_initializer=normal_at_one(),
        recurrent_alpha_initializer=normal_at_one(),
        recurrent_gamma_initializer=normal_at_one(),
        inference="mean",
    )


def has_dropout(model):
    return any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)


def convert_at_one(original, method, ensemble_size=3, **kwargs):
    """Converts `original` so that the result should reproduce it at inference.

    batchensemble: factors "ones" (asked for: the default is random signs).
    rank1: posterior means one, `inference="mean"`, a train_size. dropout: the MCDropout layers switched off afterwards;
    models without Dropout layers get MCDropout inserted (`dropout_rate`) so
    the switch has something to act on.
    """
    if method == "rank1":
        kwargs = {**unit_factor_options(), "train_size": 1000, **kwargs}
    if method in ("batchensemble", "lpbnn"):
        kwargs = {**{f"{side}_initializer": "ones" for side in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")}, **kwargs}
    if method == "dropout" and not has_dropout(original):
        kwargs.setdefault("dropout_rate", 0.3)
    converted = r1.convert(original, method, ensemble_size=ensemble_size, **kwargs)
    if method == "dropout":
        assert deactivate_mc_dropout(converted), "the dropout conversion holds no MCDropout layer"
    return converted


def perturb_converted(model, seed=0):
    """Moves every weight of a converted model (factors, biases, kernels, BN stats)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = variable.numpy()
        if not np.issubdtype(value.dtype, np.floating):
            continue
        if variable.trainable:
            # 5% of the weight's own spread (kernels stay well-scaled, so a deep
            # network does not saturate), or 0.05 for constant tables (factors at one).
            spread = float(value.std()) or 1.0
            value = value + rng.normal(scale=0.05 * spread, size=value.shape)
        else:  # moving statistics (variances stay positive), kl_weight
            value = value * rng.uniform(0.8, 1.2, size=value.shape)
        variable.assign(value.astype(variable.dtype))
    return model


# -- ResNet-50 SavedModel round trips, run in a background process ----------------
# Exporting a converted ResNet-50 spends about a minute tracing Python on one
# core; test_convert.py starts this at the beginning of the module so it runs
# beside the other tests on the second core, and checks the results at the end.

RESNET_EXPORT_METHODS = ("batchensemble", "rank1", "dropout")
RESNET_ENSEMBLE_SIZE = 4


def resnet_saved_model_round_trips(out_dir):
    """Exports each converted ResNet-50 and serves it back; saves both outputs to out_dir."""
    import os
    import shutil

    import tensorflow as tf

    original = build("resnet50")
    x = inputs_for("resnet50")
    reference = original(x, training=False).numpy()
    for method in RESNET_EXPORT_METHODS:
        converted = convert_at_one(original, method, RESNET_ENSEMBLE_SIZE)
        perturb_converted(converted, seed=5)
        expected = converted(x, training=False).numpy()
        path = os.path.join(out_dir, f"saved_model_{method}")
        converted.export(path, format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(path)
        served = loaded.serve(tf.constant(x)).numpy()
        np.savez(
            os.path.join(out_dir, f"{method}.npz"),
            original=reference,
            expected=expected,
            served=served,
            mc_dropout=len(mc_dropout_layers(converted)),
        )
        del loaded
        shutil.rmtree(path)
        print(f"exported {method}", flush=True)


if __name__ == "__main__":
    import sys

    resnet_saved_model_round_trips(sys.argv[1])
