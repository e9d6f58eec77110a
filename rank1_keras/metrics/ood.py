"""Out-of-distribution (OOD) detection from predicted class probabilities.

``ood_scores`` turns ``probabilities`` of shape ``(N, C)`` into scores of
shape ``(N,)`` where higher means more likely out-of-distribution, and
``ood_auroc`` and ``ood_aupr`` rate how well 1-D scores of in-distribution
(``(n,)``) and out-of-distribution (``(m,)``) examples separate the two, as a
Python ``float``.

Example:

>>> in_scores = ood_scores([[0.9, 0.1], [0.8, 0.2]])   # confident: 0.1, 0.2
>>> out_scores = ood_scores([[0.5, 0.5], [0.6, 0.4]])  # unsure: 0.5, 0.4
>>> ood_auroc(in_scores, out_scores)
1.0
"""

import numpy as np

from rank1_keras.metrics.checks import _entropy, _validate_probabilities, _validate_scores


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
