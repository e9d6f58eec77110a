"""Tests for the KL-divergence regularizers against float64 NumPy references."""

import math

import keras
import numpy as np
import pytest

from rank1_keras.probability import distributions, regularizers
from rank1_keras.probability.initializers import TrainableCauchy, TrainableNormal
from rank1_keras.probability.random_variable import RandomVariable
from rank1_keras.probability.regularizers import (
    CauchyKLDivergence,
    HierarchicalNormalKLDivergence,
    NormalKLDivergence,
)
from tests.backend_utils import gradients, numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

SHAPE = (4, 7)


def _inverse_softplus(x):
    return np.log(np.expm1(np.asarray(x, np.float64)))


def _posterior(cls, loc, scale):
    """A built trainable initializer on a bare layer with the given loc/scale."""
    layer = keras.layers.Layer()
    init = cls()
    init.build(layer, "alpha", loc.shape)
    init.parameters["loc"].assign(loc.astype(np.float32))
    init.parameters["unconstrained_scale"].assign(_inverse_softplus(scale).astype(np.float32))
    # The float32 parameters actually used, in float64.
    loc32 = numpy(init.loc).astype(np.float64)
    scale32 = numpy(init.scale).astype(np.float64)
    return init, loc32, scale32


def _value(x):
    """A scalar result (backend tensor) as a Python float."""
    return float(numpy(x))


def _random_posterior(seed, shape=SHAPE, loc_center=1.0, loc_spread=0.3, scale_low=0.02, scale_high=0.3):
    rng = np.random.default_rng(seed)
    loc = loc_center + loc_spread * rng.standard_normal(shape)
    scale = rng.uniform(scale_low, scale_high, size=shape)
    return loc, scale


def _normal_kl_numpy(mu, s, m, t):
    return np.sum(np.log(t / s) + (s**2 + (mu - m) ** 2) / (2 * t**2) - 0.5)


def _normal_log_pdf(x, loc, scale):
    return -0.5 * np.log(2 * np.pi) - np.log(scale) - 0.5 * ((x - loc) / scale) ** 2


def _cauchy_log_pdf(x, loc, scale):
    return -np.log(np.pi * scale) - np.log1p(((x - loc) / scale) ** 2)


def _inverse_gamma_log_pdf(v, alpha, beta):
    return alpha * math.log(beta) - math.lgamma(alpha) - (alpha + 1) * np.log(v) - beta / v


# ---------------------------------------------------------------------------
# NormalKLDivergence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mean, stddev, scale_factor",
    [(1.0, 0.1, 1.0), (0.5, 0.3, 1.0), (1.0, 0.1, 1.0 / 50_000), (-0.2, 2.0, 3.5)],
)
def test_normal_kl_matches_closed_form(mean, stddev, scale_factor):
    loc, scale = _random_posterior(0)
    init, mu, s = _posterior(TrainableNormal, loc, scale)
    rv = init(seed=keras.random.SeedGenerator(1))
    regularizer = NormalKLDivergence(mean=mean, stddev=stddev, scale_factor=scale_factor)
    expected = scale_factor * _normal_kl_numpy(mu, s, mean, stddev)
    got = regularizer(rv)
    assert tuple(got.shape) == ()
    np.testing.assert_allclose(_value(got), expected, rtol=1e-5)
    # The closed form does not depend on the draw.
    np.testing.assert_allclose(_value(regularizer(init())), expected, rtol=1e-5)


def test_normal_kl_scale_factor_zero_gives_zero():
    loc, scale = _random_posterior(1)
    init, _, _ = _posterior(TrainableNormal, loc, scale)
    assert _value(NormalKLDivergence(scale_factor=0.0)(init())) == 0.0


def test_normal_kl_closed_form_agrees_with_monte_carlo():
    """A NumPy Monte-Carlo estimate of E_q[log q - log p] confirms the formula."""
    mean, stddev = 1.0, 0.1
    loc, scale = _random_posterior(2, loc_spread=0.1, scale_low=0.05, scale_high=0.2)
    init, mu, s = _posterior(TrainableNormal, loc, scale)
    got = _value(NormalKLDivergence(mean=mean, stddev=stddev)(init()))

    rng = np.random.default_rng(3)
    z = mu + s * rng.standard_normal((200_000,) + SHAPE)
    log_ratio = (_normal_log_pdf(z, mu, s) - _normal_log_pdf(z, mean, stddev)).reshape(len(z), -1).sum(1)
    estimate = log_ratio.mean()
    standard_error = log_ratio.std() / math.sqrt(len(log_ratio))
    assert abs(got - estimate) < 5 * standard_error
    # And loose in relative terms, so a wrong formula cannot hide in the noise.
    np.testing.assert_allclose(got, estimate, rtol=0.01)


def test_normal_kl_is_zero_when_posterior_equals_prior():
    init, _, _ = _posterior(TrainableNormal, np.full(SHAPE, 1.0), np.full(SHAPE, 0.1))
    np.testing.assert_allclose(_value(NormalKLDivergence(1.0, 0.1)(init())), 0.0, atol=1e-4)


def test_normal_kl_on_hand_built_random_variable():
    mu = np.array([[0.9, 1.2], [1.0, 0.7]])
    s = np.array([[0.05, 0.1], [0.2, 0.15]])
    distribution = distributions.normal(mu.astype(np.float32), s.astype(np.float32), event_ndims=2)
    rv = RandomVariable(distribution, value=np.ones((2, 2), np.float32))
    np.testing.assert_allclose(
        _value(NormalKLDivergence(1.0, 0.1, 2.0)(rv)), 2.0 * _normal_kl_numpy(mu, s, 1.0, 0.1), rtol=1e-5
    )


def test_normal_kl_rejects_a_cauchy_posterior():
    init, _, _ = _posterior(TrainableCauchy, np.ones(SHAPE), np.full(SHAPE, 0.1))
    with pytest.raises(ValueError, match="Normal"):
        NormalKLDivergence()(init())


def test_normal_kl_gradient_matches_closed_form():
    mean, stddev = 1.0, 0.1
    loc, scale = _random_posterior(4)
    init, mu, s = _posterior(TrainableNormal, loc, scale)
    raw = init.parameters["unconstrained_scale"]
    grad_loc, grad_raw = gradients(lambda: NormalKLDivergence(mean, stddev)(init()), [init.parameters["loc"], raw])
    # dKL/dmu = (mu - m)/t^2; dKL/ds = -1/s + s/t^2; ds/draw = sigmoid(raw).
    sigmoid = 1 / (1 + np.exp(-numpy(raw).astype(np.float64)))
    np.testing.assert_allclose(numpy(grad_loc), (mu - mean) / stddev**2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(numpy(grad_raw), (-1 / s + s / stddev**2) * sigmoid, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# CauchyKLDivergence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("prior_loc, prior_scale, scale_factor", [(1.0, 0.1, 1.0), (0.0, 0.5, 0.01)])
def test_cauchy_kl_per_member_is_log_ratio_on_the_value(prior_loc, prior_scale, scale_factor):
    loc, scale = _random_posterior(5, scale_low=0.05, scale_high=0.3)
    init, l, s = _posterior(TrainableCauchy, loc, scale)
    rv = init(seed=keras.random.SeedGenerator(3))
    z = rv.numpy().astype(np.float64)
    assert z.shape == SHAPE
    expected = scale_factor * np.sum(_cauchy_log_pdf(z, l, s) - _cauchy_log_pdf(z, prior_loc, prior_scale))
    got = CauchyKLDivergence(prior_loc, prior_scale, scale_factor)(rv)
    assert tuple(got.shape) == ()
    np.testing.assert_allclose(_value(got), expected, rtol=1e-4, atol=1e-4 * scale_factor)


def test_cauchy_kl_per_example_averages_over_the_draws():
    batch = 6
    loc, scale = _random_posterior(6, scale_low=0.05, scale_high=0.3)
    init, l, s = _posterior(TrainableCauchy, loc, scale)
    rv = init(sample_shape=(batch,), seed=keras.random.SeedGenerator(8))
    z = rv.numpy().astype(np.float64)
    assert z.shape == (batch,) + SHAPE
    per_draw = np.sum(_cauchy_log_pdf(z, l, s) - _cauchy_log_pdf(z, 1.0, 0.1), axis=(1, 2))
    assert np.std(per_draw) > 0  # draws differ, so the mean is a real test
    got = CauchyKLDivergence(1.0, 0.1, scale_factor=0.5)(rv)
    assert tuple(got.shape) == ()
    np.testing.assert_allclose(_value(got), 0.5 * per_draw.mean(), rtol=1e-4, atol=1e-4)


def _cauchy_kl_by_quadrature(l1, s1, l2, s2, points=200_001):
    """E_q[log q - log p] per entry, with z = l1 + s1 tan(theta), theta ~ U(-pi/2, pi/2)."""
    theta = (np.arange(points) + 0.5) / points * np.pi - np.pi / 2  # midpoint rule
    out = np.empty(np.broadcast(l1, s1).shape)
    for index in np.ndindex(out.shape):
        z = l1[index] + s1[index] * np.tan(theta)
        out[index] = np.mean(_cauchy_log_pdf(z, l1[index], s1[index]) - _cauchy_log_pdf(z, l2, s2))
    return out


def test_cauchy_kl_monte_carlo_average_matches_reference():
    shape = (2, 3)
    loc, scale = _random_posterior(7, shape=shape, loc_spread=0.2, scale_low=0.05, scale_high=0.3)
    init, l, s = _posterior(TrainableCauchy, loc, scale)
    prior_loc, prior_scale = 1.0, 0.1
    reference = _cauchy_kl_by_quadrature(l, s, prior_loc, prior_scale)
    # The quadrature agrees with the known closed form for two Cauchys,
    # log(((s1 + s2)^2 + (l1 - l2)^2) / (4 s1 s2)).
    closed = np.log(((s + prior_scale) ** 2 + (l - prior_loc) ** 2) / (4 * s * prior_scale))
    np.testing.assert_allclose(reference, closed, rtol=1e-3, atol=1e-4)

    draws = 100_000
    rv = init(sample_shape=(draws,), seed=keras.random.SeedGenerator(5))
    got = _value(CauchyKLDivergence(prior_loc, prior_scale)(rv))
    z = rv.numpy().astype(np.float64)
    per_draw = np.sum(_cauchy_log_pdf(z, l, s) - _cauchy_log_pdf(z, prior_loc, prior_scale), axis=(1, 2))
    standard_error = per_draw.std() / math.sqrt(draws)
    assert abs(got - reference.sum()) < 5 * standard_error
    np.testing.assert_allclose(got, reference.sum(), rtol=0.03)


# ---------------------------------------------------------------------------
# HierarchicalNormalKLDivergence
# ---------------------------------------------------------------------------


def _hierarchical_objective(v, mu, s, mean, alpha, beta):
    """KL(q || N(mean, v)) - log InverseGamma(v; alpha, beta), float64."""
    return _normal_kl_numpy(mu, s, mean, np.sqrt(v)) - _inverse_gamma_log_pdf(v, alpha, beta)


@pytest.mark.parametrize(
    "mean, alpha, beta, scale_factor",
    [(1.0, 2.01, 0.101, 1.0), (0.5, 3.0, 0.5, 1.0 / 1000), (0.0, 0.5, 2.0, 2.0)],
)
def test_hierarchical_prior_variance_and_value(mean, alpha, beta, scale_factor):
    loc, scale = _random_posterior(8)
    init, mu, s = _posterior(TrainableNormal, loc, scale)
    rv = init()
    regularizer = HierarchicalNormalKLDivergence(mean, alpha, beta, scale_factor)
    n = mu.size
    v_star = (np.sum(s**2 + (mu - mean) ** 2) + 2 * beta) / (n + 2 * alpha + 2)
    np.testing.assert_allclose(_value(regularizer.prior_variance(rv)), v_star, rtol=1e-5)
    expected = scale_factor * _hierarchical_objective(v_star, mu, s, mean, alpha, beta)
    got = regularizer(rv)
    assert tuple(got.shape) == ()
    np.testing.assert_allclose(_value(got), expected, rtol=1e-5, atol=1e-6 * scale_factor)


@pytest.mark.parametrize("mean, alpha, beta", [(1.0, 2.01, 0.101), (0.0, 0.5, 2.0)])
def test_hierarchical_prior_variance_is_the_optimum(mean, alpha, beta):
    loc, scale = _random_posterior(9)
    init, mu, s = _posterior(TrainableNormal, loc, scale)
    v_star = _value(HierarchicalNormalKLDivergence(mean, alpha, beta).prior_variance(init()))
    at_optimum = _hierarchical_objective(v_star, mu, s, mean, alpha, beta)
    grid = v_star * np.exp(np.linspace(-2.0, 2.0, 401))
    values = np.array([_hierarchical_objective(v, mu, s, mean, alpha, beta) for v in grid])
    assert np.all(values >= at_optimum - 1e-9 * abs(at_optimum))
    # The optimum is strict: neighbours a few percent away are higher.
    assert _hierarchical_objective(1.05 * v_star, mu, s, mean, alpha, beta) > at_optimum
    assert _hierarchical_objective(0.95 * v_star, mu, s, mean, alpha, beta) > at_optimum


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

BAD_POSITIVE = [-1.0, 0.0, float("inf"), float("nan")]


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_normal_kl_rejects_bad_stddev(bad):
    with pytest.raises(ValueError, match=r"\bstddev\b"):
        NormalKLDivergence(stddev=bad)


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_cauchy_kl_rejects_bad_scale(bad):
    with pytest.raises(ValueError, match=r"\bscale\b"):
        CauchyKLDivergence(scale=bad)


@pytest.mark.parametrize("bad", BAD_POSITIVE)
def test_hierarchical_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match="variance_concentration"):
        HierarchicalNormalKLDivergence(variance_concentration=bad)
    with pytest.raises(ValueError, match="variance_scale"):
        HierarchicalNormalKLDivergence(variance_scale=bad)


@pytest.mark.parametrize("cls", [NormalKLDivergence, CauchyKLDivergence, HierarchicalNormalKLDivergence])
@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("inf"), float("nan")])
def test_regularizers_reject_bad_scale_factor(cls, bad):
    with pytest.raises(ValueError, match="scale_factor"):
        cls(scale_factor=bad)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_regularizers_reject_non_finite_location(bad):
    with pytest.raises(ValueError, match=r"\bmean\b"):
        NormalKLDivergence(mean=bad)
    with pytest.raises(ValueError, match=r"\bloc\b"):
        CauchyKLDivergence(loc=bad)
    with pytest.raises(ValueError, match=r"\bmean\b"):
        HierarchicalNormalKLDivergence(mean=bad)


@pytest.mark.parametrize("cls", [NormalKLDivergence, CauchyKLDivergence, HierarchicalNormalKLDivergence])
@pytest.mark.parametrize("plain", ["backend_tensor", "numpy_array"])
def test_regularizers_reject_plain_tensors(cls, plain):
    ones = np.ones(SHAPE, np.float32)
    plain = keras.ops.convert_to_tensor(ones) if plain == "backend_tensor" else ones
    with pytest.raises(ValueError, match="RandomVariable"):
        cls()(plain)


# ---------------------------------------------------------------------------
# Config and names
# ---------------------------------------------------------------------------

INSTANCES = [
    NormalKLDivergence(mean=0.5, stddev=0.3, scale_factor=0.01),
    CauchyKLDivergence(loc=0.25, scale=0.7, scale_factor=2.0),
    HierarchicalNormalKLDivergence(mean=0.1, variance_concentration=3.0, variance_scale=0.4, scale_factor=0.2),
]


@pytest.mark.parametrize("regularizer", INSTANCES)
def test_get_config_from_config_round_trip(regularizer):
    config = regularizer.get_config()
    restored = type(regularizer).from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(regularizer)
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is type(regularizer)
    assert deserialized.get_config() == config
    assert regularizers.get(serialized).get_config() == config


def test_round_tripped_regularizer_computes_the_same_value():
    loc, scale = _random_posterior(10)
    normal, _, _ = _posterior(TrainableNormal, loc, scale)
    cauchy, _, _ = _posterior(TrainableCauchy, loc, scale)
    for regularizer, init in [(INSTANCES[0], normal), (INSTANCES[1], cauchy), (INSTANCES[2], normal)]:
        rv = init(seed=keras.random.SeedGenerator(1))
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(regularizer))
        np.testing.assert_allclose(_value(restored(rv)), _value(regularizer(rv)), rtol=1e-6)


def test_expected_config_values():
    assert INSTANCES[0].get_config() == {"mean": 0.5, "stddev": 0.3, "scale_factor": 0.01}
    assert INSTANCES[1].get_config() == {"loc": 0.25, "scale": 0.7, "scale_factor": 2.0}
    assert INSTANCES[2].get_config() == {
        "mean": 0.1,
        "variance_concentration": 3.0,
        "variance_scale": 0.4,
        "scale_factor": 0.2,
    }


def test_string_names():
    normal = regularizers.get("normal_kl_divergence")
    assert type(normal) is NormalKLDivergence
    assert normal.get_config() == {"mean": 1.0, "stddev": 0.1, "scale_factor": 1.0}
    cauchy = regularizers.get("cauchy_kl_divergence")
    assert type(cauchy) is CauchyKLDivergence
    assert cauchy.get_config() == {"loc": 1.0, "scale": 0.1, "scale_factor": 1.0}
    hierarchical = regularizers.get("hierarchical_normal_kl_divergence")
    assert type(hierarchical) is HierarchicalNormalKLDivergence
    assert hierarchical.get_config() == {
        "mean": 1.0,
        "variance_concentration": 2.01,
        "variance_scale": 0.101,
        "scale_factor": 1.0,
    }
    assert all(regularizers.is_kl_regularizer(r) for r in (normal, cauchy, hierarchical))
    l2 = regularizers.get("l2")
    assert isinstance(l2, keras.regularizers.L2) and not regularizers.is_kl_regularizer(l2)
    assert regularizers.get(None) is None


@pytest.mark.parametrize("identifier", ["no_such_regularizer", 42])
def test_unknown_names_raise_value_error_naming_the_argument(identifier):
    with pytest.raises(ValueError, match="gamma_regularizer"):
        regularizers.get(identifier, "gamma_regularizer")


def test_unknown_class_in_a_config_dict_raises_value_error_naming_the_argument():
    # Documented: ValueError naming `argument_name` when the identifier is unknown.
    with pytest.raises(ValueError, match="gamma_regularizer"):
        regularizers.get({"class_name": "Nope", "config": {}}, "gamma_regularizer")


def test_known_class_with_bad_config_reports_the_bad_argument():
    config = regularizers.serialize(NormalKLDivergence())
    config["config"]["stddev"] = -1.0
    with pytest.raises(ValueError, match=r"\bstddev\b"):
        regularizers.get(config, "gamma_regularizer")
