"""Bella-SVGD: svgd_gradients against a float64 NumPy SVGD, the gradient plumbing, SVGDTrainer.

The NumPy reference is written from the textbook formula, a double loop over
particle pairs:

    phi_i = (1/n) sum_j [k(theta_j, theta_i) grad log p(theta_j) + grad_{theta_j} k(theta_j, theta_i)]
    grad log p = -N grad L - theta / sigma^2,   g_i = -phi_i / N.
"""

import itertools
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
from rank1_keras.methods.svgd import (
    flatten_particles,
    median_heuristic_bandwidth,
    svgd_gradients,
    transform_gradients,
    unflatten_particles,
)
from rank1_keras.tensorflow.training.svgd import SVGDTrainer

DIMENSION = 5


def _numpy_svgd(particles, loss_gradients, train_size, prior_stddev=None):
    """g_i = -phi(theta_i) / N in float64, one pair at a time."""
    particles = np.asarray(particles, np.float64)
    n = len(particles)
    distances = [np.linalg.norm(particles[i] - particles[j]) for i, j in itertools.combinations(range(n), 2)]
    bandwidth = np.median(distances) ** 2 / np.log(n)
    gradients = np.zeros_like(particles)
    for i in range(n):
        phi = np.zeros(particles.shape[1])
        for j in range(n):
            kernel = np.exp(-np.sum((particles[i] - particles[j]) ** 2) / bandwidth)
            grad_log_posterior = -train_size * np.asarray(loss_gradients[j], np.float64)
            if prior_stddev is not None:
                grad_log_posterior = grad_log_posterior - particles[j] / prior_stddev**2
            grad_kernel_wrt_theta_j = -2.0 / bandwidth * (particles[j] - particles[i]) * kernel
            phi += kernel * grad_log_posterior + grad_kernel_wrt_theta_j
        gradients[i] = -phi / n / train_size
    return gradients, bandwidth


def _pairwise_distances(particles):
    return np.array([np.linalg.norm(a - b) for a, b in itertools.combinations(np.asarray(particles), 2)])


@pytest.mark.parametrize("num_particles", [3, 4])
@pytest.mark.parametrize("prior_stddev", [None, 0.7])
def test_svgd_gradients_match_numpy(num_particles, prior_stddev):
    rng = np.random.default_rng(num_particles)
    particles = rng.normal(size=(num_particles, DIMENSION))
    loss_gradients = rng.normal(size=(num_particles, DIMENSION))
    expected, bandwidth = _numpy_svgd(particles, loss_gradients, train_size=2, prior_stddev=prior_stddev)
    actual = svgd_gradients(tf.constant(particles), tf.constant(loss_gradients), 2, prior_stddev=prior_stddev)
    assert actual.dtype == tf.float64
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=1e-6)
    assert float(median_heuristic_bandwidth(tf.constant(particles))) == pytest.approx(bandwidth, rel=1e-12)
    # The repulsion really contributes at train_size=2: dropping it changes g.
    driving_only = _numpy_svgd(particles, loss_gradients, train_size=10**9, prior_stddev=None)[0]
    assert np.max(np.abs(driving_only - expected)) > 1e-2


def test_replicas_divide_only_the_loss_independent_terms():
    rng = np.random.default_rng(0)
    particles, loss_gradients = rng.normal(size=(3, DIMENSION)), rng.normal(size=(3, DIMENSION))
    replicas = 4
    # Each replica sees loss_gradients / replicas (Keras scales the replica loss); the sum is one device's g.
    per_replica = svgd_gradients(particles, loss_gradients / replicas, 2, prior_stddev=0.5, num_replicas=replicas)
    single = svgd_gradients(particles, loss_gradients, 2, prior_stddev=0.5)
    np.testing.assert_allclose(replicas * per_replica.numpy(), single.numpy(), atol=1e-12)


def test_median_heuristic_value():
    # Distances 5, 5, 10 (i < j): median 5, h = 25 / log 3.
    particles = tf.constant([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], tf.float64)
    assert float(median_heuristic_bandwidth(particles)) == pytest.approx(25 / np.log(3), rel=1e-12)
    # Four particles: six distances, the median averages the middle two.
    particles = np.random.default_rng(1).normal(size=(4, DIMENSION))
    expected = np.median(_pairwise_distances(particles)) ** 2 / np.log(4)
    assert float(median_heuristic_bandwidth(tf.constant(particles))) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("num_particles", [3, 4])
def test_repulsion_alone_pushes_particles_apart(num_particles):
    particles = np.random.default_rng(5).normal(size=(num_particles, DIMENSION))
    gradients = svgd_gradients(tf.constant(particles), tf.zeros((num_particles, DIMENSION), tf.float64), 2).numpy()
    np.testing.assert_allclose(gradients, _numpy_svgd(particles, np.zeros_like(particles), 2)[0], atol=1e-6)
    moved = particles - 0.1 * gradients
    assert np.all(_pairwise_distances(moved) > _pairwise_distances(particles))
    np.testing.assert_allclose(gradients.sum(axis=0), 0.0, atol=1e-12)  # pure repulsion: no net drift


def test_one_particle_is_an_error():
    with pytest.raises(ValueError, match="at least 2 particles"):
        svgd_gradients(tf.ones((1, DIMENSION)), tf.ones((1, DIMENSION)), 10)
    with pytest.raises(ValueError, match="at least 2 particles"):
        median_heuristic_bandwidth(tf.ones((1, DIMENSION)))
    with pytest.raises(ValueError, match="at least 2 particles"):
        SVGDTrainer(to_bella(_mlp(), num_particles=1, rank=2), train_size=10)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: svgd_gradients(tf.ones((2, 3)), tf.ones((2, 3)), 0), "train_size"),
        (lambda: svgd_gradients(tf.ones((2, 3)), tf.ones((2, 3)), 5, prior_stddev=0.0), "prior_stddev"),
        (lambda: svgd_gradients(tf.ones((2, 3)), tf.ones((2, 4)), 5), "loss_gradients"),
        (lambda: SVGDTrainer(to_bella(_mlp(), num_particles=2), train_size=-1), "train_size"),
        (lambda: SVGDTrainer(to_bella(_mlp(), num_particles=2), 8, member_loss_reduction="max"), "member_loss_reduction"),
    ],
)
def test_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_flatten_and_transform_gradients():
    rng = np.random.default_rng(2)
    shapes = [(3, 4, 2), (3, 2, 5)]
    tensors = [tf.constant(rng.normal(size=s)) for s in shapes]
    flat = flatten_particles(tensors)
    assert flat.shape == (3, 4 * 2 + 2 * 5)
    np.testing.assert_array_equal(flat[1].numpy(), np.concatenate([t[1].numpy().ravel() for t in tensors]))
    for restored, tensor in zip(unflatten_particles(flat, tensors), tensors):
        np.testing.assert_array_equal(restored.numpy(), tensor.numpy())

    particle_a, particle_b = (keras.Variable(t.numpy(), dtype="float64") for t in tensors)
    other = keras.Variable(np.ones((4,)), dtype="float64")
    gradients = [tf.constant(rng.normal(size=v.shape)) for v in (particle_a, other, particle_b)]
    transformed = transform_gradients(
        [particle_a, other, particle_b], gradients, [particle_a, particle_b], train_size=2, loss_gradient_scale=3.0
    )
    assert transformed[1] is gradients[1]  # not a particle variable: untouched
    expected = _numpy_svgd(flat.numpy(), 3.0 * flatten_particles([gradients[0], gradients[2]]).numpy(), 2)[0]
    np.testing.assert_allclose(flatten_particles([transformed[0], transformed[2]]).numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="particle_variables"):
        transform_gradients([particle_a], gradients[:1], [particle_a, particle_b], train_size=2)


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
    expected_gradients = _numpy_svgd(theta, loss_gradients, train_size)[0]
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
