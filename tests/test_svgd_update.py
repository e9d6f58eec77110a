"""Bella-SVGD's update rule (`rank1_keras.methods.svgd`) on every backend, against a float64 NumPy SVGD.

The NumPy reference (`tests.numpy_references.svgd`) is written from the textbook
formula, a double loop over particle pairs. The SVGDTrainer (TensorFlow only) is
tested in test_svgd.py.
"""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from rank1_keras.methods.svgd import (
    flatten_particles,
    median_heuristic_bandwidth,
    svgd_gradients,
    transform_gradients,
    unflatten_particles,
)
from tests import numpy_references

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
DIMENSION = 5


def _pairwise_distances(particles):
    return np.array([np.linalg.norm(a - b) for a, b in itertools.combinations(np.asarray(particles), 2)])


@pytest.mark.parametrize("num_particles", [3, 4])
@pytest.mark.parametrize("prior_stddev", [None, 0.7])
def test_svgd_gradients_match_numpy(num_particles, prior_stddev):
    rng = np.random.default_rng(num_particles)
    particles = rng.normal(size=(num_particles, DIMENSION)).astype(np.float32)
    loss_gradients = rng.normal(size=(num_particles, DIMENSION)).astype(np.float32)
    expected, bandwidth = numpy_references.svgd(particles, loss_gradients, train_size=2, prior_stddev=prior_stddev)
    actual = svgd_gradients(particles, loss_gradients, 2, prior_stddev=prior_stddev)
    assert keras.backend.standardize_dtype(actual.dtype) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(actual), expected, rtol=0, atol=1e-5)
    assert float(median_heuristic_bandwidth(particles)) == pytest.approx(bandwidth, rel=1e-5)
    # The repulsion really contributes at train_size=2: dropping it changes g.
    driving_only = numpy_references.svgd(particles, loss_gradients, train_size=10**9, prior_stddev=None)[0]
    assert np.max(np.abs(driving_only - expected)) > 1e-2


def test_replicas_divide_only_the_loss_independent_terms():
    rng = np.random.default_rng(0)
    particles, loss_gradients = (rng.normal(size=(3, DIMENSION)).astype(np.float32) for _ in range(2))
    replicas = 4
    # Each replica sees loss_gradients / replicas (Keras scales the replica loss); the sum is one device's g.
    per_replica = svgd_gradients(particles, loss_gradients / replicas, 2, prior_stddev=0.5, num_replicas=replicas)
    single = svgd_gradients(particles, loss_gradients, 2, prior_stddev=0.5)
    np.testing.assert_allclose(replicas * ops.convert_to_numpy(per_replica), ops.convert_to_numpy(single), atol=1e-6)


def test_median_heuristic_value():
    # Distances 5, 5, 10 (i < j): median 5, h = 25 / log 3.
    particles = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], np.float32)
    assert float(median_heuristic_bandwidth(particles)) == pytest.approx(25 / np.log(3), rel=1e-6)
    # Four particles: six distances, the median averages the middle two.
    particles = np.random.default_rng(1).normal(size=(4, DIMENSION)).astype(np.float32)
    expected = np.median(_pairwise_distances(particles)) ** 2 / np.log(4)
    assert float(median_heuristic_bandwidth(particles)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_particles", [3, 4])
def test_repulsion_alone_pushes_particles_apart(num_particles):
    particles = np.random.default_rng(5).normal(size=(num_particles, DIMENSION)).astype(np.float32)
    gradients = ops.convert_to_numpy(svgd_gradients(particles, np.zeros_like(particles), 2))
    np.testing.assert_allclose(gradients, numpy_references.svgd(particles, np.zeros_like(particles), 2)[0], atol=1e-5)
    moved = particles - 0.1 * gradients
    assert np.all(_pairwise_distances(moved) > _pairwise_distances(particles))
    np.testing.assert_allclose(gradients.sum(axis=0), 0.0, atol=1e-6)  # pure repulsion: no net drift


def test_one_particle_is_an_error():
    with pytest.raises(ValueError, match="at least 2 particles"):
        svgd_gradients(np.ones((1, DIMENSION), np.float32), np.ones((1, DIMENSION), np.float32), 10)
    with pytest.raises(ValueError, match="at least 2 particles"):
        median_heuristic_bandwidth(np.ones((1, DIMENSION), np.float32))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: svgd_gradients(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 0), "train_size"),
        (lambda: svgd_gradients(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 5, prior_stddev=0.0), "prior_stddev"),
        (lambda: svgd_gradients(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32), 5), "loss_gradients"),
    ],
)
def test_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_flatten_and_transform_gradients():
    rng = np.random.default_rng(2)
    shapes = [(3, 4, 2), (3, 2, 5)]
    tensors = [rng.normal(size=s).astype(np.float32) for s in shapes]
    flat = flatten_particles(tensors)
    assert flat.shape == (3, 4 * 2 + 2 * 5)
    np.testing.assert_array_equal(ops.convert_to_numpy(flat)[1], np.concatenate([t[1].ravel() for t in tensors]))
    for restored, tensor in zip(unflatten_particles(flat, tensors), tensors):
        np.testing.assert_array_equal(ops.convert_to_numpy(restored), tensor)

    particle_a, particle_b = (keras.Variable(t) for t in tensors)
    other = keras.Variable(np.ones((4,), np.float32))
    gradients = [ops.convert_to_tensor(rng.normal(size=v.shape).astype(np.float32)) for v in (particle_a, other, particle_b)]
    transformed = transform_gradients(
        [particle_a, other, particle_b], gradients, [particle_a, particle_b], train_size=2, loss_gradient_scale=3.0
    )
    assert transformed[1] is gradients[1]  # not a particle variable: untouched
    expected = numpy_references.svgd(
        ops.convert_to_numpy(flat), 3.0 * ops.convert_to_numpy(flatten_particles([gradients[0], gradients[2]])), 2
    )[0]
    np.testing.assert_allclose(ops.convert_to_numpy(flatten_particles([transformed[0], transformed[2]])), expected, atol=1e-5)
    with pytest.raises(ValueError, match="particle_variables"):
        transform_gradients([particle_a], gradients[:1], [particle_a, particle_b], train_size=2)
