"""Argument checks shared by the package: fail early, name the argument."""

import math
import numbers


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1); got {name}={value!r}.")
    return int(value)


def check_finite(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {name}={value!r}.")
    return float(value)


def check_positive_finite(value, name):
    value = check_finite(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be positive and finite; got {name}={value!r}.")
    return value


def check_non_negative_finite(value, name):
    value = check_finite(value, name)
    if value < 0:
        raise ValueError(f"{name} must be non-negative and finite; got {name}={value!r}.")
    return value


def check_probability(value, name):
    value = check_finite(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {name}={value!r}.")
    return value


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {name}={value!r}.")
    return value
