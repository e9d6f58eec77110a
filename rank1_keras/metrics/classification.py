"""NumPy metrics for classifiers that output class probabilities.

Calibration and accuracy: ``accuracy``, ``negative_log_likelihood``,
``expected_calibration_error``, ``brier_score`` and ``evaluate_classifier``
take ``probabilities`` of shape ``(N, C)`` (row ``i`` is the predicted
distribution ``p_i`` over ``C`` classes for example ``i``) and integer
``labels`` ``y`` of shape ``(N,)`` in ``[0, C)``, and return a Python
``float``; ``reliability_diagram`` plots the bins of the ECE (it needs
matplotlib, imported only when it is called).

Uncertainty: ``predictive_entropy`` and ``mutual_information`` return one value
per example; ``disagreement``, ``normalized_disagreement`` and ``average_kl``
measure the diversity of ``member_probabilities`` of shape ``(K, N, C)``
(``K`` ensemble members or posterior samples).

Out-of-distribution detection: ``ood_scores`` turns probabilities into scores
where higher means more likely out-of-distribution, and ``ood_auroc`` and
``ood_aupr`` rate how well scores separate in- from out-of-distribution data.

Temperature scaling: ``fit_temperature`` (or
``fit_temperature_from_probabilities``) fits ``T`` on a validation split and
``apply_temperature`` (or ``apply_temperature_to_probabilities``) applies it.

Keras (streaming) versions for ``model.compile(metrics=...)``, which also
average K*B member rows: ``EnsembleAccuracy``, ``EnsembleNLL``, ``BrierScore``,
``ExpectedCalibrationError`` (from ``rank1_keras.metrics.streaming``).

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


def mean_iou(probabilities, labels):
    """Mean intersection over union of the predicted and true class regions (segmentation).

    ``IoU_c = |pred = c and y = c| / |pred = c or y = c|``, averaged over the
    classes that occur in the predictions or the labels. Give every pixel as
    one row (``(N * H * W, C)`` probabilities, flattened labels); leave
    ignored pixels out before calling.

    Example:

    >>> mean_iou([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], [0, 1, 1])   # class 0: 1/2, class 1: 1/2
    0.5
    """
    probabilities, labels = _validate(probabilities, labels)
    predictions = np.argmax(probabilities, axis=1)
    scores = []
    for c in range(probabilities.shape[1]):
        union = np.sum((predictions == c) | (labels == c))
        if union:
            scores.append(np.sum((predictions == c) & (labels == c)) / union)
    return float(np.mean(scores))


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


def predictive_entropy(probabilities):
    """Entropy of each predicted distribution, in nats.

    ``H[p_i] = -sum_c p_ic log p_ic`` with ``0 log 0 = 0``. It is 0 for a
    one-hot prediction and ``log C`` for the uniform one. For the average
    ``p_i = mean_k p_ki`` of an ensemble or posterior samples this is the total
    predictive uncertainty, ``mutual_information`` plus the mean member
    entropy.

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.

    Returns:
        A float64 array of shape ``(N,)``.

    Example:

    >>> # H([1/2, 1/2]) = log 2 ~= 0.693147 and H([1, 0]) = 0.
    >>> predictive_entropy([[0.5, 0.5], [1.0, 0.0]]).round(6).tolist()
    [0.693147, 0.0]
    """
    probabilities = _validate_probabilities(probabilities)
    return _entropy(probabilities)


def mutual_information(member_probabilities):
    """Mutual information between the prediction and the members (epistemic).

    With ``p_ki`` the distribution of member (or sample) ``k`` for example
    ``i`` and ``pbar_i = (1/K) sum_k p_ki``:

    ``mi_i = H[pbar_i] - (1/K) sum_k H[p_ki]``

    (the BALD score; Houlsby et al., 2011). The total uncertainty
    ``H[pbar_i]`` splits into this epistemic part (the members disagree) and
    the mean member entropy, the aleatoric part. By the concavity of ``H`` it
    is non-negative, up to rounding (values of order ``-1e-16`` are not
    clipped), and at most ``log C`` and ``log K``. Entropies use ``0 log 0 =
    0``.

    Args:
        member_probabilities: Array of shape ``(K, N, C)``; each ``(k, i)``
            row is a distribution. ``K = 1`` gives zeros.

    Returns:
        A float64 array of shape ``(N,)``.

    Example:

    >>> # Members [1, 0] and [0, 1]: H[1/2, 1/2] - (0 + 0)/2 = log 2.
    >>> # Identical members: H[p] - H[p] = 0.
    >>> members = [[[1.0, 0.0], [0.3, 0.7]], [[0.0, 1.0], [0.3, 0.7]]]
    >>> mutual_information(members).round(6).tolist()
    [0.693147, 0.0]
    """
    member_probabilities = _validate_member_probabilities(
        member_probabilities
    )
    total = _entropy(np.mean(member_probabilities, axis=0))
    expected = np.mean(_entropy(member_probabilities), axis=0)
    return total - expected


def ood_scores(probabilities, kind="max_probability"):
    """Out-of-distribution scores: the higher, the more likely OOD.

    ``kind="max_probability"``: ``s_i = 1 - max_c p_ic`` (one minus the
    maximum softmax probability; Hendrycks and Gimpel, 2017).
    ``kind="entropy"``: ``s_i = H[p_i] = -sum_c p_ic log p_ic``, in nats (see
    ``predictive_entropy``).

    Args:
        probabilities: Array of shape ``(N, C)``; rows are distributions.
        kind: ``"max_probability"`` or ``"entropy"``.

    Returns:
        A float64 array of shape ``(N,)``, for ``ood_auroc`` and ``ood_aupr``.

    Example:

    >>> ood_scores([[0.9, 0.1], [0.5, 0.5]]).round(6).tolist()
    [0.1, 0.5]
    >>> ood_scores([[1.0, 0.0], [0.5, 0.5]], kind="entropy").round(6).tolist()
    [0.0, 0.693147]
    """
    if kind not in _OOD_SCORE_KINDS:
        raise ValueError(
            f"kind must be one of {', '.join(map(repr, _OOD_SCORE_KINDS))}; "
            f"got {kind!r}"
        )
    probabilities = _validate_probabilities(probabilities)
    if kind == "entropy":
        return _entropy(probabilities)
    return 1.0 - np.max(probabilities, axis=1)


_OOD_SCORE_KINDS = ("max_probability", "entropy")


def ood_auroc(in_scores, out_scores):
    """Area under the ROC curve for detecting out-of-distribution examples.

    The scores follow the convention of ``ood_scores``: higher means more
    likely out-of-distribution, so the out-of-distribution examples are the
    positives. By the Mann-Whitney statistic, with ``n = len(in_scores)``,
    ``m = len(out_scores)``:

    ``auroc = (1 / (n m)) sum_i sum_j (1[o_j > s_i] + 1[o_j == s_i] / 2)``

    the probability that a random out-of-distribution example scores higher
    than a random in-distribution one, ties counting 1/2. It equals
    ``sklearn.metrics.roc_auc_score`` with labels 0 (in) and 1 (out): 1 for
    perfect separation, 0.5 for uninformative scores.

    Args:
        in_scores: Real array of shape ``(n,)``, the scores of the
            in-distribution examples.
        out_scores: Real array of shape ``(m,)``, the scores of the
            out-of-distribution examples.

    Returns:
        A float in ``[0, 1]``.

    Example:

    >>> # Of the 4 (out, in) pairs, 0.5 > 0.1, 0.9 > 0.1, 0.9 > 0.5 and
    >>> # 0.5 == 0.5 counts 1/2: (3 + 1/2) / 4.
    >>> ood_auroc([0.1, 0.5], [0.5, 0.9])
    0.875
    """
    in_scores = _validate_scores(in_scores, "in_scores")
    out_scores = _validate_scores(out_scores, "out_scores")
    sorted_in = np.sort(in_scores)
    # For each out score, the number of in scores strictly below it and the
    # number equal to it; the sums are integers, exact in float64 up to 2^53.
    below = np.searchsorted(sorted_in, out_scores, side="left")
    below_or_equal = np.searchsorted(sorted_in, out_scores, side="right")
    wins = np.sum(below, dtype=np.float64)
    ties = np.sum(below_or_equal - below, dtype=np.float64)
    return float(
        (wins + 0.5 * ties) / (in_scores.shape[0] * out_scores.shape[0])
    )


def ood_aupr(in_scores, out_scores):
    """Area under the precision-recall curve (average precision), OOD positive.

    Higher scores mean more likely out-of-distribution, and the
    out-of-distribution examples are the positives. With the distinct score
    values ``t_1 > t_2 > ...`` as thresholds, ``P_k`` and ``R_k`` the precision
    and recall of "score >= t_k", and ``R_0 = 0``:

    ``aupr = sum_k (R_k - R_{k-1}) P_k``

    the step-wise average precision of
    ``sklearn.metrics.average_precision_score`` (no interpolation; tied scores
    enter together). Its value for random scores is the fraction of positives
    ``m / (n + m)``, not 0.5.

    Args:
        in_scores: Real array of shape ``(n,)``, the scores of the
            in-distribution examples.
        out_scores: Real array of shape ``(m,)``, the scores of the
            out-of-distribution examples.

    Returns:
        A float in ``(0, 1]``.

    Example:

    >>> # Thresholds 0.8 (1 out of 1 flagged is out: P = 1, R = 1/2) and
    >>> # 0.35 (2 of 3: P = 2/3, R = 1): 1/2 * 1 + 1/2 * 2/3 = 5/6.
    >>> round(ood_aupr([0.1, 0.4], [0.35, 0.8]), 6)
    0.833333
    """
    in_scores = _validate_scores(in_scores, "in_scores")
    out_scores = _validate_scores(out_scores, "out_scores")
    scores = np.concatenate([in_scores, out_scores])
    is_out = np.concatenate([
        np.zeros(in_scores.shape[0]), np.ones(out_scores.shape[0])
    ])
    order = np.argsort(-scores, kind="stable")
    scores, is_out = scores[order], is_out[order]
    # The last position of each run of equal scores: flagging "score >= t"
    # takes the whole run.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.shape[0] - 1]
    true_positives = np.cumsum(is_out)[last_of_run]
    flagged = last_of_run + 1.0
    precision = true_positives / flagged
    recall = true_positives / out_scores.shape[0]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def disagreement(member_probabilities):
    """Fraction of member pairs whose predicted classes differ.

    With ``yhat_ki = argmax_c p_kic`` the prediction of member ``k`` for
    example ``i`` (ties to the lowest class, as in ``np.argmax``):

    ``disagreement = (2 / (K (K - 1) N)) sum_i sum_{k < l}
    1[yhat_ki != yhat_li]``

    0 when all members predict alike, at most 1 (every pair differs, possible when ``C >= K``). For
    each example it uses ``#{k < l : yhat_ki == yhat_li} = sum_c n_ic (n_ic -
    1) / 2`` with ``n_ic`` the number of members predicting ``c``.

    Args:
        member_probabilities: Array of shape ``(K, N, C)`` with ``K >= 2``;
            each ``(k, i)`` row is a distribution.

    Returns:
        A float in ``[0, 1]``.

    Example:

    >>> # Example 0: predictions 0, 0, 1 disagree in 2 of the 3 pairs;
    >>> # example 1: all 1, no pair. (2 + 0) / (3 pairs * 2 examples).
    >>> members = [[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.4, 0.6]],
    ...            [[0.3, 0.7], [0.1, 0.9]]]
    >>> round(disagreement(members), 6)
    0.333333
    """
    member_probabilities = _validate_member_probabilities(
        member_probabilities, min_members=2, metric="disagreement"
    )
    num_members, num_examples, num_classes = member_probabilities.shape
    predictions = np.argmax(member_probabilities, axis=2)  # (K, N)
    votes = np.zeros((num_examples, num_classes))
    np.add.at(votes, (np.tile(np.arange(num_examples), num_members),
                      predictions.ravel()), 1.0)
    pairs = num_members * (num_members - 1) / 2
    agreeing = np.sum(votes * (votes - 1.0) / 2.0)
    return float((num_examples * pairs - agreeing) / (num_examples * pairs))


def normalized_disagreement(member_probabilities, labels):
    """Disagreement divided by the error rate of the ensemble average.

    ``normalized_disagreement = disagreement / (1 - accuracy(pbar, y))`` with
    ``pbar_i = (1/K) sum_k p_ki``, so that ensembles of different accuracy can
    be compared (Fort et al., 2019: diverse members of a good ensemble
    disagree on about as many examples as the ensemble gets wrong).

    Args:
        member_probabilities: Array of shape ``(K, N, C)`` with ``K >= 2``;
            each ``(k, i)`` row is a distribution.
        labels: Integer array of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        A non-negative float.

    Raises:
        ValueError: If the ensemble average classifies every example
            correctly (the error rate, the denominator, is 0), or on bad
            inputs.

    Example:

    >>> # Disagreement 1/3 (see `disagreement`); the average [0.6, 0.4] and
    >>> # [0.233, 0.767] gets label 1 of example 0 wrong: 1/3 / (1/2) = 2/3.
    >>> members = [[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.4, 0.6]],
    ...            [[0.3, 0.7], [0.1, 0.9]]]
    >>> round(normalized_disagreement(members, [1, 1]), 6)
    0.666667
    """
    member_probabilities = _validate_member_probabilities(
        member_probabilities, min_members=2, metric="normalized_disagreement"
    )
    labels = _validate_labels(
        labels, *member_probabilities.shape[1:],
        "example of member_probabilities"
    )
    average = np.mean(member_probabilities, axis=0)
    error_rate = float(np.mean(np.argmax(average, axis=1) != labels))
    if error_rate == 0.0:
        raise ValueError(
            "normalized_disagreement needs a positive error rate of the "
            "ensemble average (the denominator); got 0.0: every example of "
            "labels is classified correctly"
        )
    return disagreement(member_probabilities) / error_rate


def average_kl(member_probabilities):
    """Mean KL divergence between the predictions of two different members.

    ``average_kl = (1 / (K (K - 1) N)) sum_i sum_{k != l} KL(p_ki || p_li)``

    over ordered pairs, with ``KL(p || q) = sum_c p_c (log max(p_c, tiny) -
    log max(q_c, tiny))`` and ``tiny`` the smallest positive normal float64
    (``np.finfo(np.float64).tiny``, about ``2.2e-308``), the floor of
    ``negative_log_likelihood``. Terms with ``p_c = 0`` are 0, and a ``q_c =
    0`` where ``p_c > 0`` costs ``p_c (log p_c + 708.4)`` instead of an
    infinity.

    Args:
        member_probabilities: Array of shape ``(K, N, C)`` with ``K >= 2``;
            each ``(k, i)`` row is a distribution.

    Returns:
        A non-negative float (0 when all members agree exactly).

    Example:

    >>> # KL([.5, .5] || [.25, .75]) = .5 log(4/3) ~= 0.143841 and
    >>> # KL([.25, .75] || [.5, .5]) = .25 log .5 + .75 log 1.5 ~= 0.130812.
    >>> round(average_kl([[[0.5, 0.5]], [[0.25, 0.75]]]), 6)
    0.137327
    """
    member_probabilities = _validate_member_probabilities(
        member_probabilities, min_members=2, metric="average_kl"
    )
    num_members, num_examples, _ = member_probabilities.shape
    log_probabilities = np.log(np.maximum(member_probabilities, _LOG_FLOOR))
    total = 0.0
    for k in range(num_members):
        # KL(p_k || p_l) for every l at once; the l = k term is exactly 0.
        log_ratios = log_probabilities[k] - log_probabilities  # (K, N, C)
        total += np.sum(member_probabilities[k] * log_ratios)
    return float(total / (num_members * (num_members - 1) * num_examples))


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


def _entropy(probabilities):
    """-sum p log p over the last axis, with 0 log 0 = 0."""
    positive = probabilities > 0
    logs = np.log(np.where(positive, probabilities, 1.0))
    # `0.0 - x` rather than `-x` so a one-hot row gives 0.0, not -0.0.
    return 0.0 - np.sum(np.where(positive, probabilities * logs, 0.0), axis=-1)


def _log_softmax(logits):
    """Log-softmax over the last axis, shifted by the maximum for stability."""
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


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


def _validate_num_bins(num_bins):
    """Checks that num_bins is a positive int (not a bool) and returns it."""
    if isinstance(num_bins, (bool, np.bool_)) or not isinstance(
        num_bins, (int, np.integer)
    ):
        raise ValueError(
            f"num_bins must be a positive int; got {num_bins!r} "
            f"of type {type(num_bins).__name__}"
        )
    if num_bins < 1:
        raise ValueError(f"num_bins must be a positive int; got {num_bins}")
    return int(num_bins)


def _validate(probabilities, labels):
    """Checks the inputs and returns them as float64 and int64 arrays."""
    probabilities = _as_real_array(
        probabilities, "probabilities", "(examples, classes)",
        "one example and one class",
    )
    labels = _validate_labels(labels, *probabilities.shape,
                              "row of probabilities")
    _check_distributions(probabilities, "probabilities")
    return probabilities, labels


def _validate_probabilities(probabilities):
    """Checks a (N, C) array of distributions; returns it as float64."""
    probabilities = _as_real_array(
        probabilities, "probabilities", "(examples, classes)",
        "one example and one class",
    )
    _check_distributions(probabilities, "probabilities")
    return probabilities


def _validate_member_probabilities(member_probabilities, min_members=1,
                                   metric=None):
    """Checks a (K, N, C) array of distributions; returns it as float64."""
    member_probabilities = _as_real_array(
        member_probabilities, "member_probabilities",
        "(members, examples, classes)",
        "one member, one example and one class",
    )
    num_members = member_probabilities.shape[0]
    if num_members < min_members:
        raise ValueError(
            f"member_probabilities must have at least {min_members} members "
            f"(K >= {min_members}) for {metric}; got K = {num_members} "
            f"(shape {member_probabilities.shape})"
        )
    _check_distributions(member_probabilities, "member_probabilities")
    return member_probabilities


def _validate_logits(logits):
    """Checks a finite (N, C) real array; returns it as float64."""
    logits = _as_real_array(
        logits, "logits", "(examples, classes)", "one example and one class"
    )
    if not np.all(np.isfinite(logits)):
        bad_row = int(np.argwhere(~np.isfinite(logits))[0, 0])
        raise ValueError(
            f"logits must be finite; row {bad_row} is "
            f"{logits[bad_row].tolist()}"
        )
    return logits


def _validate_scores(scores, name):
    """Checks a finite non-empty 1-D real array; returns it as float64."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array (examples,); got shape {scores.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError(
            f"{name} must have at least one example; got shape {scores.shape}"
        )
    if not (
        np.issubdtype(scores.dtype, np.floating)
        or np.issubdtype(scores.dtype, np.integer)
    ):
        raise ValueError(
            f"{name} must be a real numeric array; got dtype {scores.dtype}"
        )
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(
            f"{name} must be finite; entry {bad} is {scores[bad]!r}"
        )
    return scores


def _validate_temperature(temperature):
    """Checks that temperature is a finite positive real; returns a float."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(
        temperature, (int, float, np.integer, np.floating)
    ):
        raise ValueError(
            f"temperature must be a finite positive real number; got "
            f"{temperature!r} of type {type(temperature).__name__}"
        )
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a finite positive real number; got "
            f"{temperature!r}"
        )
    return float(temperature)


def _validate_bounds(bounds):
    """Checks (T_min, T_max) with 0 < T_min < T_max finite; returns floats."""
    try:
        t_min, t_max = bounds
        t_min, t_max = (_validate_temperature(t) for t in (t_min, t_max))
    except (TypeError, ValueError):
        raise ValueError(
            "bounds must be a pair (T_min, T_max) of finite positive real "
            f"numbers with T_min < T_max; got {bounds!r}"
        ) from None
    if not t_min < t_max:
        raise ValueError(
            "bounds must be a pair (T_min, T_max) of finite positive real "
            f"numbers with T_min < T_max; got {bounds!r}"
        )
    return t_min, t_max


def _as_real_array(values, name, layout, at_least):
    """Checks the shape (non-empty, len(layout) axes) and dtype; to float64."""
    values = np.asarray(values)
    ndim = layout.count(",") + 1
    if values.ndim != ndim:
        raise ValueError(
            f"{name} must be a {ndim}-D array {layout}; "
            f"got shape {values.shape}"
        )
    if 0 in values.shape:
        raise ValueError(
            f"{name} must have at least {at_least}; got shape {values.shape}"
        )
    if not (
        np.issubdtype(values.dtype, np.floating)
        or np.issubdtype(values.dtype, np.integer)
        or values.dtype == np.bool_
    ):
        raise ValueError(
            f"{name} must be a real numeric array; got dtype {values.dtype}"
        )
    return values.astype(np.float64)


def _validate_labels(labels, num_examples, num_classes, per):
    """Checks class-index labels, one per `per`; returns them as int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"labels must be a 1-D array (examples,); got shape {labels.shape}"
        )
    if labels.shape[0] != num_examples:
        raise ValueError(
            f"labels must have one entry per {per} "
            f"({num_examples}); got {labels.shape[0]}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array; got dtype {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}); got values "
            f"from {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64)


def _check_distributions(probabilities, name):
    """Checks that the last axis holds distributions (finite, >= 0, sum 1)."""

    def where(index):
        # "row i" for (N, C) arrays, "member k, row i" for (K, N, C) ones.
        index = np.unravel_index(int(index), probabilities.shape[:-1])
        place = f"row {int(index[-1])}"
        if len(index) == 2:
            place = f"member {int(index[0])}, {place}"
        return place, probabilities[index]

    rows = probabilities.reshape(-1, probabilities.shape[-1])
    bad = np.flatnonzero(~np.all(np.isfinite(rows), axis=1))
    if bad.size:
        place, row = where(bad[0])
        raise ValueError(
            f"{name} must be finite; {place} is {row.tolist()}"
        )
    bad = np.flatnonzero(np.any(rows < 0, axis=1))
    if bad.size:
        place, row = where(bad[0])
        raise ValueError(
            f"{name} must be non-negative; {place} is {row.tolist()}"
        )
    row_sums = np.sum(rows, axis=1)
    bad = np.flatnonzero(np.abs(row_sums - 1.0) > _SUM_TOLERANCE)
    if bad.size:
        place, _ = where(bad[0])
        raise ValueError(
            f"{name} rows must sum to 1 (within {_SUM_TOLERANCE}); "
            f"{place} sums to {row_sums[bad[0]]!r} "
            f"({bad.size} bad row{'s' if bad.size > 1 else ''})"
        )
