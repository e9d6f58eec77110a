"""Accuracy and calibration of classifiers that output class probabilities.

``accuracy``, ``negative_log_likelihood``, ``expected_calibration_error``,
``brier_score`` and ``evaluate_classifier`` take ``probabilities`` of shape
``(N, C)`` (row ``i`` is the predicted distribution ``p_i`` over ``C`` classes
for example ``i``) and integer ``labels`` ``y`` of shape ``(N,)`` in
``[0, C)``, and return a Python ``float``; ``reliability_diagram`` plots the
bins of the ECE (it needs matplotlib, imported only when it is called).

Keras (streaming) versions for ``model.compile(metrics=...)``, which also
average K*B member rows: ``EnsembleAccuracy``, ``EnsembleNLL``, ``BrierScore``,
``ExpectedCalibrationError`` (from ``rank1_keras.metrics.streaming``).
Temperature scaling, which recalibrates the probabilities, is in
``rank1_keras.post_processing``.

Inputs are checked (``ValueError`` on bad shapes, labels, or rows that are not
distributions) and computed in float64.

Example:

>>> import numpy as np
>>> probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> labels = np.array([0, 1, 1])
>>> evaluate_classifier(probabilities, labels)["accuracy"]  # 2 of 3 right
0.6666666666666666
"""

import os

import numpy as np

from rank1_keras.metrics.checks import _LOG_FLOOR, _validate, _validate_num_bins


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
    num_bins = _validate_num_bins(num_bins)
    _, correct_sums, confidence_sums = _calibration_bins(
        probabilities, labels, num_bins
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
    """Computes the accuracy and calibration metrics of this module at once.

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


def reliability_diagram(probabilities, labels, path, num_bins=15, title=None):
    """Writes a reliability diagram of the ECE's confidence bins as a PNG.

    The bins are exactly those of ``expected_calibration_error``: ``B =
    num_bins`` equal-width bins ``(b/B, (b+1)/B]`` of the confidence
    ``conf_i = max_c p_ic``, the first one also holding 0. The upper panel
    draws, for every non-empty bin ``S_b``, a bar of height ``acc(S_b)`` (the
    fraction of correct predictions), a marker at the mean confidence
    ``conf(S_b)`` and the diagonal ``accuracy = confidence`` of a perfectly
    calibrated model; the lower panel draws the bin counts ``|S_b|``. The
    title carries ``ece = sum_b (|S_b| / N) |acc(S_b) - conf(S_b)|``.

    matplotlib is imported only here (and drawn with the Agg canvas, leaving
    pyplot and the global backend alone); without it this raises an
    ``ImportError`` that says how to install it. The inputs are checked first,
    so bad inputs raise ``ValueError`` either way.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.
        path: ``str`` or ``os.PathLike``, the file to write. It is written as
            PNG whatever its extension.
        num_bins: Positive int, the number of confidence bins ``B``.
        title: Optional ``str`` put before the ECE in the title.

    Returns:
        ``path``, as given.

    Raises:
        ImportError: If matplotlib is not installed.

    Example:

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     path = os.path.join(directory, "reliability.png")
    ...     try:
    ...         reliability_diagram([[0.8, 0.2], [0.3, 0.7]], [0, 1], path,
    ...                             title="validation") == path
    ...     except ImportError:  # matplotlib is not installed
    ...         True
    True
    """
    probabilities, labels = _validate(probabilities, labels)
    num_bins = _validate_num_bins(num_bins)
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            f"path must be a str or os.PathLike; got {path!r} "
            f"of type {type(path).__name__}"
        )
    if title is not None and not isinstance(title, str):
        raise ValueError(
            f"title must be a str or None; got {title!r} "
            f"of type {type(title).__name__}"
        )
    counts, correct_sums, confidence_sums = _calibration_bins(
        probabilities, labels, num_bins
    )
    # The same expression as expected_calibration_error, so the same float.
    ece = float(
        np.sum(np.abs(correct_sums - confidence_sums)) / labels.shape[0]
    )

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "reliability_diagram needs matplotlib, which is not installed; "
            "install it with `pip install matplotlib` (or install this "
            "package with its plotting extra: "
            "`pip install rank1-keras[plots]`)"
        ) from error

    edges = np.linspace(0.0, 1.0, num_bins + 1)
    width = 1.0 / num_bins
    nonempty = counts > 0
    bin_accuracy = correct_sums[nonempty] / counts[nonempty]
    bin_confidence = confidence_sums[nonempty] / counts[nonempty]
    lefts = edges[:-1][nonempty]

    figure = Figure(figsize=(5.0, 6.0))
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(lefts, bin_accuracy, width=width, align="edge",
            edgecolor="black", color="tab:blue", label="accuracy")
    top.plot(lefts + width / 2, bin_confidence, "o", color="tab:red",
             markersize=4, label="mean confidence")
    top.plot([0.0, 1.0], [0.0, 1.0], "--", color="gray",
             label="perfect calibration")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize="small")
    heading = f"ECE = {ece:.4f} ({num_bins} bins, N = {labels.shape[0]})"
    top.set_title(heading if title is None else f"{title}\n{heading}")

    bottom.bar(edges[:-1], counts, width=width, align="edge",
               edgecolor="black", color="tab:gray")
    for left, count in zip(lefts, counts[nonempty]):
        bottom.annotate(f"{int(count)}", (left + width / 2, count),
                        ha="center", va="bottom", fontsize="x-small")
    bottom.set_ylim(0.0, 1.2 * float(counts.max()))
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("count")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path


def _calibration_bins(probabilities, labels, num_bins):
    """Per-bin counts, correct sums and confidence sums of the ECE's bins."""
    confidences = np.max(probabilities, axis=1)
    correct = (np.argmax(probabilities, axis=1) == labels).astype(np.float64)

    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # side="left" counts the inner edges strictly below each confidence, so a
    # confidence equal to an edge goes to the bin it closes: bins are (lo, hi].
    # 0 lands in bin 0, and anything above 1 (allowed by the row-sum tolerance)
    # in the last bin.
    bin_indices = np.searchsorted(edges[1:-1], confidences, side="left")

    counts = np.bincount(bin_indices, minlength=num_bins).astype(np.float64)
    confidence_sums = np.bincount(
        bin_indices, weights=confidences, minlength=num_bins
    )
    correct_sums = np.bincount(
        bin_indices, weights=correct, minlength=num_bins
    )
    return counts, correct_sums, confidence_sums
