"""Post-processing of a trained classifier's predictions (NumPy, float64, checked inputs).

`rank1_keras.post_processing.temperature_scaling`: fit one temperature on a
validation split (`fit_temperature` from logits, or
`fit_temperature_from_probabilities`, e.g. for averaged ensemble
probabilities) and apply it (`apply_temperature`,
`apply_temperature_to_probabilities`). Rate the result with
`rank1_keras.metrics`.
"""

from rank1_keras.post_processing.temperature_scaling import (
    apply_temperature,
    apply_temperature_to_probabilities,
    fit_temperature,
    fit_temperature_from_probabilities,
)
