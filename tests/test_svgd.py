"""Bella-SVGD's SVGDTrainer (TensorFlow only): one step against the float64 NumPy SVGD, fit, files, strategies.

The update rule itself is tested on every backend in test_svgd_update.py.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import rank1_keras as r1
from rank1_keras.bella import particle_variables, to_bella
from rank1_keras.methods.svgd import flatten_particles
from rank1_keras.tensorflow.training.svgd import SVGDTrainer
from tests import numpy_references

# -- SVGDTrainer -----------------------------------------------------------------------


def _mlp():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    x = keras.layers.Dense(8, activation="relu")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _data(size=48):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(size, 4)).astype(np.float32)
    y = np.argmax(x[:, :3] + 0.5 * x[:, 3:], axis=1)  # learnable labels
    return x, y


def test_one_particle_is_an_error():
    with pytest.raises(ValueError, match="at least 2 particles"):
        SVGDTrainer(to_bella(_mlp(), num_particles=1, rank=2), train_size=10)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: SVGDTrainer(to_bella(_mlp(), num_particles=2), train_size=-1), "train_size"),
        (lambda: SVGDTrainer(to_bella(_mlp(), num_particles=2), 8, member_loss_reduction="max"), "member_loss_reduction"),
    ],
)
def test_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_one_step_equals_numpy_svgd():
    particles = 3
    model = to_bella(_mlp(), num_particles=particles, rank=2, layers=[keras.layers.Dense])
    rng = np.random.default_rng(1)
    for variable in particle_variables(model):  # B away from zero, so every factor has a loss gradient
        variable.assign(rng.normal(scale=0.3, size=variable.shape).astype(np.float32))
    x, y = _data(12)
    train_size, learning_rate, loss = 6, 0.05, r1.AverageNLL(particles)

    variables = particle_variables(model)
    with tf.GradientTape() as tape:
        total_loss = loss(y, model(x, training=True))
    # AverageNLL is (1/n) sum_i L_i: n times its gradient is grad L_i for particle i's slice.
    loss_gradients = flatten_particles([particles * g for g in tape.gradient(total_loss, variables)]).numpy()
    theta = flatten_particles([v.numpy() for v in variables]).numpy()
    expected_gradients = numpy_references.svgd(theta, loss_gradients, train_size)[0]
    expected = theta.astype(np.float64) - learning_rate * expected_gradients

    trainer = SVGDTrainer(model, train_size=train_size)
    trainer.compile(keras.optimizers.SGD(learning_rate), loss=loss)
    trainer.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    actual = flatten_particles([v.numpy() for v in variables]).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    assert np.max(np.abs(actual - theta)) > 1e-3  # the step did move them


def test_fit_trains_particles_and_keeps_frozen_weights():
    particles = 3
    model = to_bella(_mlp(), num_particles=particles, rank=2)
    x, y = _data()
    trainer = SVGDTrainer(model, train_size=len(x), prior_stddev=1.0)
    trainer.compile(keras.optimizers.Adam(0.03), loss=r1.AverageNLL(particles))
    frozen = [v.numpy().copy() for v in model.non_trainable_weights]
    assert {id(v) for v in trainer.trainable_variables} == {id(v) for v in particle_variables(model)}
    loss_before = trainer.evaluate(x, y, verbose=0)
    history = trainer.fit(x, y, batch_size=16, epochs=2, verbose=0)
    loss_after = trainer.evaluate(x, y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert loss_after < loss_before
    for variable, value in zip(model.non_trainable_weights, frozen):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    output_factors = [v.numpy() for v in particle_variables(model)[1::2]]
    assert all(np.any(b) for b in output_factors)
    assert trainer.predict(x[:5], verbose=0).shape == (5, 3)  # averaged particle probabilities


def test_trainer_keras_file_round_trip(tmp_path):
    model = to_bella(_mlp(), num_particles=2, rank=2)
    trainer = SVGDTrainer(model, train_size=48, prior_stddev=0.5)
    trainer.compile(keras.optimizers.SGD(0.1), loss=r1.AverageNLL(2))
    x, y = _data()
    trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "svgd.keras")
    trainer.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SVGDTrainer)
    assert (loaded.train_size, loaded.prior_stddev, loaded.num_particles) == (48, 0.5, 2)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trainer.predict(x, verbose=0))


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, rank1_keras as r1
    from rank1_keras.bella import particle_variables, to_bella
    from rank1_keras.methods.svgd import flatten_particles
    from rank1_keras.tensorflow.training.svgd import SVGDTrainer

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    results = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            inputs = keras.Input((4,))
            outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8, activation="relu")(inputs))
            model = to_bella(keras.Model(inputs, outputs), num_particles=3, rank=2, seed=1)
            for variable in particle_variables(model):
                variable.assign(np.random.default_rng(1).normal(scale=0.3, size=variable.shape).astype(np.float32))
            trainer = SVGDTrainer(model, train_size=4, prior_stddev=0.5)
            trainer.compile(keras.optimizers.SGD(0.1), loss=r1.AverageNLL(3))
        history = trainer.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append(flatten_particles([v.numpy() for v in particle_variables(model)]).numpy())
        results.append(np.array(history.history["loss"]))
    print("PARTICLES", float(np.max(np.abs(results[0] - results[2]))))
    print("LOSS", float(np.max(np.abs(results[1] - results[3]))))
    """
)


def test_mirrored_strategy_matches_one_device():
    """Two replicas of 8 examples step like one device on 16: the repulsion is not doubled."""
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    values = dict(line.split() for line in completed.stdout.splitlines() if line.startswith(("PARTICLES", "LOSS")))
    assert float(values["PARTICLES"]) < 1e-6
    assert float(values["LOSS"]) < 1e-6
