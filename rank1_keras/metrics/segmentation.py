"""Metrics of semantic segmentation from per-pixel class probabilities.

``mean_iou`` takes one row per pixel: ``probabilities`` of shape
``(N * H * W, C)`` and flattened integer ``labels`` of shape ``(N * H * W,)``
in ``[0, C)``, and returns a Python ``float``. The per-pixel calibration
metrics are those of ``rank1_keras.metrics.calibration`` on the same rows.

Example:

>>> mean_iou([[0.9, 0.1], [0.2, 0.8]], [0, 1])  # every pixel right
1.0
"""

import numpy as np

from rank1_keras.metrics.checks import _validate


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
