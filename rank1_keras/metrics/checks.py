"""Input checks and helpers shared by the NumPy metrics and post-processing (private).

Not a public API: ``rank1_keras.metrics.calibration``, ``.uncertainty``,
``.ood``, ``.segmentation`` and ``rank1_keras.post_processing`` import these
names. The checks raise ``ValueError`` on bad shapes, dtypes, labels, or rows
that are not distributions, and return float64 (int64 for labels) arrays.
"""

import numpy as np

# Rows of `probabilities` may sum to 1 up to this absolute error, which
# tolerates float32 softmax outputs and rounding in averaged ensembles.
_SUM_TOLERANCE = 1e-3

# Smallest positive normal float64 (about 2.2e-308). It floors p[label] in the
# NLL only so that log(0) is not -inf: a zero probability on the true class
# then costs -log(2.2e-308) ~= 708.4 nats instead of an infinite mean.
_LOG_FLOOR = np.finfo(np.float64).tiny


def _entropy(probabilities):
    """-sum p log p over the last axis, with 0 log 0 = 0."""
    positive = probabilities > 0
    logs = np.log(np.where(positive, probabilities, 1.0))
    # `0.0 - x` rather than `-x` so a one-hot row gives 0.0, not -0.0.
    return 0.0 - np.sum(np.where(positive, probabilities * logs, 0.0), axis=-1)


def _log_softmax(logits):
    """Log-softmax over the last axis, shifted by the maximum for stability."""
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _validate_num_bins(num_bins):
    """Checks that num_bins is a positive int (not a bool) and returns it."""
    if isinstance(num_bins, (bool, np.bool_)) or not isinstance(
        num_bins, (int, np.integer)
    ):
        raise ValueError(
            f"num_bins must be a positive int; got {num_bins!r} "
            f"of type {type(num_bins).__name__}"
        )
    if num_bins < 1:
        raise ValueError(f"num_bins must be a positive int; got {num_bins}")
    return int(num_bins)


def _validate(probabilities, labels):
    """Checks the inputs and returns them as float64 and int64 arrays."""
    probabilities = _as_real_array(
        probabilities, "probabilities", "(examples, classes)",
        "one example and one class",
    )
    labels = _validate_labels(labels, *probabilities.shape,
                              "row of probabilities")
    _check_distributions(probabilities, "probabilities")
    return probabilities, labels


def _validate_probabilities(probabilities):
    """Checks a (N, C) array of distributions; returns it as float64."""
    probabilities = _as_real_array(
        probabilities, "probabilities", "(examples, classes)",
        "one example and one class",
    )
    _check_distributions(probabilities, "probabilities")
    return probabilities


def _validate_member_probabilities(member_probabilities, min_members=1,
                                   metric=None):
    """Checks a (K, N, C) array of distributions; returns it as float64."""
    member_probabilities = _as_real_array(
        member_probabilities, "member_probabilities",
        "(members, examples, classes)",
        "one member, one example and one class",
    )
    num_members = member_probabilities.shape[0]
    if num_members < min_members:
        raise ValueError(
            f"member_probabilities must have at least {min_members} members "
            f"(K >= {min_members}) for {metric}; got K = {num_members} "
            f"(shape {member_probabilities.shape})"
        )
    _check_distributions(member_probabilities, "member_probabilities")
    return member_probabilities


def _validate_logits(logits):
    """Checks a finite (N, C) real array; returns it as float64."""
    logits = _as_real_array(
        logits, "logits", "(examples, classes)", "one example and one class"
    )
    if not np.all(np.isfinite(logits)):
        bad_row = int(np.argwhere(~np.isfinite(logits))[0, 0])
        raise ValueError(
            f"logits must be finite; row {bad_row} is "
            f"{logits[bad_row].tolist()}"
        )
    return logits


def _validate_scores(scores, name):
    """Checks a finite non-empty 1-D real array; returns it as float64."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array (examples,); got shape {scores.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError(
            f"{name} must have at least one example; got shape {scores.shape}"
        )
    if not (
        np.issubdtype(scores.dtype, np.floating)
        or np.issubdtype(scores.dtype, np.integer)
    ):
        raise ValueError(
            f"{name} must be a real numeric array; got dtype {scores.dtype}"
        )
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(
            f"{name} must be finite; entry {bad} is {scores[bad]!r}"
        )
    return scores


def _validate_temperature(temperature):
    """Checks that temperature is a finite positive real; returns a float."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(
        temperature, (int, float, np.integer, np.floating)
    ):
        raise ValueError(
            f"temperature must be a finite positive real number; got "
            f"{temperature!r} of type {type(temperature).__name__}"
        )
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a finite positive real number; got "
            f"{temperature!r}"
        )
    return float(temperature)


def _validate_bounds(bounds):
    """Checks (T_min, T_max) with 0 < T_min < T_max finite; returns floats."""
    try:
        t_min, t_max = bounds
        t_min, t_max = (_validate_temperature(t) for t in (t_min, t_max))
    except (TypeError, ValueError):
        raise ValueError(
            "bounds must be a pair (T_min, T_max) of finite positive real "
            f"numbers with T_min < T_max; got {bounds!r}"
        ) from None
    if not t_min < t_max:
        raise ValueError(
            "bounds must be a pair (T_min, T_max) of finite positive real "
            f"numbers with T_min < T_max; got {bounds!r}"
        )
    return t_min, t_max


def _as_real_array(values, name, layout, at_least):
    """Checks the shape (non-empty, len(layout) axes) and dtype; to float64."""
    values = np.asarray(values)
    ndim = layout.count(",") + 1
    if values.ndim != ndim:
        raise ValueError(
            f"{name} must be a {ndim}-D array {layout}; "
            f"got shape {values.shape}"
        )
    if 0 in values.shape:
        raise ValueError(
            f"{name} must have at least {at_least}; got shape {values.shape}"
        )
    if not (
        np.issubdtype(values.dtype, np.floating)
        or np.issubdtype(values.dtype, np.integer)
        or values.dtype == np.bool_
    ):
        raise ValueError(
            f"{name} must be a real numeric array; got dtype {values.dtype}"
        )
    return values.astype(np.float64)


def _validate_labels(labels, num_examples, num_classes, per):
    """Checks class-index labels, one per `per`; returns them as int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"labels must be a 1-D array (examples,); got shape {labels.shape}"
        )
    if labels.shape[0] != num_examples:
        raise ValueError(
            f"labels must have one entry per {per} "
            f"({num_examples}); got {labels.shape[0]}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array; got dtype {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}); got values "
            f"from {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64)


def _check_distributions(probabilities, name):
    """Checks that the last axis holds distributions (finite, >= 0, sum 1)."""

    def where(index):
        # "row i" for (N, C) arrays, "member k, row i" for (K, N, C) ones.
        index = np.unravel_index(int(index), probabilities.shape[:-1])
        place = f"row {int(index[-1])}"
        if len(index) == 2:
            place = f"member {int(index[0])}, {place}"
        return place, probabilities[index]

    rows = probabilities.reshape(-1, probabilities.shape[-1])
    bad = np.flatnonzero(~np.all(np.isfinite(rows), axis=1))
    if bad.size:
        place, row = where(bad[0])
        raise ValueError(
            f"{name} must be finite; {place} is {row.tolist()}"
        )
    bad = np.flatnonzero(np.any(rows < 0, axis=1))
    if bad.size:
        place, row = where(bad[0])
        raise ValueError(
            f"{name} must be non-negative; {place} is {row.tolist()}"
        )
    row_sums = np.sum(rows, axis=1)
    bad = np.flatnonzero(np.abs(row_sums - 1.0) > _SUM_TOLERANCE)
    if bad.size:
        place, _ = where(bad[0])
        raise ValueError(
            f"{name} rows must sum to 1 (within {_SUM_TOLERANCE}); "
            f"{place} sums to {row_sums[bad[0]]!r} "
            f"({bad.size} bad row{'s' if bad.size > 1 else ''})"
        )
