"""Offline reader for UCR/UEA time-series classification data in ``.ts`` files.

The UCR (univariate) and UEA (multivariate) time-series classification
archives (Dau et al., 2019, "The UCR time series archive", IEEE/CAA Journal of
Automatica Sinica 6(6); Bagnall et al., 2018, "The UEA multivariate time
series classification archive, 2018", arXiv:1811.00075;
https://www.timeseriesclassification.com) distribute each problem as a
``<Name>_TRAIN.ts`` and a ``<Name>_TEST.ts`` file. The archive publishes no
licence of its own beyond asking users to cite it and the data's original
source.

This module never touches the network. By default it reads the copies of a
few problems bundled in the sktime package (BSD-3-Clause licence;
https://www.sktime.net), under ``sktime/datasets/data/<Name>/``, installed
with ``pip install sktime`` (only the data files are used, so
``pip install --no-deps sktime`` is enough). sktime is located with
``importlib.util.find_spec`` and never imported (importing it takes seconds
and needs pandas and scikit-base). Another directory can be given with the
``data_dir`` argument or, as the default, with the ``RANK1_KERAS_UCR_UEA_DIR``
environment variable; it may hold ``<Name>/<Name>_TRAIN.ts`` (the layout of
sktime and of the archive's zip files) or ``<Name>_TRAIN.ts`` directly.

Documented problems (``UCR_UEA_DATASETS``; any other name works if its files
exist):

* ``JapaneseVowels`` (UEA; from the UCI repository, Kudo, Toyama & Shimbo,
  1999): 9 speakers saying "ae", 12 LPC cepstrum channels, variable length 7
  to 29 steps, 9 classes, 270 training and 370 test cases.
* ``ItalyPowerDemand`` (UCR; Keogh et al., 2006, "Intelligent Icons"): one
  day's 24 hourly Italian electrical power demands, univariate, length 24,
  2 classes (October to March vs April to September), 67 training and
  1,029 test cases.
* ``GunPoint`` (UCR; Ratanamahatana & Keogh, 2005): the x-coordinate of an
  actor's right hand while drawing a gun or pointing, univariate, length
  150, 2 classes, 50 training and 150 test cases.

The ``.ts`` format (as written by sktime and the archive) is text: lines
starting with ``#`` (or ``%``, as in sktime's ``UnitTest`` files and Weka's
ARFF) are comments and blank lines are ignored; header lines
start with ``@`` (tags are case-insensitive): ``@problemName <name>``,
``@timeStamps true|false``, ``@missing true|false``, ``@univariate
true|false``, ``@dimensions <d>``, ``@equalLength true|false``,
``@seriesLength <n>``, ``@classLabel true <label> <label> ...`` or
``@classLabel false``, ``@targetLabel true|false`` (regression targets), and
finally ``@data``. Each following line is one case: its dimensions
(channels) separated by ``:``, the values of a dimension separated by ``,``
and, when the file has labels, the label as the last ``:``-field. A ``?``
value is missing and read as NaN. Parsing uses the standard library and
NumPy only, so importing this module does not import TensorFlow.

Example:

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "Toy_TRAIN.ts")
>>> with open(path, "w") as f:
...     _ = f.write("# A toy problem\\n@problemName Toy\\n@univariate false\\n"
...                 "@equalLength false\\n@classLabel true yes no\\n@data\\n"
...                 "1,2,3:4,5,6:no\\n7,?:8,9:yes\\n")
>>> cases, labels, class_names = read_ts(path)
>>> [case.shape for case in cases], labels, class_names
([(3, 2), (2, 2)], ['no', 'yes'], ['yes', 'no'])
>>> cases[1]
array([[ 7.,  8.],
       [nan,  9.]], dtype=float32)
>>> import shutil; shutil.rmtree(os.path.dirname(path))
"""

import importlib.util
import os

import numpy as np

from rank1_keras.data.fashion_mnist import DataNotFoundError

INSTALL_COMMAND = "pip install sktime"
"""Installs sktime, whose wheel bundles the ``.ts`` files read here."""

UCR_UEA_DIR_ENV_VAR = "RANK1_KERAS_UCR_UEA_DIR"
"""Environment variable that, when set, replaces the default directory."""

UCR_UEA_DATASETS = {
    "JapaneseVowels": dict(
        channels=12, min_length=7, max_length=29, num_classes=9,
        num_train=270, num_test=370,
    ),
    "ItalyPowerDemand": dict(
        channels=1, min_length=24, max_length=24, num_classes=2,
        num_train=67, num_test=1029,
    ),
    "GunPoint": dict(
        channels=1, min_length=150, max_length=150, num_classes=2,
        num_train=50, num_test=150,
    ),
}
"""Facts about the documented problems (lengths over both splits)."""

_SPLIT_SUFFIXES = {"train": "TRAIN", "test": "TEST"}
_BOOLEAN_TAGS = (
    "timestamps", "missing", "univariate", "equallength", "targetlabel",
)
# The usual spelling of the (case-insensitive) tags, for error messages.
_TAG_NAMES = {
    "timestamps": "timeStamps",
    "equallength": "equalLength",
    "targetlabel": "targetLabel",
    "serieslength": "seriesLength",
}


def load_ucr_uea(name, split="train", data_dir=None):
    """Loads one split of a UCR/UEA classification problem, zero-padded.

    Args:
        name: Problem name as in the file names, e.g. ``"JapaneseVowels"``,
            ``"ItalyPowerDemand"`` or ``"GunPoint"`` (see
            ``UCR_UEA_DATASETS``); case-sensitive.
        split: ``"train"`` (reads ``<name>_TRAIN.ts``) or ``"test"`` (reads
            ``<name>_TEST.ts``).
        data_dir: Directory holding ``<name>/<name>_TRAIN.ts`` (or
            ``<name>_TRAIN.ts``). Defaults to the ``RANK1_KERAS_UCR_UEA_DIR``
            environment variable when set, else to the data directory of the
            installed sktime package (found without importing sktime).

    Returns:
        A tuple ``(sequences, lengths, labels, class_names)``:
        ``sequences`` is ``float32`` of shape ``(N, T, C)``, where ``T`` is
        the longest case *in this split* and ``C`` the number of channels;
        case ``i`` fills ``sequences[i, :lengths[i]]`` and is followed by
        zeros (missing ``?`` values inside a case stay NaN). ``lengths`` is
        ``int64`` of shape ``(N,)``; ``labels`` is ``int64`` of shape
        ``(N,)``, indices into ``class_names``, the list of label strings in
        the order the file's ``@classLabel`` line declares them (for the
        documented problems that is the sorted order, ``"1"``, ``"2"``, ...,
        so label ``k`` is class ``str(k + 1)``).

    Raises:
        ValueError: If ``split`` is not ``"train"`` or ``"test"``, if
            ``name`` is not a plain non-empty file-name stem, or if the file
            is malformed or has no class labels (the message names the file
            and line).
        DataNotFoundError: If the file is missing or, with no ``data_dir``,
            sktime is not installed (the message gives the install command
            and the ``data_dir`` argument).

    Example (needs sktime's data files, ``pip install --no-deps sktime``):

    >>> x, lengths, y, class_names = load_ucr_uea("JapaneseVowels")
    >>> x.shape, x.dtype, int(lengths.min()), int(lengths.max())
    ((270, 26, 12), dtype('float32'), 7, 26)
    >>> y.dtype, class_names
    (dtype('int64'), ['1', '2', '3', '4', '5', '6', '7', '8', '9'])
    """
    if split not in _SPLIT_SUFFIXES:
        raise ValueError(
            f"split must be one of {tuple(_SPLIT_SUFFIXES)}; got {split!r}"
        )
    if (not isinstance(name, str) or not name.strip() or name in (".", "..")
            or any(sep in name for sep in ("/", "\\", os.sep))):
        raise ValueError(
            "name must be a UCR/UEA problem name (a file-name stem without "
            f"path separators), one of {tuple(UCR_UEA_DATASETS)} or any "
            f"other with files in data_dir; got {name!r}"
        )
    path = _find_ts_file(name, split, data_dir)
    cases, labels, class_names = read_ts(path)
    if labels is None or class_names is None:
        raise ValueError(
            f"{path} has no class labels (@classLabel false, or regression "
            "targets with @targetLabel true); load_ucr_uea needs a "
            "classification problem (read_ts reads any .ts file)"
        )
    if not cases:
        raise ValueError(f"{path} holds no cases after @data")

    lengths = np.array([case.shape[0] for case in cases], dtype=np.int64)
    num_channels = cases[0].shape[1]
    sequences = np.zeros(
        (len(cases), int(lengths.max()), num_channels), dtype=np.float32
    )
    for i, case in enumerate(cases):
        sequences[i, :case.shape[0]] = case
    index = {label: i for i, label in enumerate(class_names)}
    label_ids = np.array([index[label] for label in labels], dtype=np.int64)
    return sequences, lengths, label_ids, list(class_names)


def read_ts(path):
    """Parses a ``.ts`` file (the format is in the module docstring).

    Args:
        path: Path of the ``.ts`` file (UTF-8 text).

    Returns:
        A tuple ``(cases, labels, class_names)``: ``cases`` is a list with
        one ``float32`` array of shape ``(length, channels)`` per case
        (lengths may differ between cases; ``?`` values are NaN);
        ``labels`` is the list of the cases' label strings and
        ``class_names`` the list of labels declared by ``@classLabel true``,
        in declared order. Files with ``@classLabel false`` (or with no
        ``@classLabel`` line) have no label field: then every ``:``-field
        is a channel and ``labels`` and ``class_names`` are ``None``. Files
        with ``@targetLabel true`` (regression) return the targets as
        strings in ``labels`` and ``None`` as ``class_names``.

    Raises:
        ValueError: If the file is malformed (the message names the file and
            line): an unknown boolean, no ``@data`` line, ``@timeStamps
            true`` (timestamped values are not supported), a value that is
            not a number or ``?``, a label not declared by ``@classLabel``,
            channels of one case with different lengths, or cases
            disagreeing with each other or with ``@univariate``,
            ``@dimensions``, ``@equalLength`` or ``@seriesLength``. Other
            ``@`` tags are ignored, and so is ``@missing false`` (``?`` is
            read as NaN regardless).
        DataNotFoundError: If ``path`` does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataNotFoundError(f".ts file {path!r} not found")
    header = {}
    class_names = None
    has_labels = None
    in_data = False
    cases, labels = [], []
    num_channels = None

    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith(("#", "%")):
                continue
            where = f"{path}, line {line_number}"
            if line.startswith("@"):
                if in_data:
                    raise ValueError(f"{where}: header line after @data")
                tag, _, value = line[1:].replace("\t", " ").partition(" ")
                tag, value = tag.lower(), value.strip()
                if tag == "data":
                    has_labels = _check_header(header, where)
                    class_names = header.get("classlabel")
                    in_data = True
                elif tag == "classlabel":
                    header[tag] = _parse_class_label(value, where)
                elif tag in _BOOLEAN_TAGS:
                    header[tag] = _parse_bool(tag, value, where)
                elif tag in ("dimensions", "serieslength"):
                    header[tag] = _parse_positive_int(tag, value, where)
                else:
                    header[tag] = value
                continue
            if not in_data:
                raise ValueError(
                    f"{where}: data before the @data line: {line[:40]!r}"
                )

            fields = line.split(":")
            if has_labels:
                if len(fields) < 2:
                    raise ValueError(
                        f"{where}: expected channels then a label, separated "
                        f"by ':'; got one field"
                    )
                label = fields.pop().strip()
                if class_names is not None and label not in class_names:
                    raise ValueError(
                        f"{where}: label {label!r} is not one of the "
                        f"@classLabel labels {class_names}"
                    )
                labels.append(label)
            case = _parse_case(fields, where)
            if num_channels is None:
                num_channels = case.shape[1]
            elif case.shape[1] != num_channels:
                raise ValueError(
                    f"{where}: {case.shape[1]} channels; the first case has "
                    f"{num_channels}"
                )
            _check_case(case, header, cases, where)
            cases.append(case)

    if not in_data:
        raise ValueError(f"{path}: no @data line")
    return cases, (labels if has_labels else None), class_names


def _find_ts_file(name, split, data_dir):
    """Returns the path of ``<name>_<SPLIT>.ts``; else DataNotFoundError."""
    file_name = f"{name}_{_SPLIT_SUFFIXES[split]}.ts"
    hint = (
        f"Install sktime, whose wheel bundles the .ts files of "
        f"{', '.join(UCR_UEA_DATASETS)} and a few others, with "
        f"`{INSTALL_COMMAND}` (only its data files are read, so "
        f"`pip install --no-deps sktime` is enough), or pass a directory "
        f"holding {name}/{file_name} (from "
        f"https://www.timeseriesclassification.com) as the `data_dir` "
        f"argument (or set the {UCR_UEA_DIR_ENV_VAR} environment variable)."
    )
    if data_dir is None:
        data_dir = os.environ.get(UCR_UEA_DIR_ENV_VAR) or _sktime_data_dir()
        if data_dir is None:
            raise DataNotFoundError(
                f"UCR/UEA file {file_name} not found: no data_dir was given "
                f"and sktime is not installed. {hint}"
            )
    data_dir = os.fspath(data_dir)
    for path in (os.path.join(data_dir, name, file_name),
                 os.path.join(data_dir, file_name)):
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(
        f"UCR/UEA file {file_name} not found in directory {data_dir!r} (nor "
        f"in its subdirectory {name!r}). {hint}"
    )


def _sktime_data_dir():
    """Returns sktime's ``datasets/data`` directory, or ``None``.

    ``find_spec`` on a top-level name locates the package without running
    its ``__init__``, so sktime (and pandas) are not imported.
    """
    try:
        spec = importlib.util.find_spec("sktime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(
        list(spec.submodule_search_locations)[0], "datasets", "data"
    )


def _parse_bool(tag, value, where):
    tag = _TAG_NAMES.get(tag, tag)
    if value.lower() not in ("true", "false"):
        raise ValueError(
            f"{where}: @{tag} must be 'true' or 'false'; got {value!r}"
        )
    return value.lower() == "true"


def _parse_positive_int(tag, value, where):
    tag = _TAG_NAMES.get(tag, tag)
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError(
            f"{where}: @{tag} must be a positive integer; got {value!r}"
        )
    return number


def _parse_class_label(value, where):
    """Returns the declared labels for ``true``, ``False`` for ``false``."""
    flag, *names = value.split() or [""]
    if not _parse_bool("classLabel", flag, where):
        if names:
            raise ValueError(
                f"{where}: @classLabel false takes no labels; got {names}"
            )
        return False
    if not names:
        raise ValueError(
            f"{where}: @classLabel true must list the class labels"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: repeated @classLabel labels {names}")
    return names


def _check_header(header, where):
    """Checks the header at ``@data``; returns whether cases have labels."""
    if header.get("timestamps"):
        raise ValueError(
            f"{where}: @timeStamps true (values with timestamps) is not "
            "supported"
        )
    class_label = header.get("classlabel")
    target_label = header.get("targetlabel", False)
    if class_label and target_label:
        raise ValueError(
            f"{where}: both @classLabel true and @targetLabel true"
        )
    if class_label is False:
        header.pop("classlabel")
    if header.get("univariate") and header.get("dimensions", 1) != 1:
        raise ValueError(
            f"{where}: @univariate true but @dimensions "
            f"{header['dimensions']}"
        )
    return bool(class_label) or target_label


def _parse_case(fields, where):
    """Parses the channel fields of one case into ``(length, channels)``."""
    channels = []
    for channel, field in enumerate(fields):
        values = []
        for text in field.split(","):
            text = text.strip()
            if text == "?":
                values.append(np.nan)
                continue
            try:
                values.append(float(text))
            except ValueError:
                raise ValueError(
                    f"{where}: channel {channel} holds {text!r}, which is "
                    "neither a number nor '?'"
                ) from None
        channels.append(values)
    lengths = {len(values) for values in channels}
    if len(lengths) != 1:
        raise ValueError(
            f"{where}: the channels of a case must have equal lengths; got "
            f"{[len(values) for values in channels]}"
        )
    return np.array(channels, dtype=np.float64).T.astype(np.float32)


def _check_case(case, header, previous_cases, where):
    """Checks one case against the header and the cases before it."""
    length, num_channels = case.shape
    expected_channels = header.get(
        "dimensions", 1 if header.get("univariate") else None
    )
    if expected_channels is not None and num_channels != expected_channels:
        raise ValueError(
            f"{where}: {num_channels} channels; the header says "
            f"{expected_channels} (@univariate/@dimensions)"
        )
    if "serieslength" in header and length != header["serieslength"]:
        raise ValueError(
            f"{where}: length {length}; @seriesLength is "
            f"{header['serieslength']}"
        )
    if (header.get("equallength") and previous_cases
            and length != previous_cases[0].shape[0]):
        raise ValueError(
            f"{where}: length {length} but @equalLength true and the first "
            f"case has length {previous_cases[0].shape[0]}"
        )
