"""NumPy metrics for ensembles of Gaussian regression heads.

Members give a mean mu_k and a scale sigma_k per example and output
(`member_means`, `member_scales` of shape (K, N, D); point regressors have
no scale). The ensemble's prediction is the mixture (1/K) sum_k N(mu_k, sigma_k^2):

    mean      mu = mean_k mu_k
    variance  sigma^2 = mean_k sigma_k^2  (aleatoric)  +  var_k mu_k  (epistemic)

Metrics: RMSE of the mean; the mixture's Gaussian NLL (exact, logsumexp);
coverage and width of central intervals of the moment-matched Gaussian
N(mu, sigma^2); a regression calibration error (mean |observed - nominal
coverage| over the levels 0.05, 0.10, ..., 0.95, Kuleshov et al. 2018); and
variance scaling, the regression analogue of temperature scaling: one
factor s on every predicted standard deviation, fitted on a validation split
by maximum likelihood (closed form for one Gaussian: s^2 = mean z^2).

Example:

>>> import numpy as np
>>> means, scales = np.zeros((2, 3, 1)), np.ones((2, 3, 1))
>>> round(evaluate_regressor(means, scales, np.zeros((3, 1)))["nll"], 4)   # -log N(0; 0, 1)
0.9189
"""

import math

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

CALIBRATION_LEVELS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


def _arrays(member_means, member_scales, targets):
    member_means = np.asarray(member_means, np.float64)
    if member_means.ndim != 3:
        raise ValueError(f"member_means must have shape (K, N, D); got shape {member_means.shape}.")
    member_scales = np.zeros_like(member_means) if member_scales is None else np.asarray(member_scales, np.float64)
    if member_scales.shape != member_means.shape:
        raise ValueError(
            f"member_scales must have the shape of member_means {member_means.shape}; got {member_scales.shape}."
        )
    if np.any(member_scales < 0):
        raise ValueError("member_scales must be non-negative standard deviations.")
    targets = np.asarray(targets, np.float64)
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.shape != member_means.shape[1:]:
        raise ValueError(f"targets must have shape (N, D) = {member_means.shape[1:]}; got {targets.shape}.")
    return member_means, member_scales, targets


def mixture_moments(member_means, member_scales):
    """(mean, aleatoric variance, epistemic variance), each (N, D)."""
    member_means, member_scales, _ = _arrays(member_means, member_scales, np.zeros(np.shape(member_means)[1:]))
    return member_means.mean(0), np.mean(member_scales**2, axis=0), member_means.var(axis=0)


def mixture_nll(member_means, member_scales, targets):
    """Mean over examples of -log (1/K) sum_k N(y; mu_k, sigma_k^2), summed over the D outputs."""
    member_means, member_scales, targets = _arrays(member_means, member_scales, targets)
    log_density = norm.logpdf(targets[None], member_means, member_scales).sum(-1)  # (K, N)
    return float(np.mean(math.log(member_means.shape[0]) - logsumexp(log_density, axis=0)))


def gaussian_nll(mean, stddev, targets):
    """Mean over examples of -log N(y; mean, stddev^2), summed over the D outputs."""
    return float(np.mean(-norm.logpdf(np.asarray(targets), mean, stddev).sum(-1)))


def interval_coverage(mean, stddev, targets, level):
    """(observed coverage, mean width) of the central `level` interval mean +- z stddev."""
    half_width = norm.ppf(0.5 + level / 2.0) * np.asarray(stddev)
    inside = np.abs(np.asarray(targets) - mean) <= half_width
    return float(inside.mean()), float(np.mean(2.0 * half_width))


def calibration_error(mean, stddev, targets, levels=CALIBRATION_LEVELS):
    """Mean over `levels` of |observed coverage - level| of the central intervals."""
    return float(np.mean([abs(interval_coverage(mean, stddev, targets, level)[0] - level) for level in levels]))


def fit_variance_scale(mean, stddev, targets):
    """The factor s on every stddev that maximises the Gaussian likelihood: s = sqrt(mean z^2)."""
    standardized = (np.asarray(targets, np.float64) - mean) / np.asarray(stddev, np.float64)
    return float(np.sqrt(np.mean(standardized**2)))


def evaluate_regressor(member_means, member_scales, targets, variance_scale=1.0):
    """RMSE, NLL, interval coverage and width (90%, 95%), calibration error, variance split.

    Args:
        member_means, member_scales: (K, N, D); member_scales None for point
            regressors (the spread of the members is then the only variance).
        targets: (N, D) or (N,).
        variance_scale: s from `fit_variance_scale` on a validation split;
            every member's scale and the members' spread are multiplied by s.

    Returns:
        A dict of floats: rmse, nll (the mixture's, exact), coverage_90,
        width_90, coverage_95, width_95, calibration_error,
        aleatoric_variance, epistemic_variance (means over examples).
    """
    member_means, member_scales, targets = _arrays(member_means, member_scales, targets)
    mean, aleatoric, epistemic = mixture_moments(member_means, member_scales)
    if variance_scale != 1.0:
        member_means = mean + variance_scale * (member_means - mean)
        member_scales = variance_scale * member_scales
        aleatoric, epistemic = aleatoric * variance_scale**2, epistemic * variance_scale**2
    stddev = np.sqrt(aleatoric + epistemic)
    result = {
        "rmse": float(np.sqrt(np.mean((mean - targets) ** 2))),
        "nll": mixture_nll(member_means, member_scales, targets)
        if np.all(member_scales > 0)
        else gaussian_nll(mean, stddev, targets),
        "calibration_error": calibration_error(mean, stddev, targets),
        "aleatoric_variance": float(aleatoric.mean()),
        "epistemic_variance": float(epistemic.mean()),
    }
    for level in (90, 95):
        result[f"coverage_{level}"], result[f"width_{level}"] = interval_coverage(mean, stddev, targets, level / 100)
    return result
