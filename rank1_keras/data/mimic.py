"""Reader for a local export of MIMIC-III in-hospital mortality sequences.

MIMIC-III (Johnson et al., 2016, "MIMIC-III, a freely accessible critical
care database", Scientific Data 3:160035; https://physionet.org/content/
mimiciii/) is credentialed data: access needs a PhysioNet account, the
required training and the signed data use agreement, and the data may not be
redistributed. This module therefore ships no data and never downloads; it
reads an extract that you build yourself (e.g. with the MIMIC-III benchmark
code of Harutyunyan et al., 2019) and save in the format below, with
``write_mimic_split`` or any tool writing CSV.

Format. A directory holds, for each split ``train``, ``validation`` and
``test`` that you use, two CSV files (comma separated, UTF-8, one header
line, as written by Python's ``csv`` module; ``.csv`` suffix, lower-case
split name):

``<split>_events.csv``
    Header ``stay_id,time,<feature_1>,...,<feature_F>``: the two fixed
    columns, then F >= 1 feature columns with distinct, non-empty names
    (they become ``feature_names``; use the same columns, in the same order,
    in every split). One row per time step of a stay. ``stay_id`` is an
    integer (int64). ``time`` is the time of the step in hours since
    admission, a finite decimal number; the rows of one stay must have
    non-decreasing times in file order (ties allowed). The rows of
    different stays may come in any order (grouped per stay is usual).
    Feature cells are finite decimal numbers (``1``, ``-0.5``, ``1e-3``); an
    empty cell means missing and is read as ``0.0`` (no missing-indicator is
    produced: standardise features so that 0 is a sensible fill value, or add
    your own indicator columns). ``nan`` or ``inf`` are errors.

``<split>_labels.csv``
    Header ``stay_id,mortality``. One row per stay, each ``stay_id`` once;
    ``mortality`` is ``0`` (survived) or ``1`` (died in hospital). Every stay
    of the labels file must have at least one row in the events file and
    every stay of the events file must have a label. The order of this file
    is the order of the loaded arrays.

Errors name the file and the line (the header is line 1).

Example:

>>> import os, tempfile
>>> import numpy as np
>>> data_dir = tempfile.mkdtemp()
>>> paths = write_mimic_split(data_dir, "train",
...                           [np.array([[1.0, 2.0], [3.0, np.nan]]),
...                            np.array([[5.0, 6.0]])],
...                           labels=[0, 1], stay_ids=[11, 7],
...                           feature_names=["heart_rate", "glucose"])
>>> print(open(paths[0]).read(), end="")
stay_id,time,heart_rate,glucose
11,0.0,1.0,2.0
11,1.0,3.0,
7,0.0,5.0,6.0
>>> data = load_mimic(data_dir, "train")
>>> data["features"][0].tolist(), data["mask"].tolist(), data["labels"].tolist()
([[1.0, 2.0], [3.0, 0.0]], [[True, True], [True, False]], [0, 1])
>>> import shutil; shutil.rmtree(data_dir)
"""

import csv
import math
import numbers
import os

import numpy as np

from rank1_keras.data.fashion_mnist import DataNotFoundError

MIMIC_SPLITS = ("train", "validation", "test")
"""Split names; each has ``<split>_events.csv`` and ``<split>_labels.csv``."""

EVENTS_FIXED_COLUMNS = ("stay_id", "time")
LABELS_HEADER = ("stay_id", "mortality")

_FORMAT_HINT = (
    "See the format description in the docstring of rank1_keras.data.mimic "
    "(README: 'MIMIC-III mortality'); write_mimic_split writes it."
)


def _check_split(split):
    if split not in MIMIC_SPLITS:
        raise ValueError(f"split must be one of {list(MIMIC_SPLITS)}; got split={split!r}.")
    return split


def _paths(data_dir, split):
    return (os.path.join(data_dir, f"{split}_events.csv"),
            os.path.join(data_dir, f"{split}_labels.csv"))


def _read_csv(path):
    """Returns (header, rows, line_numbers) of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: the file is empty; expected a header line. "
                                 f"{_FORMAT_HINT}")
            rows, lines = [], []
            for row in reader:
                if not row:  # A blank line.
                    continue
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path}: not a UTF-8 CSV file: {error}") from error
    return [name.strip() for name in header], rows, lines


def _parse_float(text, path, line, column):
    if text == "":
        raise ValueError(
            f"{path}, line {line}, column {column!r}: empty value (only feature cells "
            "may be empty)."
        )
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}, column {column!r}: non-numeric value {text!r}."
        ) from None
    if not math.isfinite(value):
        raise ValueError(
            f"{path}, line {line}, column {column!r}: non-finite value {text!r} "
            "(leave the cell empty for a missing value)."
        )
    return value


def _parse_int(text, path, line, column):
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}, column {column!r}: {text!r} is not an integer."
        ) from None


def _to_float_matrix(rows, columns, path, lines, names, allow_empty):
    """Converts string cells (rows x columns) to float64, C speed when valid."""
    cells = np.array([[row[c] for c in columns] for row in rows], dtype=str)
    cells = cells.reshape(len(rows), len(columns))
    cells = np.char.strip(cells)
    empty = cells == ""
    if allow_empty:
        cells[empty] = "0"
    try:
        values = cells.astype(np.float64)
        bad = ~np.isfinite(values) | (empty if not allow_empty else False)
    except ValueError:
        bad = None
    if bad is None or np.any(bad):
        # Slow path, only to report the first bad cell with its line.
        for i, row in enumerate(rows):
            for j, c in enumerate(columns):
                text = row[c].strip()
                if text == "" and allow_empty:
                    continue
                _parse_float(text, path, lines[i], names[j])
        raise AssertionError("unreachable: a bad cell was not found")  # pragma: no cover
    return values


def load_mimic(data_dir, split, max_length=None):
    """Loads one split of the local MIMIC-III mortality export.

    Args:
        data_dir: Directory holding ``<split>_events.csv`` and
            ``<split>_labels.csv`` (format in the module docstring).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        max_length: None, or a positive int: ``T = max_length`` time steps
            (every split then has the same ``T``); a stay longer than that
            keeps its LAST ``max_length`` steps (the ones nearest the end of
            the observation window), earlier steps are dropped.

    Returns:
        A dict with, for N stays ordered as in the labels file and T the
        longest stay (or ``max_length``):
        ``features``: float32 ``(N, T, F)``, steps in time order from index 0,
        zero-padded at the end, missing cells 0.0;
        ``mask``: bool ``(N, T)``, True for real (not padding) steps;
        ``lengths``: int32 ``(N,)``, number of real steps (after truncation);
        ``times``: float32 ``(N, T)``, hours since admission, 0 in padding;
        ``labels``: int32 ``(N,)`` mortality 0/1;
        ``stay_ids``: int64 ``(N,)``;
        ``feature_names``: list of the F feature column names.

    Raises:
        DataNotFoundError: If the directory or a file is missing.
        ValueError: For a malformed file (naming the file and line) or a bad
            argument.
    """
    _check_split(split)
    if max_length is not None and (isinstance(max_length, bool)
                                   or not isinstance(max_length, numbers.Integral)
                                   or max_length < 1):
        raise ValueError(
            f"max_length must be None or a positive integer; got max_length={max_length!r}."
        )
    if data_dir is None:
        raise DataNotFoundError(
            f"No data_dir given for the MIMIC-III {split!r} split. {_FORMAT_HINT}"
        )
    data_dir = os.fspath(data_dir)
    events_path, labels_path = _paths(data_dir, split)
    if not os.path.isdir(data_dir):
        raise DataNotFoundError(
            f"MIMIC-III directory {data_dir!r} does not exist; expected it to hold "
            f"{os.path.basename(events_path)} and {os.path.basename(labels_path)}. "
            f"MIMIC-III is credentialed data: export it yourself. {_FORMAT_HINT}"
        )
    for path in (events_path, labels_path):
        if not os.path.isfile(path):
            raise DataNotFoundError(
                f"MIMIC-III file {path} not found (expected in directory {data_dir!r} "
                f"for split {split!r}). {_FORMAT_HINT}"
            )

    stay_ids, labels, label_lines = _read_labels(labels_path)
    feature_names, event_ids, times, values, lines = _read_events(events_path)
    return _assemble(stay_ids, labels, label_lines, feature_names, event_ids, times, values,
                     lines, events_path, labels_path, max_length)


def _read_labels(path):
    header, rows, lines = _read_csv(path)
    if tuple(header) != LABELS_HEADER:
        raise ValueError(
            f"{path}, line 1: header must be {','.join(LABELS_HEADER)!r}; "
            f"got {','.join(header)!r}. {_FORMAT_HINT}"
        )
    stay_ids, labels, seen = [], [], {}
    for row, line in zip(rows, lines):
        if len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 2 fields; got {len(row)}.")
        stay_id = _parse_int(row[0].strip(), path, line, "stay_id")
        label = row[1].strip()
        if label not in ("0", "1"):
            raise ValueError(
                f"{path}, line {line}: mortality must be 0 or 1; got {row[1]!r}."
            )
        if stay_id in seen:
            raise ValueError(
                f"{path}, line {line}: stay_id {stay_id} already appears on line "
                f"{seen[stay_id]}."
            )
        seen[stay_id] = line
        stay_ids.append(stay_id)
        labels.append(int(label))
    return (np.array(stay_ids, dtype=np.int64), np.array(labels, dtype=np.int32),
            np.array(lines, dtype=np.int64))


def _read_events(path):
    header, rows, lines = _read_csv(path)
    if (len(header) < 3 or tuple(header[:2]) != EVENTS_FIXED_COLUMNS
            or any(name == "" for name in header[2:])
            or len(set(header)) != len(header)):
        raise ValueError(
            f"{path}, line 1: header must be 'stay_id,time,<feature_1>,...,<feature_F>' "
            f"with F >= 1 distinct, non-empty feature names; got {','.join(header)!r}. "
            f"{_FORMAT_HINT}"
        )
    width = len(header)
    for row, line in zip(rows, lines):
        if len(row) != width:
            raise ValueError(
                f"{path}, line {line}: expected {width} fields (as in the header); "
                f"got {len(row)}."
            )
    event_ids = np.array(
        [_parse_int(row[0].strip(), path, line, "stay_id") for row, line in zip(rows, lines)],
        dtype=np.int64,
    )
    times = _to_float_matrix(rows, [1], path, lines, ["time"], allow_empty=False)[:, 0]
    values = _to_float_matrix(rows, list(range(2, width)), path, lines, header[2:],
                              allow_empty=True)
    return header[2:], event_ids, times, values, np.array(lines, dtype=np.int64)


def _assemble(stay_ids, labels, label_lines, feature_names, event_ids, times, values,
              lines, events_path, labels_path, max_length):
    num_stays, num_features = len(stay_ids), len(feature_names)
    position = {int(s): i for i, s in enumerate(stay_ids)}
    # Stay index (in labels order) of every event row.
    row_stay = np.empty(len(event_ids), dtype=np.int64)
    for r, stay_id in enumerate(event_ids):
        index = position.get(int(stay_id))
        if index is None:
            raise ValueError(
                f"{events_path}, line {lines[r]}: stay_id {int(stay_id)} has no label in "
                f"{labels_path}."
            )
        row_stay[r] = index
    lengths = np.bincount(row_stay, minlength=num_stays).astype(np.int64)
    if num_stays and np.any(lengths == 0):
        missing = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(
            f"{labels_path}, line {label_lines[missing]}: stay_id "
            f"{int(stay_ids[missing])} has no rows in {events_path}."
        )

    # Rows grouped by stay, file order kept within a stay.
    order = np.argsort(row_stay, kind="stable")
    sorted_stay = row_stay[order]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if num_stays else np.zeros(0, int)
    step = np.arange(len(order)) - starts[sorted_stay]
    sorted_times = times[order]
    decreasing = np.flatnonzero(
        (sorted_stay[1:] == sorted_stay[:-1]) & (sorted_times[1:] < sorted_times[:-1])
    )
    if decreasing.size:
        r, previous = order[decreasing[0] + 1], order[decreasing[0]]
        raise ValueError(
            f"{events_path}, line {lines[r]}: time {float(times[r])!r} of stay_id "
            f"{int(event_ids[r])} is earlier than {float(times[previous])!r} on line "
            f"{lines[previous]}; rows of a stay must be sorted by time."
        )

    if max_length is not None:
        drop = np.maximum(lengths - max_length, 0)
        step = step - drop[sorted_stay]
        keep = step >= 0
        order, sorted_stay, step = order[keep], sorted_stay[keep], step[keep]
        lengths = lengths - drop
        total_steps = int(max_length)
    else:
        total_steps = int(lengths.max()) if num_stays else 0

    features = np.zeros((num_stays, total_steps, num_features), dtype=np.float32)
    out_times = np.zeros((num_stays, total_steps), dtype=np.float32)
    mask = np.zeros((num_stays, total_steps), dtype=bool)
    features[sorted_stay, step] = values[order]
    out_times[sorted_stay, step] = times[order]
    mask[sorted_stay, step] = True
    return {
        "features": features,
        "mask": mask,
        "lengths": lengths.astype(np.int32),
        "times": out_times,
        "labels": labels,
        "stay_ids": stay_ids,
        "feature_names": list(feature_names),
    }


def write_mimic_split(data_dir, split, sequences, labels, stay_ids=None,
                      feature_names=None, times=None):
    """Writes one split in the format read by ``load_mimic``.

    Args:
        data_dir: Output directory (created if needed); existing files of the
            split are overwritten.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        sequences: List of N arrays of shape ``(T_i, F)`` with ``T_i >= 1``
            and the same F; NaN values are written as empty (missing) cells.
        labels: N mortality labels, 0 or 1.
        stay_ids: N distinct integers; default ``0, ..., N - 1``.
        feature_names: F distinct names; default ``feature_0, ...``.
        times: List of N arrays of ``T_i`` non-decreasing finite hours; default
            ``0, 1, ..., T_i - 1``.

    Returns:
        ``(events_path, labels_path)``.

    Raises:
        ValueError: If the arguments are inconsistent.
    """
    _check_split(split)
    sequences = [np.asarray(s, dtype=np.float64) for s in sequences]
    num_stays = len(sequences)
    if num_stays == 0:
        raise ValueError("sequences must hold at least one stay; got 0.")
    for i, s in enumerate(sequences):
        if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
            raise ValueError(
                f"sequences[{i}] must have shape (T_i, F) with T_i >= 1 and F >= 1; "
                f"got shape {s.shape}."
            )
        if s.shape[1] != sequences[0].shape[1]:
            raise ValueError(
                f"sequences[{i}] has {s.shape[1]} features; sequences[0] has "
                f"{sequences[0].shape[1]}."
            )
        if np.any(np.isinf(s)):
            raise ValueError(f"sequences[{i}] holds infinite values.")
    num_features = sequences[0].shape[1]

    labels = list(labels)
    if len(labels) != num_stays:
        raise ValueError(f"labels has {len(labels)} entries; sequences has {num_stays}.")
    for i, label in enumerate(labels):
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(f"labels must be 0 or 1; got labels[{i}]={label!r}.")

    if stay_ids is None:
        stay_ids = list(range(num_stays))
    stay_ids = [int(s) for s in stay_ids]
    if len(stay_ids) != num_stays or len(set(stay_ids)) != num_stays:
        raise ValueError(
            f"stay_ids must be {num_stays} distinct integers; got {stay_ids!r}."
        )

    if feature_names is None:
        feature_names = [f"feature_{j}" for j in range(num_features)]
    feature_names = [str(name) for name in feature_names]
    header = list(EVENTS_FIXED_COLUMNS) + feature_names
    if (len(feature_names) != num_features or any(n.strip() != n or n == "" for n in feature_names)
            or len(set(header)) != len(header)):
        raise ValueError(
            f"feature_names must be {num_features} distinct non-empty names without "
            f"surrounding spaces, other than 'stay_id' and 'time'; got {feature_names!r}."
        )

    if times is None:
        times = [np.arange(len(s), dtype=np.float64) for s in sequences]
    times = [np.asarray(t, dtype=np.float64) for t in times]
    if len(times) != num_stays:
        raise ValueError(f"times has {len(times)} entries; sequences has {num_stays}.")
    for i, (t, s) in enumerate(zip(times, sequences)):
        if t.shape != (len(s),) or not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
            raise ValueError(
                f"times[{i}] must hold {len(s)} finite, non-decreasing values; got {t!r}."
            )

    data_dir = os.fspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    events_path, labels_path = _paths(data_dir, split)

    def cell(value):
        return "" if math.isnan(value) else repr(float(value))

    with open(events_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for stay_id, t, s in zip(stay_ids, times, sequences):
            for step in range(len(s)):
                writer.writerow([stay_id, repr(float(t[step]))]
                                + [cell(v) for v in s[step]])
    with open(labels_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        for stay_id, label in zip(stay_ids, labels):
            writer.writerow([stay_id, int(label)])
    return events_path, labels_path
