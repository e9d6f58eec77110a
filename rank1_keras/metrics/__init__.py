"""Uncertainty metrics, NumPy (float64, checked inputs) and streaming Keras ones.

Backend-agnostic. `rank1_keras.metrics.regression` holds the metrics of
Gaussian-head regressors; the streaming versions for `model.compile` live in
`rank1_keras.metrics.streaming`.
"""

from rank1_keras.metrics.classification import (
    accuracy,
    apply_temperature,
    apply_temperature_to_probabilities,
    average_kl,
    brier_score,
    disagreement,
    evaluate_classifier,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_from_probabilities,
    mean_iou,
    mutual_information,
    negative_log_likelihood,
    normalized_disagreement,
    ood_aupr,
    ood_auroc,
    ood_scores,
    predictive_entropy,
    reliability_diagram,
)
from rank1_keras.metrics.streaming import BrierScore, EnsembleAccuracy, EnsembleNLL, ExpectedCalibrationError
