"""The keras.ops distributions (JAX and PyTorch's) against float64 closed forms, and against TFP on TensorFlow.

On every backend the classes of `rank1_keras.probability.distributions` are exercised
directly; on TensorFlow the same numbers are also compared with
`tensorflow_probability`, which the factory functions return there, so the
two implementations the backends use are checked against each other.
"""

import math

import keras
import numpy as np
import pytest
from scipy import special, stats

from rank1_keras.probability import distributions
from rank1_keras.probability.distributions import Cauchy, Independent, InverseGamma, Normal
from tests.backend_utils import gradients, numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

LOC = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.25]], np.float32)
SCALE = np.array([[1.0, 0.5, 2.0], [0.25, 3.0, 1.5]], np.float32)
VALUE = np.array([[0.1, -0.2, 0.3], [1.4, 2.0, -1.0]], np.float32)


def test_normal_and_cauchy_log_prob_and_moments_equal_scipy():
    normal, cauchy = Normal(LOC, SCALE), Cauchy(LOC, SCALE)
    x = VALUE.astype(np.float64)
    np.testing.assert_allclose(numpy(normal.log_prob(VALUE)), stats.norm.logpdf(x, LOC, SCALE), rtol=1e-6)
    np.testing.assert_allclose(numpy(cauchy.log_prob(VALUE)), stats.cauchy.logpdf(x, LOC, SCALE), rtol=1e-6)
    np.testing.assert_allclose(numpy(normal.mean()), LOC)
    np.testing.assert_allclose(numpy(normal.mode()), LOC)
    np.testing.assert_allclose(numpy(normal.stddev()), SCALE)
    np.testing.assert_allclose(numpy(normal.variance()), SCALE.astype(np.float64) ** 2, rtol=1e-6)
    np.testing.assert_allclose(numpy(cauchy.mode()), LOC)
    assert normal.batch_shape == (2, 3) and normal.event_shape == ()


def test_independent_sums_the_event_axes():
    both = Independent(Normal(LOC, SCALE), 2)
    rows = Independent(Normal(LOC, SCALE), 1)
    log_pdf = stats.norm.logpdf(VALUE.astype(np.float64), LOC, SCALE)
    np.testing.assert_allclose(float(numpy(both.log_prob(VALUE))), log_pdf.sum(), rtol=1e-6)
    np.testing.assert_allclose(numpy(rows.log_prob(VALUE)), log_pdf.sum(axis=1), rtol=1e-6)
    assert both.event_shape == (2, 3) and rows.event_shape == (3,)
    np.testing.assert_allclose(numpy(both.mean()), LOC)


def test_inverse_gamma_log_prob_equals_scipy():
    for concentration, scale, value in ((2.01, 0.101, 0.05), (0.5, 3.0, 7.5), (30.0, 2.0, 0.1)):
        got = float(numpy(InverseGamma(np.float32(concentration), np.float32(scale)).log_prob(np.float32(value))))
        np.testing.assert_allclose(got, stats.invgamma.logpdf(value, concentration, scale=scale), rtol=2e-5)
    # The Lanczos log-Gamma behind it, over the range the hyper-priors use.
    points = np.linspace(0.05, 40.0, 97).astype(np.float32)
    np.testing.assert_allclose(numpy(distributions._log_gamma(keras.ops.convert_to_tensor(points))),
                               special.gammaln(points.astype(np.float64)), atol=5e-5, rtol=5e-6)


def test_normal_kl_equals_the_closed_form():
    prior_loc, prior_scale = np.float32(1.0), np.float32(0.1)
    posterior = Independent(Normal(LOC, SCALE), 2)
    prior = Independent(Normal(np.full_like(LOC, prior_loc), np.full_like(SCALE, prior_scale)), 2)
    m, s = LOC.astype(np.float64), SCALE.astype(np.float64)
    expected = np.sum(np.log(0.1 / s) + (s**2 + (m - 1.0) ** 2) / (2 * 0.01) - 0.5)
    np.testing.assert_allclose(float(numpy(_ops_kl(posterior, prior))), expected, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="Cauchy"):
        _ops_kl(Independent(Cauchy(LOC, SCALE), 2), prior)


def _ops_kl(posterior, prior):
    """The keras.ops closed form, whatever the backend (the factory uses TFP's on TensorFlow)."""
    return distributions._normal_kl(posterior, prior)


@pytest.mark.parametrize("family", [distributions.normal, distributions.cauchy])
def test_reparameterized_draws_are_loc_plus_scale_times_the_seeded_noise(family):
    loc = keras.ops.convert_to_tensor(LOC)
    draws = distributions.reparameterized(family(loc, SCALE, event_ndims=2), (4,), keras.random.SeedGenerator(3))
    again = distributions.reparameterized(family(loc, SCALE, event_ndims=2), (4,), keras.random.SeedGenerator(3))
    np.testing.assert_array_equal(numpy(draws), numpy(again))
    assert tuple(draws.shape) == (4, 2, 3)
    generator = keras.random.SeedGenerator(3)
    if family is distributions.normal:
        noise = numpy(keras.random.normal((4, 2, 3), seed=generator)).astype(np.float64)
    else:
        uniform = numpy(keras.random.uniform((4, 2, 3), minval=1e-7, maxval=1 - 1e-7, seed=generator))
        noise = np.tan(np.pi * (uniform.astype(np.float64) - 0.5))
    # tan near +-pi/2 magnifies float32 rounding of its argument: 1e-4 relative for the Cauchy draws.
    rtol = 1e-5 if family is distributions.normal else 1e-4
    np.testing.assert_allclose(numpy(draws), LOC + SCALE * noise, rtol=rtol, atol=1e-5)


def test_reparameterized_normal_has_its_moments_and_gradients_reach_loc_and_scale():
    loc = keras.Variable(np.array([0.5, -1.0, 2.0], np.float32))
    scale = keras.Variable(np.array([1.0, 0.5, 2.0], np.float32))
    draws = numpy(distributions.reparameterized(Normal(loc, scale), (100_000,), 7)).astype(np.float64)
    np.testing.assert_allclose(draws.mean(axis=0), [0.5, -1.0, 2.0], atol=4 * 2.0 / math.sqrt(100_000))
    np.testing.assert_allclose(draws.std(axis=0), [1.0, 0.5, 2.0], rtol=0.02)
    weights = keras.ops.convert_to_tensor(np.array([1.0, 2.0, 3.0], np.float32))
    generator = keras.random.SeedGenerator(5)
    grad_loc, grad_scale = gradients(
        lambda: keras.ops.sum(distributions.reparameterized(Normal(loc, scale), (), generator) * weights),
        [loc, scale],
    )
    np.testing.assert_allclose(numpy(grad_loc), numpy(weights))  # d(loc + scale eps)/d loc = 1
    assert np.all(np.isfinite(numpy(grad_scale))) and np.any(numpy(grad_scale) != 0)


@pytest.mark.backends("tensorflow")
def test_the_keras_ops_maths_equals_tfp():
    """What JAX and PyTorch compute equals what TensorFlow's TFP distributions compute."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    for ours, theirs in ((Normal(LOC, SCALE), tfd.Normal(LOC, SCALE)), (Cauchy(LOC, SCALE), tfd.Cauchy(LOC, SCALE))):
        np.testing.assert_allclose(numpy(ours.log_prob(VALUE)), theirs.log_prob(VALUE).numpy(), rtol=1e-6)
        np.testing.assert_allclose(numpy(ours.mode()), theirs.mode().numpy())
    posterior = Independent(Normal(LOC, SCALE), 2)
    prior = Independent(Normal(np.ones_like(LOC), np.full_like(SCALE, 0.1)), 2)
    tfp_kl = tfd.kl_divergence(tfd.Independent(tfd.Normal(LOC, SCALE), 2),
                               tfd.Independent(tfd.Normal(np.ones_like(LOC), np.full_like(SCALE, 0.1)), 2))
    np.testing.assert_allclose(float(numpy(_ops_kl(posterior, prior))), float(tfp_kl), rtol=1e-6)
    np.testing.assert_allclose(float(numpy(InverseGamma(2.01, 0.101).log_prob(0.05))),
                               float(tfd.InverseGamma(2.01, 0.101).log_prob(0.05)), rtol=1e-5)
    # The factories hand out TFP here, and reparameterized draws from them as from ours.
    assert isinstance(distributions.normal(LOC, SCALE, event_ndims=2), tfd.Independent)
    np.testing.assert_array_equal(
        numpy(distributions.reparameterized(distributions.normal(LOC, SCALE, 2), (), 11)),
        numpy(distributions.reparameterized(Independent(Normal(LOC, SCALE), 2), (), 11)),
    )
