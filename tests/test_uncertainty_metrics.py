"""Tests for the uncertainty, OOD, diversity and plotting functions of
rank1_keras.metrics and the temperature scaling of rank1_keras.post_processing,
against hand-derived values, loop-based references written here, and
scikit-learn for AUROC / AUPR."""

import math
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.metrics import average_precision_score, roc_auc_score

from rank1_keras import metrics, post_processing
from rank1_keras.metrics import calibration

LOG2 = math.log(2.0)
TINY = np.finfo(np.float64).tiny  # ~2.2e-308, the floor of the NLL
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MISSING_MATPLOTLIB = (
    r"reliability_diagram needs matplotlib, which is not installed; install "
    r"it with `pip install matplotlib` \(or install this package with its "
    r"plotting extra: `pip install rank1-keras\[plots\]`\)"
)


def _softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _random_probabilities(rng, shape, scale=2.0, zeros=False):
    probabilities = _softmax(rng.normal(scale=scale, size=shape))
    if zeros:
        # Exact zeros (renormalised) exercise the 0 log 0 = 0 convention.
        probabilities[rng.random(shape) < 0.2] = 0.0
        probabilities[..., 0] += 1e-3
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return probabilities


# --------------------------------------------------------------------------
# Loop-based references.


def _loop_entropy(row):
    return -sum(float(p) * math.log(float(p)) for p in row if p > 0)


def _loop_mutual_information(members, i):
    k_count, c_count = len(members), len(members[0][i])
    mean = [sum(members[k][i][c] for k in range(k_count)) / k_count
            for c in range(c_count)]
    return _loop_entropy(mean) - sum(
        _loop_entropy(members[k][i]) for k in range(k_count)) / k_count


def _loop_argmax(row):
    return max(range(len(row)), key=lambda c: (row[c], -c))


def _loop_disagreement(members):
    k_count, n = len(members), len(members[0])
    different, pairs = 0, 0
    for i in range(n):
        for k in range(k_count):
            for l in range(k + 1, k_count):
                pairs += 1
                different += (_loop_argmax(members[k][i])
                              != _loop_argmax(members[l][i]))
    return different / pairs


def _loop_kl(p, q):
    return sum(
        p_c * (math.log(max(p_c, TINY)) - math.log(max(q_c, TINY)))
        for p_c, q_c in zip(p, q) if p_c > 0
    )


def _loop_average_kl(members):
    k_count, n = len(members), len(members[0])
    total, count = 0.0, 0
    for i in range(n):
        for k in range(k_count):
            for l in range(k_count):
                if k != l:
                    total += _loop_kl(members[k][i], members[l][i])
                    count += 1
    return total / count


def _loop_auroc(in_scores, out_scores):
    wins = 0.0
    for o in out_scores:
        for s in in_scores:
            wins += 1.0 if o > s else 0.5 if o == s else 0.0
    return wins / (len(in_scores) * len(out_scores))


def _loop_aupr(in_scores, out_scores):
    # Threshold at every distinct score, highest first; flag score >= t.
    pairs = [(s, 0) for s in in_scores] + [(s, 1) for s in out_scores]
    total, previous_recall = 0.0, 0.0
    for t in sorted({s for s, _ in pairs}, reverse=True):
        flagged = [y for s, y in pairs if s >= t]
        precision = sum(flagged) / len(flagged)
        recall = sum(flagged) / len(out_scores)
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def _loop_nll(logits, labels, temperature):
    total = 0.0
    for row, label in zip(logits, labels):
        scaled = [z / temperature for z in row]
        top = max(scaled)
        log_norm = top + math.log(sum(math.exp(z - top) for z in scaled))
        total += log_norm - scaled[label]
    return total / len(labels)


# --------------------------------------------------------------------------
# predictive_entropy and mutual_information.


def test_predictive_entropy_hand_cases():
    # H([1/2, 1/2]) = -2 * 1/2 log 1/2 = log 2
    # H([1, 0])     = -(1 log 1 + 0 log 0) = 0        (0 log 0 = 0)
    # H(uniform 4)  = log 4
    # H([1/4, 3/4]) = -(1/4 log 1/4 + 3/4 log 3/4)
    #               = 1/4 log 4 + 3/4 log(4/3) = log 4 - 3/4 log 3 ~= 0.562335
    entropy = metrics.predictive_entropy(
        [[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0],
         [0.25, 0.25, 0.25, 0.25], [0.25, 0.75, 0.0, 0.0]])
    assert entropy.shape == (4,) and entropy.dtype == np.float64
    np.testing.assert_allclose(
        entropy,
        [LOG2, 0.0, math.log(4.0), math.log(4.0) - 0.75 * math.log(3.0)],
        rtol=1e-14, atol=0)
    assert entropy[1] == 0.0 and not np.signbit(entropy[1])  # not -0.0
    assert entropy[3] == pytest.approx(0.562335, abs=1e-6)


def test_predictive_entropy_random_case_matches_loop_reference():
    rng = np.random.default_rng(0)
    probabilities = _random_probabilities(rng, (200, 6), zeros=True)
    assert np.any(probabilities == 0.0)
    expected = [_loop_entropy(row) for row in probabilities.tolist()]
    np.testing.assert_allclose(
        metrics.predictive_entropy(probabilities), expected,
        rtol=1e-12, atol=1e-15)


def test_mutual_information_hand_cases():
    # Example 0, members [1, 0] and [0, 1]: mean [1/2, 1/2] has entropy
    #   log 2, the members 0 each: MI = log 2 - 0 = log 2.
    # Example 1, identical members [0.3, 0.7]: H[p] - (H[p] + H[p]) / 2 = 0.
    # Example 2, members [1/2, 1/2] and [1, 0]: mean [3/4, 1/4] has entropy
    #   log 4 - 3/4 log 3 ~= 0.562335, the members (log 2 + 0) / 2:
    #   MI = log 4 - 3/4 log 3 - 1/2 log 2 = 3/2 log 2 - 3/4 log 3 ~= 0.215762.
    members = np.array([
        [[1.0, 0.0], [0.3, 0.7], [0.5, 0.5]],
        [[0.0, 1.0], [0.3, 0.7], [1.0, 0.0]],
    ])
    mi = metrics.mutual_information(members)
    assert mi.shape == (3,) and mi.dtype == np.float64
    assert mi[0] == pytest.approx(LOG2, rel=1e-14)
    assert mi[1] == 0.0
    assert mi[2] == pytest.approx(1.5 * LOG2 - 0.75 * math.log(3.0),
                                  rel=1e-12)
    assert mi[2] == pytest.approx(0.215762, abs=1e-6)


def test_mutual_information_random_case_matches_loop_reference():
    rng = np.random.default_rng(1)
    members = _random_probabilities(rng, (5, 150, 4), zeros=True)
    mi = metrics.mutual_information(members)
    members_list = members.tolist()
    expected = [_loop_mutual_information(members_list, i) for i in range(150)]
    np.testing.assert_allclose(mi, expected, rtol=1e-10, atol=1e-13)
    # Non-negative up to rounding, at most min(log K, log C).
    assert np.all(mi >= -1e-12)
    assert np.all(mi <= math.log(4.0) + 1e-12)
    # Total = epistemic + aleatoric: H[mean] = MI + mean_k H[p_k].
    total = metrics.predictive_entropy(members.mean(axis=0))
    aleatoric = np.mean(
        [metrics.predictive_entropy(member) for member in members], axis=0)
    np.testing.assert_allclose(total, mi + aleatoric, rtol=1e-12, atol=1e-14)


def test_mutual_information_of_one_member_is_zero():
    rng = np.random.default_rng(2)
    members = _random_probabilities(rng, (1, 10, 3))
    np.testing.assert_array_equal(metrics.mutual_information(members),
                                  np.zeros(10))


# --------------------------------------------------------------------------
# ood_scores, ood_auroc and ood_aupr.


def test_ood_scores_hand_cases():
    probabilities = [[0.9, 0.1, 0.0], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]
    # 1 - max p: 1 - 0.9 = 0.1, 1 - 0.5 = 0.5, 1 - 1/3 = 2/3.
    np.testing.assert_allclose(
        metrics.ood_scores(probabilities), [0.1, 0.5, 2 / 3], rtol=1e-14)
    np.testing.assert_allclose(
        metrics.ood_scores(probabilities, kind="max_probability"),
        [0.1, 0.5, 2 / 3], rtol=1e-14)
    # Entropies: -(0.9 log 0.9 + 0.1 log 0.1); 1/2 log 2 + 2 * 1/4 log 4
    # = 3/2 log 2; log 3.
    np.testing.assert_allclose(
        metrics.ood_scores(probabilities, kind="entropy"),
        [-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), 1.5 * LOG2,
         math.log(3.0)], rtol=1e-14)


def test_ood_scores_random_case_matches_loop_reference():
    rng = np.random.default_rng(3)
    probabilities = _random_probabilities(rng, (100, 5), zeros=True)
    rows = probabilities.tolist()
    np.testing.assert_allclose(
        metrics.ood_scores(probabilities), [1 - max(row) for row in rows],
        rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(
        metrics.ood_scores(probabilities, kind="entropy"),
        [_loop_entropy(row) for row in rows], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["max_prob", "Entropy", "", None, 1])
def test_ood_scores_rejects_unknown_kind(kind):
    with pytest.raises(
        ValueError,
        match=r"kind must be one of 'max_probability', 'entropy'; got "):
        metrics.ood_scores([[0.5, 0.5]], kind=kind)


def test_ood_auroc_and_aupr_hand_cases():
    # in = [0.1, 0.4], out = [0.35, 0.8]. Pairs (out, in): 0.35 > 0.1,
    # 0.35 < 0.4, 0.8 > 0.1, 0.8 > 0.4: AUROC = 3 / 4.
    assert metrics.ood_auroc([0.1, 0.4], [0.35, 0.8]) == 0.75
    # Descending: 0.8 (out), 0.4 (in), 0.35 (out), 0.1 (in).
    #   t = 0.8:  flagged {0.8}            P = 1,   R = 1/2
    #   t = 0.4:  flagged {0.8, 0.4}       P = 1/2, R = 1/2 (no recall step)
    #   t = 0.35: flagged {0.8, 0.4, 0.35} P = 2/3, R = 1
    # AP = 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 = 5/6.
    assert metrics.ood_aupr([0.1, 0.4], [0.35, 0.8]) == pytest.approx(
        5 / 6, rel=1e-14)
    # A tie between classes counts 1/2 in the AUROC: in = [0.1, 0.5],
    # out = [0.5, 0.9]: 0.5 > 0.1, 0.5 == 0.5 (1/2), 0.9 > both: 3.5 / 4.
    assert metrics.ood_auroc([0.1, 0.5], [0.5, 0.9]) == 0.875
    # For the AP, tied scores enter together: at t = 0.5 both 0.5's are
    # flagged at once: t = 0.9: P = 1, R = 1/2; t = 0.5: P = 2/3, R = 1.
    assert metrics.ood_aupr([0.1, 0.5], [0.5, 0.9]) == pytest.approx(
        5 / 6, rel=1e-14)


def test_ood_perfect_and_reversed_separation():
    in_scores = np.linspace(0.0, 0.4, 30)
    out_scores = np.linspace(0.5, 1.0, 20)
    # Every out score is above every in score.
    assert metrics.ood_auroc(in_scores, out_scores) == 1.0
    assert metrics.ood_aupr(in_scores, out_scores) == 1.0
    # Swapped roles: every out score below every in score.
    assert metrics.ood_auroc(out_scores, in_scores) == 0.0
    # The AP then sweeps all 50 in order; the first positive (recall 1/30)
    # comes after 20 negatives: reference loop and sklearn agree.
    labels = np.r_[np.zeros(20), np.ones(30)]
    assert metrics.ood_aupr(out_scores, in_scores) == pytest.approx(
        average_precision_score(labels, np.r_[out_scores, in_scores]),
        rel=1e-12)


def test_ood_identical_distributions():
    # The very same scores in and out: every pair is a tie or has a mirror
    # pair, so AUROC = 1/2 exactly.
    scores = np.random.default_rng(4).normal(size=500)
    assert metrics.ood_auroc(scores, scores) == 0.5
    # Independent samples of one distribution: about 1/2. The standard error
    # of the AUROC with n = m = 2000 is sqrt((n + m + 1) / (12 n m)) ~= 0.0065.
    rng = np.random.default_rng(5)
    auroc = metrics.ood_auroc(rng.normal(size=2000), rng.normal(size=2000))
    assert auroc == pytest.approx(0.5, abs=0.03)
    # All scores equal: every pair ties (AUROC 1/2), and the only threshold
    # flags everything: AP = precision = m / (n + m) = 10 / 40.
    assert metrics.ood_auroc(np.ones(30), np.ones(10)) == 0.5
    assert metrics.ood_aupr(np.ones(30), np.ones(10)) == 0.25


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_auroc_and_aupr_random_ties_match_sklearn_and_loops(seed):
    rng = np.random.default_rng(10 + seed)
    # Half-integer scores in [0, 5]: many ties within and across the sets.
    in_scores = rng.integers(0, 11, size=150) / 2
    out_scores = rng.integers(2, 13, size=90) / 2
    labels = np.r_[np.zeros(150), np.ones(90)]
    scores = np.r_[in_scores, out_scores]

    auroc = metrics.ood_auroc(in_scores, out_scores)
    assert auroc == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert auroc == pytest.approx(
        _loop_auroc(in_scores.tolist(), out_scores.tolist()), rel=1e-12)

    aupr = metrics.ood_aupr(in_scores, out_scores)
    assert aupr == pytest.approx(
        average_precision_score(labels, scores), rel=1e-12)
    assert aupr == pytest.approx(
        _loop_aupr(in_scores.tolist(), out_scores.tolist()), rel=1e-12)

    # The input order does not matter.
    assert metrics.ood_auroc(in_scores[::-1], rng.permutation(out_scores)) \
        == pytest.approx(auroc, rel=1e-15)
    assert metrics.ood_aupr(rng.permutation(in_scores), out_scores[::-1]) \
        == pytest.approx(aupr, rel=1e-15)


def test_ood_continuous_scores_from_probabilities_match_sklearn():
    # End to end: confident in-distribution predictions, flat OOD ones.
    rng = np.random.default_rng(6)
    in_probabilities = _random_probabilities(rng, (300, 10), scale=4.0)
    out_probabilities = _random_probabilities(rng, (200, 10), scale=1.0)
    labels = np.r_[np.zeros(300), np.ones(200)]
    for kind in ("max_probability", "entropy"):
        in_scores = metrics.ood_scores(in_probabilities, kind=kind)
        out_scores = metrics.ood_scores(out_probabilities, kind=kind)
        scores = np.r_[in_scores, out_scores]
        auroc = metrics.ood_auroc(in_scores, out_scores)
        assert auroc > 0.9
        assert auroc == pytest.approx(roc_auc_score(labels, scores),
                                      rel=1e-12)
        assert metrics.ood_aupr(in_scores, out_scores) == pytest.approx(
            average_precision_score(labels, scores), rel=1e-12)


def test_ood_accepts_integer_and_float32_scores():
    assert metrics.ood_auroc([0, 1], [1, 2]) == 0.875
    assert metrics.ood_auroc(np.float32([0.1, 0.4]),
                             np.float32([0.35, 0.8])) == 0.75


# --------------------------------------------------------------------------
# disagreement, normalized_disagreement and average_kl.

# Three members, two examples; predictions (argmax):
#   member 0: [0.9, 0.1] -> 0   [0.2, 0.8] -> 1
#   member 1: [0.6, 0.4] -> 0   [0.4, 0.6] -> 1
#   member 2: [0.3, 0.7] -> 1   [0.1, 0.9] -> 1
# Example 0: pairs (0,1) agree, (0,2) and (1,2) differ: 2 of 3.
# Example 1: all predict 1: 0 of 3.
# disagreement = (2 + 0) / (3 pairs * 2 examples) = 1/3.
HAND_MEMBERS = np.array([
    [[0.9, 0.1], [0.2, 0.8]],
    [[0.6, 0.4], [0.4, 0.6]],
    [[0.3, 0.7], [0.1, 0.9]],
])


def test_disagreement_hand_case():
    assert metrics.disagreement(HAND_MEMBERS) == pytest.approx(1 / 3,
                                                               rel=1e-15)
    # Members 0 and 2 only (one pair): example 0 predicts 0 vs 1 (differ),
    # example 1 predicts 1 vs 1 (agree): 1 / 2.
    assert metrics.disagreement(HAND_MEMBERS[[0, 2]]) == 0.5
    # Identical members never disagree.
    assert metrics.disagreement(np.stack([HAND_MEMBERS[0]] * 4)) == 0.0


def test_disagreement_ties_go_to_the_lowest_class():
    # [0.5, 0.5] predicts class 0 (as np.argmax), so it agrees with [0.6, 0.4]
    # and disagrees with [0.4, 0.6]: pairs (0,1) agree, (0,2), (1,2) differ.
    members = [[[0.5, 0.5]], [[0.6, 0.4]], [[0.4, 0.6]]]
    assert metrics.disagreement(members) == pytest.approx(2 / 3, rel=1e-15)


@pytest.mark.parametrize("num_members", [2, 3, 7])
def test_disagreement_and_average_kl_random_cases_match_loops(num_members):
    rng = np.random.default_rng(20 + num_members)
    members = _random_probabilities(rng, (num_members, 60, 4), scale=1.0,
                                    zeros=True)
    members_list = members.tolist()
    assert metrics.disagreement(members) == pytest.approx(
        _loop_disagreement(members_list), rel=1e-12)
    assert metrics.average_kl(members) == pytest.approx(
        _loop_average_kl(members_list), rel=1e-10)


def test_normalized_disagreement_hand_case():
    # The average of HAND_MEMBERS is [0.6, 0.4] (predicts 0) and
    # [0.7/3, 2.3/3] (predicts 1). With labels [1, 1] example 0 is wrong:
    # error rate 1/2, normalized = (1/3) / (1/2) = 2/3.
    assert metrics.normalized_disagreement(HAND_MEMBERS, [1, 1]) == \
        pytest.approx(2 / 3, rel=1e-15)
    # With labels [1, 0] both are wrong: (1/3) / 1.
    assert metrics.normalized_disagreement(HAND_MEMBERS, [1, 0]) == \
        pytest.approx(1 / 3, rel=1e-15)


def test_normalized_disagreement_random_case_matches_definition():
    rng = np.random.default_rng(7)
    members = _random_probabilities(rng, (4, 80, 3), scale=1.0)
    labels = rng.integers(0, 3, size=80)
    average = members.mean(axis=0)
    error_rate = 1.0 - metrics.accuracy(average, labels)
    assert metrics.normalized_disagreement(members, labels) == pytest.approx(
        _loop_disagreement(members.tolist()) / error_rate, rel=1e-12)


def test_normalized_disagreement_rejects_zero_error_rate():
    # The average predicts 0 and 1, the labels: no error, 0 in the divisor.
    with pytest.raises(
        ValueError,
        match=r"normalized_disagreement needs a positive error rate of the "
              r"ensemble average \(the denominator\); got 0\.0"):
        metrics.normalized_disagreement(HAND_MEMBERS, [0, 1])


def test_average_kl_hand_cases():
    # KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3)
    # KL([1/4, 3/4] || [1/2, 1/2]) = 1/4 log(1/2) + 3/4 log(3/2)
    # average over the 2 ordered pairs ~= (0.143841 + 0.130812) / 2.
    expected = (0.5 * math.log(4 / 3)
                + 0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    assert metrics.average_kl([[[0.5, 0.5]], [[0.25, 0.75]]]) == \
        pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(0.137327, abs=1e-6)
    # Identical members: every log ratio is exactly 0.
    assert metrics.average_kl(np.stack([HAND_MEMBERS[0]] * 3)) == 0.0


def test_average_kl_floors_zero_probabilities():
    # Members [1, 0] and [1/2, 1/2]:
    #   KL([1, 0] || [1/2, 1/2]) = 1 log(1 / (1/2)) + 0 = log 2 (0 log 0 = 0)
    #   KL([1/2, 1/2] || [1, 0]) = 1/2 log(1/2) + 1/2 (log(1/2) - log tiny)
    #                            = -log 2 - 1/2 log tiny ~= -0.693 + 354.198
    # instead of +infinity. Average over 2 ordered pairs:
    #   (log 2 - log 2 - 1/2 log tiny) / 2 = -1/4 log tiny ~= 177.099.
    value = metrics.average_kl([[[1.0, 0.0]], [[0.5, 0.5]]])
    assert math.isfinite(value)
    assert value == pytest.approx(-0.25 * math.log(TINY), rel=1e-12)
    assert value == pytest.approx(177.099, abs=1e-3)


@pytest.mark.parametrize(
    "function",
    [metrics.disagreement, metrics.average_kl,
     lambda members: metrics.normalized_disagreement(members, [1, 1])],
    ids=["disagreement", "average_kl", "normalized_disagreement"])
def test_diversity_needs_two_members(function):
    with pytest.raises(
        ValueError,
        match=r"member_probabilities must have at least 2 members \(K >= 2\) "
              r"for \w+; got K = 1 \(shape \(1, 2, 2\)\)"):
        function(HAND_MEMBERS[:1])


# --------------------------------------------------------------------------
# Temperature scaling.


def test_apply_temperature_hand_cases():
    # [0, 2 log 3] / 2 = [0, log 3]: softmax = [1, 3] / 4.
    np.testing.assert_allclose(
        post_processing.apply_temperature([[0.0, 2 * math.log(3.0)]], 2.0),
        [[0.25, 0.75]], rtol=1e-14)
    # [0, log 3] / (1/2) = [0, 2 log 3]: softmax = [1, 9] / 10.
    np.testing.assert_allclose(
        post_processing.apply_temperature([[0.0, math.log(3.0)]], 0.5),
        [[0.1, 0.9]], rtol=1e-14)
    # Huge logits do not overflow (the row maximum is subtracted):
    # [1000, 1000 + log 3] -> [1, 3] / 4.
    np.testing.assert_allclose(
        post_processing.apply_temperature([[1000.0, 1000.0 + math.log(3.0)]], 1),
        [[0.25, 0.75]], rtol=1e-12)
    # p^(1/T) renormalised: [0.1, 0.9]^(1/2) ~ [1, 3] / 4.
    np.testing.assert_allclose(
        post_processing.apply_temperature_to_probabilities([[0.1, 0.9]], 2.0),
        [[0.25, 0.75]], rtol=1e-14)


def test_apply_temperature_random_case():
    rng = np.random.default_rng(8)
    logits = rng.normal(scale=3.0, size=(50, 6))
    np.testing.assert_allclose(post_processing.apply_temperature(logits, 1.0),
                               _softmax(logits), rtol=1e-13)
    scaled = post_processing.apply_temperature(logits, 2.5)
    assert scaled.dtype == np.float64
    np.testing.assert_allclose(scaled, _softmax(logits / 2.5), rtol=1e-13)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-14)
    # The predicted class is unchanged; a higher T gives higher entropy.
    np.testing.assert_array_equal(scaled.argmax(axis=1),
                                  logits.argmax(axis=1))
    assert np.all(metrics.predictive_entropy(scaled)
                  > metrics.predictive_entropy(_softmax(logits)))


@pytest.fixture(scope="module")
def known_temperature_split():
    # Labels sampled from softmax(z / T0): the NLL's minimiser over T is a
    # consistent estimate of T0 (maximum likelihood), so with many examples
    # the fitted T is close to T0.
    rng = np.random.default_rng(9)
    logits = rng.normal(scale=3.0, size=(20000, 5))
    true_temperature = 2.0
    probabilities = _softmax(logits / true_temperature)
    # Inverse-CDF sampling of one class per row.
    labels = np.sum(rng.random((20000, 1)) > np.cumsum(probabilities, axis=1),
                    axis=1)
    labels = np.minimum(labels, 4)
    return logits, labels, true_temperature


def test_fit_temperature_recovers_known_temperature(known_temperature_split):
    logits, labels, true_temperature = known_temperature_split
    temperature = post_processing.fit_temperature(logits, labels)
    assert isinstance(temperature, float)
    assert temperature == pytest.approx(true_temperature, abs=0.05)

    def nll(t):
        return metrics.negative_log_likelihood(
            post_processing.apply_temperature(logits, t), labels)

    fitted = nll(temperature)
    for other in (1.0, true_temperature, true_temperature - 0.3,
                  true_temperature + 0.3):
        assert fitted <= nll(other) + 1e-12
    # It is the minimiser: a 1e-4 relative step either way does not help.
    assert fitted <= nll(temperature * (1 + 1e-4)) + 1e-12
    assert fitted <= nll(temperature * (1 - 1e-4)) + 1e-12


def test_fit_temperature_matches_scipy_and_loop_nll():
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=2.0, size=(300, 4))
    labels = rng.integers(0, 4, size=300)
    logits[np.arange(300), labels] += 1.5  # informative, overconfident logits
    temperature = post_processing.fit_temperature(logits, labels)
    logits_list, labels_list = logits.tolist(), labels.tolist()
    reference = minimize_scalar(
        lambda u: _loop_nll(logits_list, labels_list, math.exp(u)),
        bounds=(math.log(1e-3), math.log(1e3)), method="bounded",
        options={"xatol": 1e-9})
    assert temperature == pytest.approx(math.exp(reference.x), rel=1e-5)
    assert _loop_nll(logits_list, labels_list, temperature) <= \
        reference.fun + 1e-12


def test_fit_temperature_hand_case():
    # Logits [0, 1] three times with labels 1, 1, 0. p(1) = sigmoid(1/T) and
    # nll = -(2 log q + log(1 - q)) / 3 with q = p(1) is minimal at q = 2/3:
    # sigmoid(1/T) = 2/3  <=>  1/T = log 2  <=>  T = 1 / log 2.
    temperature = post_processing.fit_temperature([[0.0, 1.0]] * 3, [1, 1, 0])
    assert temperature == pytest.approx(1 / LOG2, rel=1e-8)


def test_fit_temperature_is_shift_invariant_and_accepts_float32():
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(100, 3))
    labels = rng.integers(0, 3, size=100)
    logits[np.arange(100), labels] += 1.0
    temperature = post_processing.fit_temperature(logits, labels)
    shifted = logits + rng.normal(scale=10.0, size=(100, 1))
    assert post_processing.fit_temperature(shifted, labels) == pytest.approx(
        temperature, rel=1e-7)
    assert post_processing.fit_temperature(logits.astype(np.float32), labels) == \
        pytest.approx(temperature, rel=1e-5)


def test_fit_temperature_edge_cases_hit_the_bounds():
    # Separable: every label has the largest logit, so the NLL keeps falling
    # as T -> 0 and the lower bound is returned.
    logits = [[2.0, 0.0], [0.0, 3.0]]
    assert post_processing.fit_temperature(logits, [0, 1]) == 1e-3
    assert post_processing.fit_temperature(logits, [0, 1], bounds=(0.2, 5.0)) == 0.2
    # Worse than uniform (every label has the smallest logit): the NLL keeps
    # falling as T -> infinity, and the upper bound is returned.
    assert post_processing.fit_temperature(logits, [1, 0]) == 1e3
    assert post_processing.fit_temperature(logits, [1, 0], bounds=(0.2, 5.0)) == 5.0
    # Constant rows: softmax is uniform whatever T; 1.0 by convention.
    assert post_processing.fit_temperature([[1.0, 1.0], [-2.0, -2.0]], [0, 1]) == 1.0
    assert post_processing.fit_temperature([[3.0], [4.0]], [0, 0]) == 1.0


def test_fit_temperature_from_probabilities(known_temperature_split):
    logits, labels, _ = known_temperature_split
    logits, labels = logits[:2000], labels[:2000]
    # log softmax(z) = z - logsumexp(z): a constant per row, the same NLL.
    from_logits = post_processing.fit_temperature(logits, labels)
    from_probabilities = post_processing.fit_temperature_from_probabilities(
        _softmax(logits), labels)
    assert from_probabilities == pytest.approx(from_logits, rel=1e-7)
    np.testing.assert_allclose(
        post_processing.apply_temperature_to_probabilities(_softmax(logits),
                                                           from_probabilities),
        post_processing.apply_temperature(logits, from_logits), rtol=1e-6, atol=1e-12)
    # An ensemble's averaged probabilities (zeros floored at tiny): the
    # scaled average has a lower validation NLL than the raw one.
    rng = np.random.default_rng(13)
    members = _softmax(
        logits[None] * 2.0 + rng.normal(scale=0.5, size=(3, 2000, 5)))
    average = members.mean(axis=0)
    average[:10] = np.eye(5)[labels[:10]]  # exact zeros in a few rows
    temperature = post_processing.fit_temperature_from_probabilities(average, labels)
    assert temperature > 1.0  # the doubled logits made it overconfident
    scaled = post_processing.apply_temperature_to_probabilities(average, temperature)
    assert metrics.negative_log_likelihood(scaled, labels) < \
        metrics.negative_log_likelihood(average, labels)


# --------------------------------------------------------------------------
# reliability_diagram.


def _png_size(data):
    # PNG: 8-byte signature, then the IHDR chunk: length (4), type (4),
    # width (4, big-endian), height (4).
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _diagram_inputs():
    rng = np.random.default_rng(14)
    probabilities = _random_probabilities(rng, (400, 10), scale=3.0)
    labels = rng.integers(0, 10, size=400)
    return probabilities, labels


def test_reliability_diagram_writes_png_or_explains_missing_matplotlib(
        tmp_path):
    probabilities, labels = _diagram_inputs()
    path = tmp_path / "reliability.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # Without matplotlib: the clear ImportError, and no file.
        with pytest.raises(ImportError, match=MISSING_MATPLOTLIB):
            metrics.reliability_diagram(probabilities, labels, path)
        assert not path.exists()
        return
    # With matplotlib: a PNG of 5 x 6 inches at 100 dpi. The path is
    # returned as given (here a pathlib.Path, below a str).
    assert metrics.reliability_diagram(
        probabilities, labels, path, title="test") is path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5000
    assert _png_size(data) == (500, 600)
    # Written as PNG whatever the extension; other num_bins work.
    other = str(tmp_path / "diagram.out")
    assert metrics.reliability_diagram(probabilities, labels, other,
                                       num_bins=4) == other
    assert pathlib.Path(other).read_bytes()[:8] == PNG_SIGNATURE


def test_reliability_diagram_without_matplotlib_raises_clear_error(
        monkeypatch, tmp_path):
    # Hide matplotlib, and any of its modules already imported, from import:
    # a None entry in sys.modules makes `import` raise ImportError.
    for name in [name for name in sys.modules
                 if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    probabilities, labels = _diagram_inputs()
    path = tmp_path / "reliability.png"
    with pytest.raises(ImportError, match=MISSING_MATPLOTLIB):
        metrics.reliability_diagram(probabilities, labels, path)
    assert not path.exists()
    # Bad inputs are reported as such, before matplotlib is looked for.
    with pytest.raises(ValueError, match="num_bins must be a positive int"):
        metrics.reliability_diagram(probabilities, labels, path, num_bins=0)


def test_metrics_module_imports_without_matplotlib():
    # matplotlib is imported lazily: loading calibration.py (the module of
    # reliability_diagram, from its file) with matplotlib hidden works, and
    # only reliability_diagram fails.
    script = textwrap.dedent("""
        import importlib.util, sys
        sys.modules["matplotlib"] = None
        spec = importlib.util.spec_from_file_location("m", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.accuracy([[0.6, 0.4]], [0]) == 1.0
        try:
            module.reliability_diagram([[0.6, 0.4]], [0], "unused.png")
        except ImportError as error:
            print(error)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script, calibration.__file__],
        capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr
    assert "`pip install matplotlib`" in result.stdout
    assert "`pip install rank1-keras[plots]`" in result.stdout


@pytest.mark.parametrize("num_bins", [1, 5, 15, 37])
def test_reliability_bins_are_the_ece_bins(num_bins):
    # The diagram's bins: (b/B, (b+1)/B], the first also holding 0, exactly
    # as in expected_calibration_error (checked against a loop).
    probabilities, labels = _diagram_inputs()
    probabilities[0] = np.eye(10)[labels[0]]  # a confidence of exactly 1
    probabilities[1] = 0.1                    # and of 0.1 (an edge if B = 5)
    counts, correct_sums, confidence_sums = calibration._calibration_bins(
        probabilities, labels, num_bins)
    confidences = probabilities.max(axis=1).tolist()
    predictions = probabilities.argmax(axis=1).tolist()
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        members = [i for i, c in enumerate(confidences)
                   if lo < c <= hi or (b == 0 and c == 0)]
        assert counts[b] == len(members)
        assert correct_sums[b] == sum(predictions[i] == labels[i]
                                      for i in members)
        assert confidence_sums[b] == pytest.approx(
            sum(confidences[i] for i in members), rel=1e-12, abs=1e-15)
    assert counts.sum() == 400
    assert np.sum(np.abs(correct_sums - confidence_sums)) / 400 == \
        metrics.expected_calibration_error(probabilities, labels,
                                           num_bins=num_bins)


# --------------------------------------------------------------------------
# Validation.


GOOD_MEMBERS = HAND_MEMBERS.tolist()


@pytest.mark.parametrize(
    "probabilities, match",
    [
        ([0.5, 0.5], r"probabilities must be a 2-D array \(examples, "
                     r"classes\); got shape \(2,\)"),
        (np.zeros((0, 3)), r"probabilities must have at least one example "
                           r"and one class; got shape \(0, 3\)"),
        ([["a", "b"]], r"probabilities must be a real numeric array"),
        ([[0.5, 0.5], [np.nan, 1.0]],
         r"probabilities must be finite; row 1 is \[nan, 1.0\]"),
        ([[1.2, -0.2]], r"probabilities must be non-negative; row 0 is "
                        r"\[1.2, -0.2\]"),
        ([[0.5, 0.5], [0.3, 0.6]],
         r"probabilities rows must sum to 1 \(within 0.001\); row 1 sums to"),
    ],
)
@pytest.mark.parametrize(
    "function",
    [metrics.predictive_entropy, metrics.ood_scores,
     lambda p: metrics.ood_scores(p, kind="entropy"),
     lambda p: post_processing.apply_temperature_to_probabilities(p, 2.0)],
    ids=["predictive_entropy", "ood_scores", "ood_scores_entropy",
         "apply_temperature_to_probabilities"])
def test_probability_validation_errors(function, probabilities, match):
    with pytest.raises(ValueError, match=match):
        function(probabilities)


@pytest.mark.parametrize(
    "members, match",
    [
        ([[0.5, 0.5], [0.3, 0.7]],
         r"member_probabilities must be a 3-D array \(members, examples, "
         r"classes\); got shape \(2, 2\)"),
        (np.zeros((2, 0, 3)),
         r"member_probabilities must have at least one member, one example "
         r"and one class; got shape \(2, 0, 3\)"),
        ([[["a", "b"]], [["c", "d"]]],
         r"member_probabilities must be a real numeric array"),
        ([[[0.5, 0.5], [0.3, 0.7]], [[0.5, 0.5], [np.inf, 0.0]]],
         r"member_probabilities must be finite; member 1, row 1 is "
         r"\[inf, 0.0\]"),
        ([[[0.5, 0.5], [0.3, 0.7]], [[1.5, -0.5], [0.3, 0.7]]],
         r"member_probabilities must be non-negative; member 1, row 0 is "
         r"\[1.5, -0.5\]"),
        ([[[0.5, 0.5], [0.3, 0.7]], [[0.5, 0.5], [0.3, 0.8]]],
         r"member_probabilities rows must sum to 1 \(within 0.001\); "
         r"member 1, row 1 sums to"),
    ],
)
@pytest.mark.parametrize(
    "function",
    [metrics.mutual_information, metrics.disagreement, metrics.average_kl,
     lambda members: metrics.normalized_disagreement(members, [1, 1])],
    ids=["mutual_information", "disagreement", "average_kl",
         "normalized_disagreement"])
def test_member_probability_validation_errors(function, members, match):
    with pytest.raises(ValueError, match=match):
        function(members)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([1, 1, 0], r"labels must have one entry per example of "
                    r"member_probabilities \(2\); got 3"),
        ([[1], [1]], r"labels must be a 1-D array \(examples,\); "
                     r"got shape \(2, 1\)"),
        ([1.0, 1.0], r"labels must be an integer array; got dtype float64"),
        ([1, 2], r"labels must be class indices in \[0, 2\); got values "
                 r"from 1 to 2"),
    ],
)
def test_normalized_disagreement_label_errors(labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.normalized_disagreement(GOOD_MEMBERS, labels)


@pytest.mark.parametrize(
    "scores, match",
    [
        ([[0.1, 0.2]], r"must be a 1-D array \(examples,\); "
                       r"got shape \(1, 2\)"),
        (0.5, r"must be a 1-D array \(examples,\); got shape \(\)"),
        ([], r"must have at least one example; got shape \(0,\)"),
        (["a", "b"], r"must be a real numeric array; got dtype <U1"),
        ([True, False], r"must be a real numeric array; got dtype bool"),
        ([0.1, np.nan], r"must be finite; entry 1 is"),
        ([-np.inf, 0.1], r"must be finite; entry 0 is"),
    ],
)
@pytest.mark.parametrize("function", [metrics.ood_auroc, metrics.ood_aupr],
                         ids=lambda f: f.__name__)
def test_ood_score_validation_errors(function, scores, match):
    with pytest.raises(ValueError, match="in_scores " + match):
        function(scores, [0.3, 0.4])
    with pytest.raises(ValueError, match="out_scores " + match):
        function([0.3, 0.4], scores)


@pytest.mark.parametrize(
    "temperature", [0, 0.0, -1.0, np.nan, np.inf, -np.inf, True, "2", None,
                    [2.0], np.array([2.0])])
def test_temperature_must_be_finite_positive(temperature):
    match = r"temperature must be a finite positive real number; got "
    with pytest.raises(ValueError, match=match):
        post_processing.apply_temperature([[0.0, 1.0]], temperature)
    with pytest.raises(ValueError, match=match):
        post_processing.apply_temperature_to_probabilities([[0.5, 0.5]], temperature)


def test_temperature_accepts_ints_and_numpy_scalars():
    expected = post_processing.apply_temperature([[0.0, 1.0]], 2.0)
    for temperature in (2, np.int64(2), np.float32(2.0)):
        np.testing.assert_allclose(
            post_processing.apply_temperature([[0.0, 1.0]], temperature), expected,
            rtol=1e-15)


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        ([0.0, 1.0], [0, 1], r"logits must be a 2-D array \(examples, "
                             r"classes\); got shape \(2,\)"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int),
         r"logits must have at least one example and one class"),
        ([[0.0, np.nan]], [0], r"logits must be finite; row 0 is "
                               r"\[0.0, nan\]"),
        ([[0.0, 1.0], [np.inf, 0.0]], [0, 1], r"logits must be finite; "
                                              r"row 1"),
        ([["a", "b"]], [0], r"logits must be a real numeric array"),
        ([[0.0, 1.0], [1.0, 0.0]], [0, 1, 1],
         r"labels must have one entry per row of logits \(2\); got 3"),
        ([[0.0, 1.0], [1.0, 0.0]], [0], r"labels must have one entry per "
                                        r"row of logits \(2\); got 1"),
        ([[0.0, 1.0], [1.0, 0.0]], [0, 2],
         r"labels must be class indices in \[0, 2\)"),
        ([[0.0, 1.0], [1.0, 0.0]], [0.0, 1.0],
         r"labels must be an integer array; got dtype float64"),
    ],
)
def test_fit_temperature_validation_errors(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        post_processing.fit_temperature(logits, labels)


@pytest.mark.parametrize(
    "logits, match",
    [
        ([0.0, 1.0], r"logits must be a 2-D array"),
        ([[0.0, np.nan]], r"logits must be finite; row 0"),
    ],
)
def test_apply_temperature_validates_logits(logits, match):
    with pytest.raises(ValueError, match=match):
        post_processing.apply_temperature(logits, 1.0)


@pytest.mark.parametrize(
    "bounds",
    [(1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (1e-3, np.inf),
     (1e-3,), (1e-3, 1.0, 2.0), None, 5.0, ("a", 1.0)])
def test_fit_temperature_bounds_must_be_an_increasing_positive_pair(bounds):
    match = (r"bounds must be a pair \(T_min, T_max\) of finite positive real "
             r"numbers with T_min < T_max; got ")
    with pytest.raises(ValueError, match=match):
        post_processing.fit_temperature([[0.0, 1.0]], [1], bounds=bounds)
    with pytest.raises(ValueError, match=match):
        post_processing.fit_temperature_from_probabilities([[0.5, 0.5]], [1],
                                                           bounds=bounds)


@pytest.mark.parametrize(
    "probabilities, labels, match",
    [
        ([[0.5, 0.5], [0.3, 0.7]], [0, 1, 1],
         r"labels must have one entry per row of probabilities \(2\); got 3"),
        ([[0.5, 0.5], [0.3, -0.7]], [0, 1],
         r"probabilities must be non-negative; row 1"),
        ([[0.5, 0.5], [0.3, 0.6]], [0, 1],
         r"probabilities rows must sum to 1"),
        ([0.5, 0.5], [0, 1], r"probabilities must be a 2-D array"),
    ],
)
def test_probability_and_label_validation_errors(probabilities, labels,
                                                 match, tmp_path):
    with pytest.raises(ValueError, match=match):
        post_processing.fit_temperature_from_probabilities(probabilities, labels)
    with pytest.raises(ValueError, match=match):
        metrics.reliability_diagram(probabilities, labels,
                                    tmp_path / "unused.png")
    assert not (tmp_path / "unused.png").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_bins": 0}, r"num_bins must be a positive int; got 0"),
        ({"num_bins": 2.5}, r"num_bins must be a positive int; got 2.5"),
        ({"num_bins": True}, r"num_bins must be a positive int; got True"),
        ({"path": None}, r"path must be a str or os.PathLike; got None"),
        ({"path": 3}, r"path must be a str or os.PathLike; got 3"),
        ({"title": 3}, r"title must be a str or None; got 3"),
    ],
)
def test_reliability_diagram_argument_errors(kwargs, match, tmp_path):
    arguments = {"path": tmp_path / "unused.png", **kwargs}
    with pytest.raises(ValueError, match=match):
        metrics.reliability_diagram([[0.5, 0.5], [0.3, 0.7]], [0, 1],
                                    **arguments)
    assert not (tmp_path / "unused.png").exists()


def test_evaluate_classifier_keys_are_unchanged():
    result = metrics.evaluate_classifier([[0.9, 0.1], [0.2, 0.8]], [0, 0])
    assert list(result) == ["accuracy", "nll", "ece", "brier"]
