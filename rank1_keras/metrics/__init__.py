"""Uncertainty metrics, NumPy (float64, checked inputs) and streaming Keras ones.

Backend-agnostic, one module per role: `rank1_keras.metrics.calibration`
(accuracy, NLL, ECE, Brier, reliability diagram), `.uncertainty` (predictive
entropy, mutual information, ensemble diversity), `.ood` (out-of-distribution
scores, AUROC, AUPR), `.segmentation` (mean IoU) and `.regression` (the
metrics of Gaussian-head regressors); the streaming versions for
`model.compile` live in `rank1_keras.metrics.streaming`. Temperature scaling is
post-processing: `rank1_keras.post_processing`.
"""

from rank1_keras.metrics.calibration import (
    accuracy,
    brier_score,
    evaluate_classifier,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)
from rank1_keras.metrics.ood import ood_aupr, ood_auroc, ood_scores
from rank1_keras.metrics.segmentation import mean_iou
from rank1_keras.metrics.streaming import BrierScore, EnsembleAccuracy, EnsembleNLL, ExpectedCalibrationError
from rank1_keras.metrics.uncertainty import (
    average_kl,
    disagreement,
    mutual_information,
    normalized_disagreement,
    predictive_entropy,
)
