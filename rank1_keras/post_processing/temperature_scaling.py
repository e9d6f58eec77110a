"""Temperature scaling: recalibrating a trained classifier's probabilities.

Temperature scaling (Guo et al., 2017) is post-processing, not a metric: one
``T > 0`` is fitted on a validation split by ``fit_temperature`` (``logits``
of shape ``(N, C)``, integer ``labels`` of shape ``(N,)``) or by
``fit_temperature_from_probabilities`` (``probabilities`` of shape ``(N, C)``,
e.g. the average of an ensemble), and applied to new predictions by
``apply_temperature`` or ``apply_temperature_to_probabilities``, which return
float64 arrays of shape ``(N, C)`` whose rows are distributions. The predicted
class does not change; rate the result with ``rank1_keras.metrics``.

Example:

>>> # Confident but right only half the time: T = T_max flattens the predictions.
>>> temperature = fit_temperature_from_probabilities([[0.9, 0.1], [0.9, 0.1]], [0, 1], bounds=(0.5, 2.0))
>>> apply_temperature_to_probabilities([[0.9, 0.1]], temperature).round(2).tolist()
[[0.75, 0.25]]
"""

import numpy as np

from rank1_keras.metrics.checks import (
    _LOG_FLOOR,
    _log_softmax,
    _validate,
    _validate_bounds,
    _validate_labels,
    _validate_logits,
    _validate_probabilities,
    _validate_temperature,
)


def apply_temperature(logits, temperature):
    """Temperature-scaled softmax probabilities.

    ``p_ic = exp(z_ic / T) / sum_c' exp(z_ic' / T)``, computed after
    subtracting each row's maximum. ``T > 1`` softens the predictions and
    ``T < 1`` sharpens them; the predicted class does not change.

    Args:
        logits: Finite real array of shape ``(N, C)``.
        temperature: Finite positive real ``T``, e.g. from ``fit_temperature``.

    Returns:
        A float64 array of shape ``(N, C)`` whose rows are distributions.

    Example:

    >>> import numpy as np
    >>> # [0, 2 log 3] / 2 = [0, log 3]: softmax is [1, 3] / 4.
    >>> apply_temperature([[0.0, 2 * np.log(3.0)]], 2.0).round(6).tolist()
    [[0.25, 0.75]]
    """
    logits = _validate_logits(logits)
    temperature = _validate_temperature(temperature)
    return np.exp(_log_softmax(logits / temperature))


def apply_temperature_to_probabilities(probabilities, temperature):
    """Temperature scaling of probabilities, with their logs as logits.

    ``apply_temperature(log(max(p, tiny)), T)``, i.e. ``p_ic^(1/T)``
    renormalised over ``c``, with ``tiny`` the smallest positive normal
    float64 as in ``negative_log_likelihood`` (a zero stays a zero up to
    ``tiny^(1/T)``). The counterpart of ``fit_temperature_from_probabilities``.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        temperature: Finite positive real ``T``.

    Returns:
        A float64 array of shape ``(N, C)`` whose rows are distributions.

    Example:

    >>> # [0.1, 0.9]^(1/2) = [0.316, 0.949], renormalised: [1, 3] / 4.
    >>> apply_temperature_to_probabilities([[0.1, 0.9]], 2.0).round(6).tolist()
    [[0.25, 0.75]]
    """
    probabilities = _validate_probabilities(probabilities)
    temperature = _validate_temperature(temperature)
    return apply_temperature(
        np.log(np.maximum(probabilities, _LOG_FLOOR)), temperature
    )


def fit_temperature(logits, labels, bounds=(1e-3, 1e3)):
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)``.

    Temperature scaling (Guo et al., 2017) fits one ``T > 0`` on a validation
    split:

    ``T = argmin_T nll(T),  nll(T) = (1/N) sum_i [logsumexp_c(z_ic / T) -
    z_iy_i / T]``

    In ``beta = 1/T`` the NLL is convex (a log-sum-exp of functions linear in
    ``beta``), with derivative ``g(beta) = (1/N) sum_i (E_{p_i(beta)}[z_i] -
    z_iy_i)``, non-decreasing in ``beta``. So the minimum is where ``g``
    changes sign, found by bisection on ``log beta`` over ``bounds`` down to a
    relative width of ``1e-10``: no local minima, no step size. If ``g`` does
    not change sign within ``bounds`` the NLL is monotone there and the
    nearer bound is returned: the lower one when the labels are perfectly
    separated by the logits (the NLL falls as ``T -> 0``), the upper one when
    the logits do worse than uniform. If every row of ``logits`` is constant
    the NLL does not depend on ``T`` and ``1.0`` is returned.

    Args:
        logits: Finite real array of shape ``(N, C)``, pre-softmax outputs on
            the validation split.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.
        bounds: ``(T_min, T_max)``, finite with ``0 < T_min < T_max``.

    Returns:
        A float ``T`` in ``[T_min, T_max]``; use it with
        ``apply_temperature``.

    Example:

    >>> # Two examples with logits [0, 1], labels 1 and 0: the NLL is minimal
    >>> # at p = [1/2, 1/2], i.e. T -> infinity, so T_max is returned.
    >>> fit_temperature([[0.0, 1.0], [0.0, 1.0]], [1, 0], bounds=(0.1, 10.0))
    10.0
    >>> # Logits [0, 1] three times, labels 1, 1, 0: the NLL is minimal at
    >>> # p(1) = sigmoid(1 / T) = 2/3, i.e. 1 / T = log 2, T = 1.442695...
    >>> round(fit_temperature([[0.0, 1.0]] * 3, [1, 1, 0]), 6)
    1.442695
    """
    logits = _validate_logits(logits)
    labels = _validate_labels(labels, *logits.shape, "row of logits")
    t_min, t_max = _validate_bounds(bounds)
    if np.all(logits == logits[:, :1]):
        return 1.0
    # Shifting a row does not change its softmax: with the maximum at 0 every
    # exp() is in (0, 1].
    logits = logits - np.max(logits, axis=1, keepdims=True)
    label_logits = logits[np.arange(labels.shape[0]), labels]

    def slope(log_beta):
        # g(beta) = mean_i (sum_c p_ic(beta) z_ic - z_iy_i).
        probabilities = np.exp(_log_softmax(logits * np.exp(log_beta)))
        return np.mean(np.sum(probabilities * logits, axis=1) - label_logits)

    lo, hi = -np.log(t_max), -np.log(t_min)  # log beta
    if slope(hi) <= 0.0:  # the NLL still falls at the smallest T
        return float(t_min)
    if slope(lo) >= 0.0:  # the NLL still falls at the largest T
        return float(t_max)
    while hi - lo > 1e-10:
        middle = 0.5 * (lo + hi)
        if slope(middle) < 0.0:
            lo = middle
        else:
            hi = middle
    return float(np.exp(-0.5 * (lo + hi)))


def fit_temperature_from_probabilities(probabilities, labels,
                                       bounds=(1e-3, 1e3)):
    """``fit_temperature`` with the log-probabilities as logits.

    ``fit_temperature(log(max(p, tiny)), labels)`` with ``tiny`` the smallest
    positive normal float64 (as in ``negative_log_likelihood``). Useful when
    only probabilities are at hand, e.g. the averaged probabilities of an
    ensemble. For ``p = softmax(z)`` it gives the same ``T`` as
    ``fit_temperature(z, labels)`` (``log p`` differs from ``z`` by a constant
    per row); apply it with ``apply_temperature_to_probabilities``.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.
        bounds: ``(T_min, T_max)``, finite with ``0 < T_min < T_max``.

    Returns:
        A float ``T`` in ``[T_min, T_max]``.

    Example:

    >>> # Confidence 0.9 but 1 in 2 right: the NLL wants [1/2, 1/2], T_max.
    >>> fit_temperature_from_probabilities([[0.9, 0.1], [0.9, 0.1]], [0, 1],
    ...                                    bounds=(0.5, 2.0))
    2.0
    """
    probabilities, labels = _validate(probabilities, labels)
    return fit_temperature(
        np.log(np.maximum(probabilities, _LOG_FLOOR)), labels, bounds=bounds
    )
