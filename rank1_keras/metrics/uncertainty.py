"""Predictive uncertainty and its decomposition, and the diversity of ensemble members.

``predictive_entropy`` takes ``probabilities`` of shape ``(N, C)`` and returns
the total uncertainty of each example; ``mutual_information`` (the epistemic
part) takes ``member_probabilities`` of shape ``(K, N, C)`` (``K`` ensemble
members or posterior samples) and returns one value per example.
``disagreement``, ``normalized_disagreement`` and ``average_kl`` measure the
diversity of the ``K >= 2`` members and return a Python ``float``.

Inputs are checked (``ValueError`` on bad shapes, labels, or rows that are not
distributions) and computed in float64.

Example:

>>> # Two confident members that disagree: all the uncertainty is epistemic.
>>> members = [[[1.0, 0.0]], [[0.0, 1.0]]]
>>> disagreement(members), mutual_information(members).round(6).tolist()
(1.0, [0.693147])
"""

import numpy as np

from rank1_keras.metrics.checks import (
    _LOG_FLOOR,
    _entropy,
    _validate_labels,
    _validate_member_probabilities,
    _validate_probabilities,
)


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
