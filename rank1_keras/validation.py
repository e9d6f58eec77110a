"""Argument checks shared by the package: fail early, name the argument."""

import math
import numbers

import keras


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1); got {name}={value!r}.")
    return int(value)


def check_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {name}={value!r}.")
    return int(value)


def check_non_negative_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {name}={value!r}.")
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


def check_rate(value, name):
    """A dropout-style rate in [0, 1): at 1 every unit is dropped and nothing is learned."""
    value = check_finite(value, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (1 drops every unit); got {name}={value!r}.")
    return value


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {name}={value!r}.")
    return value


def resolve_identifier(identifier, argument_name, aliases, keras_get, examples):
    """Turns a name, config dict or instance into an object (initializer, regularizer).

    Our snake_case `aliases` come first, then Keras' own names via `keras_get`.
    An unknown name or class is a ValueError naming `argument_name`; a known
    class with bad arguments raises its own error about those arguments.
    """

    def unknown():
        return ValueError(
            f"Unknown {argument_name}: {identifier!r}. Expected one of {sorted(aliases)}, "
            f"a Keras name such as {examples}, a config dict, or an instance."
        )

    if identifier is None:
        return None
    if isinstance(identifier, str) and identifier in aliases:
        return aliases[identifier]()
    if isinstance(identifier, dict):
        try:
            return keras.saving.deserialize_keras_object(identifier)
        except TypeError as error:
            if "Could not locate" not in str(error):
                raise
            raise unknown() from error
    try:
        return keras_get(identifier)
    except (ValueError, TypeError) as error:
        raise unknown() from error


def check_image_shape(value, name="input_shape"):
    """(height, width, channels) of positive integers."""
    shape = tuple(value) if isinstance(value, (list, tuple)) else None
    if (
        shape is None
        or len(shape) != 3
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape)
    ):
        raise ValueError(f"{name} must be (height, width, channels) with positive integers; got {name}={value!r}.")
    return tuple(int(d) for d in shape)


def check_num_classes(value, name="num_classes"):
    """At least 2 classes: a softmax over one class is always 1."""
    check_positive_int(value, name)
    if value < 2:
        raise ValueError(f"{name} must be at least 2 (a softmax over one class is always 1); got {name}={value!r}.")
    return int(value)


def check_dropout_rate(value, name="dropout_rate"):
    """A rate in [0, 1)."""
    check_probability(value, name)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {name}={value!r}.")
    return float(value)


def check_optional_name(value, name="name"):
    """None or a non-empty string."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name} must be a non-empty string or None; got {name}={value!r}.")
    return value


def check_corruption(corruption, severity, corruptions, severities):
    """A corruption name from `corruptions` and an integer severity from `severities`."""
    if not isinstance(corruption, str) or corruption not in corruptions:
        raise ValueError(f"corruption must be one of {list(corruptions)}; got corruption={corruption!r}.")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or int(severity) not in severities:
        raise ValueError(f"severity must be one of {list(severities)}; got severity={severity!r}.")
    return corruption, int(severity)


def require_tensorflow(feature, reason):
    """Raises one clear error when `feature` (TensorFlow-only) is used under another Keras backend.

    Example:

    >>> require_tensorflow("export_for_serving", "it writes a TensorFlow SavedModel")  # on TensorFlow: nothing
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{feature} runs on the TensorFlow backend only ({reason}); this process runs Keras on {backend}. "
            "Run it with KERAS_BACKEND=tensorflow."
        )
