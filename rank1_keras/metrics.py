"""NumPy metrics for classifiers that output class probabilities.

Every function takes ``probabilities`` of shape ``(N, C)`` (row ``i`` is the
predicted distribution ``p_i`` over ``C`` classes for example ``i``) and
integer ``labels`` ``y`` of shape ``(N,)`` in ``[0, C)``, and returns a Python
``float``. Inputs are checked (``ValueError`` on bad shapes, labels, or rows
that are not distributions) and computed in float64; ``evaluate_classifier``
returns all the metrics at once.

Example:

>>> import numpy as np
>>> probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> labels = np.array([0, 1, 1])
>>> evaluate_classifier(probabilities, labels)["accuracy"]  # 2 of 3 right
0.6666666666666666
"""

import numpy as np

# Rows of `probabilities` may sum to 1 up to this absolute error, which
# tolerates float32 softmax outputs and rounding in averaged ensembles.
_SUM_TOLERANCE = 1e-3

# Smallest positive normal float64 (about 2.2e-308). It floors p[label] in the
# NLL only so that log(0) is not -inf: a zero probability on the true class
# then costs -log(2.2e-308) ~= 708.4 nats instead of an infinite mean.
_LOG_FLOOR = np.finfo(np.float64).tiny


def accuracy(probabilities, labels):
    """Fraction of examples whose most probable class is the label.

    ``accuracy = (1/N) sum_i 1[argmax_c p_ic == y_i]``. Ties go to the lowest
    class index, as in ``np.argmax``.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        A float in ``[0, 1]``.

    Example:

    >>> accuracy([[0.7, 0.3], [0.4, 0.6]], [0, 0])
    0.5
    """
    probabilities, labels = _validate(probabilities, labels)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def negative_log_likelihood(probabilities, labels):
    """Mean negative log-probability of the true labels, in nats.

    ``nll = -(1/N) sum_i log(max(p_i[y_i], tiny))`` where ``tiny`` is the
    smallest positive normal float64 (``np.finfo(np.float64).tiny``, about
    ``2.2e-308``). The floor only avoids ``log(0) = -inf``; it changes no
    probability that float64 can represent as a normal number, and a zero
    probability on the true class contributes about 708.4 nats.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        A non-negative float (0 only for probability 1 on every label).

    Example:

    >>> round(negative_log_likelihood([[0.5, 0.5], [0.25, 0.75]], [0, 1]), 6)
    0.490415
    """
    probabilities, labels = _validate(probabilities, labels)
    true_class_probabilities = probabilities[
        np.arange(labels.shape[0]), labels
    ]
    log_likelihoods = np.log(np.maximum(true_class_probabilities, _LOG_FLOOR))
    # `0.0 - x` rather than `-x` so a perfect model reports 0.0, not -0.0.
    return float(0.0 - np.mean(log_likelihoods))


def expected_calibration_error(probabilities, labels, num_bins=15):
    """Expected calibration error (ECE) with equal-width confidence bins.

    The confidence of example ``i`` is ``conf_i = max_c p_ic`` and its
    prediction is ``argmax_c p_ic``. ``[0, 1]`` is cut into ``B = num_bins``
    equal bins ``(b/B, (b+1)/B]``, the first one also holding 0. With ``S_b``
    the examples whose confidence falls in bin ``b``:

    ``ece = sum_b (|S_b| / N) * |acc(S_b) - conf(S_b)|``

    where ``acc(S_b)`` is the fraction of correct predictions and
    ``conf(S_b)`` the mean confidence in ``S_b``; empty bins contribute 0.
    (Naeini et al., 2015; Guo et al., 2017.)

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.
        num_bins: Positive int, the number of confidence bins ``B``.

    Returns:
        A float in ``[0, 1]``.

    Example:

    >>> # One bin: accuracy 1/2, mean confidence 0.8, so |0.5 - 0.8| = 0.3.
    >>> round(expected_calibration_error([[0.8, 0.2], [0.8, 0.2]], [0, 1],
    ...                                  num_bins=1), 6)
    0.3
    """
    probabilities, labels = _validate(probabilities, labels)
    if isinstance(num_bins, (bool, np.bool_)) or not isinstance(
        num_bins, (int, np.integer)
    ):
        raise ValueError(
            f"num_bins must be a positive int; got {num_bins!r} "
            f"of type {type(num_bins).__name__}"
        )
    if num_bins < 1:
        raise ValueError(f"num_bins must be a positive int; got {num_bins}")
    num_bins = int(num_bins)

    confidences = np.max(probabilities, axis=1)
    correct = (np.argmax(probabilities, axis=1) == labels).astype(np.float64)

    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # side="left" counts the inner edges strictly below each confidence, so a
    # confidence equal to an edge goes to the bin it closes: bins are (lo, hi].
    # 0 lands in bin 0, and anything above 1 (allowed by the row-sum tolerance)
    # in the last bin.
    bin_indices = np.searchsorted(edges[1:-1], confidences, side="left")

    confidence_sums = np.bincount(
        bin_indices, weights=confidences, minlength=num_bins
    )
    correct_sums = np.bincount(
        bin_indices, weights=correct, minlength=num_bins
    )
    # (|S_b|/N) * |acc_b - conf_b| = |sum_{S_b} correct - sum_{S_b} conf| / N,
    # so no division by the bin counts is needed and empty bins give 0.
    return float(
        np.sum(np.abs(correct_sums - confidence_sums)) / labels.shape[0]
    )


def brier_score(probabilities, labels):
    """Multi-class Brier score (mean squared error against one-hot labels).

    ``brier = (1/N) sum_i sum_c (p_ic - 1[c == y_i])^2`` (Brier, 1950). It is
    0 for confident correct predictions and at most 2.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        A float in ``[0, 2]`` (up to the row-sum tolerance).

    Example:

    >>> # (0.8 - 1)^2 + (0.2 - 0)^2 = 0.08
    >>> round(brier_score([[0.8, 0.2]], [0]), 6)
    0.08
    """
    probabilities, labels = _validate(probabilities, labels)
    one_hot = np.zeros_like(probabilities)
    one_hot[np.arange(labels.shape[0]), labels] = 1.0
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def evaluate_classifier(probabilities, labels):
    """Computes all metrics of this module at once.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        A dict of floats with keys ``"accuracy"``, ``"nll"``, ``"ece"``
        (15 bins) and ``"brier"``.

    Example:

    >>> metrics = evaluate_classifier([[1.0, 0.0], [0.0, 1.0]], [0, 1])
    >>> sorted(metrics.items())
    [('accuracy', 1.0), ('brier', 0.0), ('ece', 0.0), ('nll', 0.0)]
    """
    # Validate once here so the error points at this call's arguments; the
    # metric functions re-validate cheaply.
    probabilities, labels = _validate(probabilities, labels)
    return {
        "accuracy": accuracy(probabilities, labels),
        "nll": negative_log_likelihood(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels),
        "brier": brier_score(probabilities, labels),
    }


def _validate(probabilities, labels):
    """Checks the inputs and returns them as float64 and int64 arrays."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2:
        raise ValueError(
            "probabilities must be a 2-D array (examples, classes); "
            f"got shape {probabilities.shape}"
        )
    if probabilities.shape[0] == 0 or probabilities.shape[1] == 0:
        raise ValueError(
            "probabilities must have at least one example and one class; "
            f"got shape {probabilities.shape}"
        )
    if not (
        np.issubdtype(probabilities.dtype, np.floating)
        or np.issubdtype(probabilities.dtype, np.integer)
        or probabilities.dtype == np.bool_
    ):
        raise ValueError(
            "probabilities must be a real numeric array; "
            f"got dtype {probabilities.dtype}"
        )
    probabilities = probabilities.astype(np.float64)

    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"labels must be a 1-D array (examples,); got shape {labels.shape}"
        )
    if labels.shape[0] != probabilities.shape[0]:
        raise ValueError(
            f"labels must have one entry per row of probabilities "
            f"({probabilities.shape[0]}); got {labels.shape[0]}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array; got dtype {labels.dtype}"
        )
    num_classes = probabilities.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}); got values "
            f"from {labels.min()} to {labels.max()}"
        )

    if not np.all(np.isfinite(probabilities)):
        bad_row = int(np.argwhere(~np.isfinite(probabilities))[0, 0])
        raise ValueError(
            f"probabilities must be finite; row {bad_row} is "
            f"{probabilities[bad_row].tolist()}"
        )
    if np.any(probabilities < 0):
        bad_row = int(np.argwhere(probabilities < 0)[0, 0])
        raise ValueError(
            f"probabilities must be non-negative; row {bad_row} is "
            f"{probabilities[bad_row].tolist()}"
        )
    row_sums = np.sum(probabilities, axis=1)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > _SUM_TOLERANCE)
    if bad_rows.size:
        raise ValueError(
            f"probabilities rows must sum to 1 (within {_SUM_TOLERANCE}); "
            f"row {bad_rows[0]} sums to {row_sums[bad_rows[0]]!r} "
            f"({bad_rows.size} bad row{'s' if bad_rows.size > 1 else ''})"
        )
    return probabilities, labels.astype(np.int64)
