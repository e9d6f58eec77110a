"""Tests for rank1_keras.metrics against hand-derived and loop references."""

import math

import numpy as np
import pytest

from rank1_keras import metrics

# A hand-made case: 4 examples, 3 classes.
#   example  probabilities        label  prediction  confidence  correct
#   0        [0.9, 0.05, 0.05]    0      0           0.9         yes
#   1        [0.2, 0.7,  0.1 ]    0      1           0.7         no
#   2        [0.1, 0.25, 0.65]    2      2           0.65        yes
#   3        [0.3, 0.25, 0.45]    1      2           0.45        no
HAND_PROBABILITIES = np.array([
    [0.9, 0.05, 0.05],
    [0.2, 0.7, 0.1],
    [0.1, 0.25, 0.65],
    [0.3, 0.25, 0.45],
])
HAND_LABELS = np.array([0, 0, 2, 1])


def test_accuracy_hand_case():
    # Examples 0 and 2 are correct: 2 / 4.
    assert metrics.accuracy(HAND_PROBABILITIES, HAND_LABELS) == 0.5


def test_negative_log_likelihood_hand_case():
    # p[label] = 0.9, 0.2, 0.65, 0.25; their product is 0.02925, so
    # nll = -(1/4) ln(0.02925) = 3.531876 / 4 = 0.882969
    expected = -math.log(0.9 * 0.2 * 0.65 * 0.25) / 4
    assert expected == pytest.approx(0.882969, abs=1e-6)
    assert metrics.negative_log_likelihood(
        HAND_PROBABILITIES, HAND_LABELS
    ) == pytest.approx(expected, rel=1e-12)


def test_brier_score_hand_case():
    # Per example, sum_c (p_c - onehot_c)^2:
    #   0: 0.1^2 + 0.05^2 + 0.05^2 = 0.01 + 0.0025 + 0.0025 = 0.015
    #   1: 0.8^2 + 0.7^2 + 0.1^2   = 0.64 + 0.49 + 0.01     = 1.14
    #   2: 0.1^2 + 0.25^2 + 0.35^2 = 0.01 + 0.0625 + 0.1225 = 0.195
    #   3: 0.3^2 + 0.75^2 + 0.45^2 = 0.09 + 0.5625 + 0.2025 = 0.855
    # mean = 2.205 / 4 = 0.55125
    assert metrics.brier_score(
        HAND_PROBABILITIES, HAND_LABELS
    ) == pytest.approx(0.55125, abs=1e-12)


def test_expected_calibration_error_hand_case_5_bins():
    # Bins of width 0.2: (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1].
    #   bin       members  acc  mean conf            weight * |acc - conf|
    #   (.8, 1]   {0}      1    0.9                  1/4 * 0.1   = 0.025
    #   (.6, .8]  {1, 2}   1/2  (0.7 + 0.65)/2=.675  2/4 * 0.175 = 0.0875
    #   (.4, .6]  {3}      0    0.45                 1/4 * 0.45  = 0.1125
    # ECE = 0.025 + 0.0875 + 0.1125 = 0.225
    assert metrics.expected_calibration_error(
        HAND_PROBABILITIES, HAND_LABELS, num_bins=5
    ) == pytest.approx(0.225, abs=1e-12)


def test_expected_calibration_error_hand_case_1_bin():
    # One bin: |accuracy - mean confidence| = |0.5 - 2.7/4| = 0.175.
    assert metrics.expected_calibration_error(
        HAND_PROBABILITIES, HAND_LABELS, num_bins=1
    ) == pytest.approx(0.175, abs=1e-12)


def test_expected_calibration_error_hand_case_default_15_bins():
    # Bins of width 1/15 ~= 0.0667 put 0.9, 0.7, 0.65 and 0.45 in bins 13, 10,
    # 9 and 6: all apart, so ECE = (0.1 + 0.7 + 0.35 + 0.45) / 4 = 0.4.
    assert metrics.expected_calibration_error(
        HAND_PROBABILITIES, HAND_LABELS
    ) == pytest.approx(0.4, abs=1e-12)


def test_expected_calibration_error_bins_are_closed_on_the_right():
    # With 2 bins, (0, 0.5] and (0.5, 1]: confidence 0.5 (a tie, predicted
    # class 0, correct) is in the first bin and 0.75 (wrong) in the second:
    #   ECE = 1/2 * |1 - 0.5| + 1/2 * |0 - 0.75| = 0.625.
    # Were 0.5 put in the second bin, both would pool:
    #   |1/2 - 0.625| = 0.125.
    probabilities = np.array([[0.5, 0.5], [0.75, 0.25]])
    labels = np.array([0, 1])
    assert metrics.expected_calibration_error(
        probabilities, labels, num_bins=2
    ) == pytest.approx(0.625, abs=1e-12)


def test_perfect_calibration_gives_zero_ece():
    # Confidence 0.75: 3 of 4 right; confidence 0.5: 1 of 2 right;
    # confidence 1: both right. Each bin's accuracy equals its confidence.
    probabilities = np.array(
        [[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2 + [[0.0, 1.0]] * 2
    )
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    for num_bins in (1, 2, 10, 15):
        assert metrics.expected_calibration_error(
            probabilities, labels, num_bins=num_bins
        ) == pytest.approx(0.0, abs=1e-12)


def test_perfect_predictions():
    probabilities = np.eye(4)
    labels = np.arange(4)
    result = metrics.evaluate_classifier(probabilities, labels)
    assert result == {"accuracy": 1.0, "nll": 0.0, "ece": 0.0, "brier": 0.0}


def test_zero_probability_on_label_is_floored_not_infinite():
    # -log of the smallest positive normal float64 (~2.2e-308) ~= 708.396.
    nll = metrics.negative_log_likelihood([[1.0, 0.0]], [1])
    assert math.isfinite(nll)
    assert nll == pytest.approx(-math.log(2.2250738585072014e-308), rel=1e-12)


def _reference_metrics(probabilities, labels, num_bins):
    """Loop-based float64 reference implementation."""
    n, c = len(probabilities), len(probabilities[0])
    rows = [[float(v) for v in row] for row in probabilities]
    predictions = [max(range(c), key=lambda k: (row[k], -k)) for row in rows]
    confidences = [max(row) for row in rows]
    correct = [int(predictions[i] == labels[i]) for i in range(n)]

    accuracy = sum(correct) / n
    nll = -sum(math.log(rows[i][labels[i]]) for i in range(n)) / n
    brier = sum(
        sum((rows[i][k] - (1.0 if k == labels[i] else 0.0)) ** 2
            for k in range(c))
        for i in range(n)
    ) / n
    ece = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        members = [
            i for i in range(n)
            if lo < confidences[i] <= hi or (b == 0 and confidences[i] == 0)
        ]
        if members:
            bin_accuracy = sum(correct[i] for i in members) / len(members)
            bin_confidence = (
                sum(confidences[i] for i in members) / len(members)
            )
            ece += len(members) / n * abs(bin_accuracy - bin_confidence)
    return {"accuracy": accuracy, "nll": nll, "ece": ece, "brier": brier}


@pytest.mark.parametrize("num_bins", [1, 5, 15, 37])
def test_random_case_matches_loop_reference(num_bins):
    rng = np.random.default_rng(1234 + num_bins)
    logits = rng.normal(scale=2.0, size=(300, 7))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = rng.integers(0, 7, size=300)
    expected = _reference_metrics(probabilities, labels.tolist(), num_bins)

    assert metrics.accuracy(probabilities, labels) == pytest.approx(
        expected["accuracy"], abs=1e-12)
    assert metrics.negative_log_likelihood(
        probabilities, labels) == pytest.approx(expected["nll"], rel=1e-12)
    assert metrics.brier_score(probabilities, labels) == pytest.approx(
        expected["brier"], rel=1e-12)
    assert metrics.expected_calibration_error(
        probabilities, labels, num_bins=num_bins
    ) == pytest.approx(expected["ece"], abs=1e-12)
    if num_bins == 15:
        result = metrics.evaluate_classifier(probabilities, labels)
        assert list(result) == ["accuracy", "nll", "ece", "brier"]
        for key, value in result.items():
            assert isinstance(value, float)
            assert value == pytest.approx(expected[key], rel=1e-12, abs=1e-12)


def test_accepts_lists_and_float32():
    probabilities = HAND_PROBABILITIES.astype(np.float32)
    from_float32 = metrics.evaluate_classifier(probabilities, HAND_LABELS)
    from_lists = metrics.evaluate_classifier(HAND_PROBABILITIES.tolist(),
                                             HAND_LABELS.tolist())
    for key in from_lists:
        assert from_float32[key] == pytest.approx(from_lists[key], abs=1e-6)


GOOD_PROBABILITIES = [[0.6, 0.4], [0.3, 0.7]]
GOOD_LABELS = [0, 1]


@pytest.mark.parametrize(
    "probabilities, labels, match",
    [
        ([0.6, 0.4, 0.0], [0, 1, 0],
         r"probabilities must be a 2-D array \(examples, classes\); "
         r"got shape \(3,\)"),
        (np.full((2, 2, 1), 0.5), GOOD_LABELS,
         r"probabilities must be a 2-D array.*\(2, 2, 1\)"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int),
         r"probabilities must have at least one example"),
        (GOOD_PROBABILITIES, [[0], [1]],
         r"labels must be a 1-D array.*\(2, 1\)"),
        (GOOD_PROBABILITIES, [0, 1, 1],
         r"labels must have one entry per row of probabilities \(2\); got 3"),
        (GOOD_PROBABILITIES, [0.0, 1.0],
         r"labels must be an integer array; got dtype float64"),
        (GOOD_PROBABILITIES, [0, 2],
         r"labels must be class indices in \[0, 2\)"),
        (GOOD_PROBABILITIES, [-1, 1],
         r"labels must be class indices in \[0, 2\)"),
        ([[0.6, 0.4], [np.nan, 1.0]], GOOD_LABELS,
         r"probabilities must be finite; row 1"),
        ([[np.inf, 0.4], [0.3, 0.7]], GOOD_LABELS,
         r"probabilities must be finite; row 0"),
        ([[1.2, -0.2], [0.3, 0.7]], GOOD_LABELS,
         r"probabilities must be non-negative; row 0"),
        ([[0.6, 0.4], [0.3, 0.6]], GOOD_LABELS,
         r"probabilities rows must sum to 1 \(within 0.001\); row 1"),
    ],
)
@pytest.mark.parametrize(
    "metric",
    [metrics.accuracy, metrics.negative_log_likelihood,
     metrics.expected_calibration_error, metrics.brier_score,
     metrics.evaluate_classifier],
    ids=lambda f: f.__name__,
)
def test_validation_errors(metric, probabilities, labels, match):
    with pytest.raises(ValueError, match=match):
        metric(probabilities, labels)


def test_row_sum_tolerance_accepts_small_errors():
    # Within 1e-3 of 1 (e.g. float32 softmax rounding) is accepted.
    assert metrics.accuracy([[0.6004, 0.4], [0.3, 0.6996]], [0, 1]) == 1.0


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, 15.0, True, "15", None])
def test_num_bins_must_be_a_positive_int(num_bins):
    with pytest.raises(ValueError, match="num_bins must be a positive int"):
        metrics.expected_calibration_error(GOOD_PROBABILITIES, GOOD_LABELS,
                                           num_bins=num_bins)


def test_num_bins_accepts_numpy_int():
    assert metrics.expected_calibration_error(
        GOOD_PROBABILITIES, GOOD_LABELS, num_bins=np.int64(3)
    ) == pytest.approx(metrics.expected_calibration_error(
        GOOD_PROBABILITIES, GOOD_LABELS, num_bins=3))
