"""Regression metrics of Gaussian-head ensembles against closed forms and direct counts."""

import numpy as np
import pytest
from scipy.stats import norm

from rank1_keras.metrics import regression as rm


def _ensemble(seed=0, members=4, examples=2000):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(members, examples, 1)) * 0.3
    scales = rng.uniform(0.5, 1.5, size=(members, examples, 1))
    targets = rng.normal(size=(examples, 1))
    return means, scales, targets


def test_variance_splits_into_aleatoric_and_epistemic():
    means, scales, _ = _ensemble()
    mean, aleatoric, epistemic = rm.mixture_moments(means, scales)
    np.testing.assert_allclose(mean, means.mean(0))
    np.testing.assert_allclose(aleatoric, (scales**2).mean(0))
    # The law of total variance: E[y^2] - mean^2 of the mixture.
    second_moment = np.mean(scales**2 + means**2, axis=0)
    np.testing.assert_allclose(aleatoric + epistemic, second_moment - mean**2, rtol=1e-10)


def test_mixture_nll_is_the_closed_form():
    means, scales, targets = _ensemble(examples=7)
    density = norm.pdf(targets[None], means, scales)[..., 0].mean(0)
    np.testing.assert_allclose(rm.mixture_nll(means, scales, targets), -np.log(density).mean(), rtol=1e-10)


def test_interval_coverage_of_a_calibrated_gaussian():
    rng = np.random.default_rng(3)
    mean, stddev = np.zeros((20000, 1)), np.full((20000, 1), 2.0)
    targets = rng.normal(0, 2.0, size=(20000, 1))
    coverage, width = rm.interval_coverage(mean, stddev, targets, 0.9)
    assert abs(coverage - 0.9) < 0.01
    np.testing.assert_allclose(width, 2 * 1.6448536 * 2.0, rtol=1e-6)
    assert rm.calibration_error(mean, stddev, targets) < 0.01
    # Twice too confident: intervals cover far less than they claim.
    assert rm.calibration_error(mean, stddev / 2, targets) > 0.15


def test_variance_scale_is_the_maximum_likelihood_factor():
    rng = np.random.default_rng(4)
    mean, stddev = np.zeros((5000, 1)), np.ones((5000, 1))
    targets = rng.normal(0, 3.0, size=(5000, 1))
    scale = rm.fit_variance_scale(mean, stddev, targets)
    assert abs(scale - 3.0) < 0.1
    grid = np.linspace(0.5 * scale, 1.5 * scale, 101)
    nlls = [rm.gaussian_nll(mean, s * stddev, targets) for s in grid]
    assert abs(grid[int(np.argmin(nlls))] - scale) <= grid[1] - grid[0]


def test_evaluate_regressor_with_variance_scaling():
    means, scales, targets = _ensemble()
    plain = rm.evaluate_regressor(means, scales, targets)
    assert set(plain) == {
        "rmse", "nll", "calibration_error", "aleatoric_variance", "epistemic_variance",
        "coverage_90", "width_90", "coverage_95", "width_95",
    }
    np.testing.assert_allclose(plain["rmse"], np.sqrt(np.mean((means.mean(0) - targets) ** 2)))
    scaled = rm.evaluate_regressor(means, scales, targets, variance_scale=2.0)
    np.testing.assert_allclose(scaled["width_90"], 2 * plain["width_90"], rtol=1e-10)
    np.testing.assert_allclose(scaled["aleatoric_variance"], 4 * plain["aleatoric_variance"], rtol=1e-10)
    assert scaled["rmse"] == plain["rmse"]


def test_bad_shapes_name_the_argument():
    means, scales, targets = _ensemble(examples=5)
    with pytest.raises(ValueError, match="member_scales must have the shape"):
        rm.evaluate_regressor(means, scales[:, :3], targets)
    with pytest.raises(ValueError, match=r"targets must have shape \(N, D\)"):
        rm.evaluate_regressor(means, scales, targets[:4])
    with pytest.raises(ValueError, match=r"member_means must have shape \(K, N, D\)"):
        rm.evaluate_regressor(means[0], scales[0], targets)
