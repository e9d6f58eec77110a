"""Tests for rank1_keras.data.digits and rank1_keras.data.time_series.

The digits come with scikit-learn (a dependency of the test environment).
The real-file UCR/UEA tests read the ``.ts`` files bundled in the sktime
wheel; they FAIL (not skip) when sktime is absent, with the install command.
"""

import ast
import importlib.machinery
import importlib.util
import os
import sys

import numpy as np
import pytest

from rank1_keras.data import DataNotFoundError
from rank1_keras.data import load_digits
from rank1_keras.data import load_ucr_uea
from rank1_keras.data import read_ts
from rank1_keras.data import digits
from rank1_keras.data import time_series

# --------------------------------------------------------------------------
# .ts parser on files written here.
# --------------------------------------------------------------------------

UNIVARIATE_EQUAL = """\
# A univariate problem with comments, blank lines and mixed-case tags.
% An ARFF-style comment.
@problemName Uni
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 4

@classLabel true up down
@data
1,2,3,4:up
# a comment between cases
-1.5,0,2.5e-1,8.6429E-4:down

4,3,2,1:down
"""

MULTIVARIATE_VARIABLE = """\
@problemname Multi
@timestamps false
@missing true
@univariate false
@dimensions 2
@equallength false
@classlabel true b a c
@data
1,2,3:10,20,30:a
4,?:?,50:c
7:70:b
0.5,?,1.5,2.5:60,61,62,?:a
"""


def _write_ts(directory, name, split, text, nested=True):
    """Writes ``text`` as ``<name>_<SPLIT>.ts`` and returns its path."""
    if nested:
        directory = directory / name
        directory.mkdir(exist_ok=True)
    path = directory / f"{name}_{split.upper()}.ts"
    path.write_text(text)
    return path


def test_read_univariate_equal_length(tmp_path):
    path = _write_ts(tmp_path, "Uni", "train", UNIVARIATE_EQUAL)
    cases, labels, class_names = read_ts(path)
    assert len(cases) == 3
    for case in cases:
        assert case.shape == (4, 1)
        assert case.dtype == np.float32
    np.testing.assert_array_equal(cases[0][:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(
        cases[1][:, 0],
        np.array([-1.5, 0.0, 0.25, 8.6429e-4], dtype=np.float32),
    )
    np.testing.assert_array_equal(cases[2][:, 0], [4, 3, 2, 1])
    assert labels == ["up", "down", "down"]
    assert class_names == ["up", "down"]


def test_read_multivariate_variable_length_with_missing(tmp_path):
    path = _write_ts(tmp_path, "Multi", "train", MULTIVARIATE_VARIABLE)
    cases, labels, class_names = read_ts(str(path))
    assert [case.shape for case in cases] == [(3, 2), (2, 2), (1, 2), (4, 2)]
    assert all(case.dtype == np.float32 for case in cases)
    nan = np.nan
    np.testing.assert_array_equal(cases[0], [[1, 10], [2, 20], [3, 30]])
    np.testing.assert_array_equal(cases[1], [[4, nan], [nan, 50]])
    np.testing.assert_array_equal(cases[2], [[7, 70]])
    np.testing.assert_array_equal(
        cases[3], [[0.5, 60], [nan, 61], [1.5, 62], [2.5, nan]]
    )
    assert labels == ["a", "c", "b", "a"]
    # Declared order, not sorted order.
    assert class_names == ["b", "a", "c"]


def test_read_class_label_false_has_no_labels(tmp_path):
    text = ("@problemName NoLabels\n@univariate false\n@classLabel false\n"
            "@data\n1,2:3,4\n5,6:7,8\n")
    path = _write_ts(tmp_path, "NoLabels", "train", text)
    cases, labels, class_names = read_ts(path)
    # Every ':'-field is a channel: nothing is taken as a label.
    np.testing.assert_array_equal(cases[0], [[1, 3], [2, 4]])
    np.testing.assert_array_equal(cases[1], [[5, 7], [6, 8]])
    assert labels is None and class_names is None
    with pytest.raises(ValueError, match="no class labels"):
        load_ucr_uea("NoLabels", data_dir=tmp_path)


def test_read_regression_targets_as_strings(tmp_path):
    text = ("@problemName Reg\n@univariate true\n@targetLabel true\n@data\n"
            "1,2,3:0.25\n4,5,6:-1.5\n")
    path = _write_ts(tmp_path, "Reg", "train", text)
    cases, labels, class_names = read_ts(path)
    np.testing.assert_array_equal(cases[1][:, 0], [4, 5, 6])
    assert labels == ["0.25", "-1.5"]
    assert class_names is None
    with pytest.raises(ValueError, match="no class labels"):
        load_ucr_uea("Reg", data_dir=tmp_path)


_HEADER = "@problemName Bad\n@classLabel true x y\n"


# (test id, file text, expected message regex).
MALFORMED = [
    ("undeclared-label", _HEADER + "@data\n1,2:z\n",
     r"line 4: label 'z' is not one of"),
    ("not-a-number", _HEADER + "@data\n1,abc:x\n",
     r"line 4: channel 0 holds 'abc'"),
    ("empty-value", _HEADER + "@data\n1,,2:x\n",
     r"line 4: channel 0 holds ''"),
    ("unequal-channels", _HEADER + "@data\n1,2:3:x\n",
     r"line 4: the channels of a case must have equal lengths"),
    ("channel-count-changes", _HEADER + "@data\n1,2:3,4:x\n5,6:y\n",
     r"line 5: 1 channels; the first case has 2"),
    ("no-label-field", _HEADER + "@data\n1,2\n",
     r"line 4: expected channels then a label"),
    ("univariate-two-channels",
     "@univariate true\n" + _HEADER + "@data\n1:2:x\n",
     r"line 5: 2 channels; the header says 1"),
    ("dimensions-mismatch", "@dimensions 3\n" + _HEADER + "@data\n1:2:x\n",
     r"line 5: 2 channels; the header says 3"),
    ("univariate-with-dimensions-2",
     "@univariate true\n@dimensions 2\n" + _HEADER + "@data\n1:x\n",
     r"line 5: @univariate true but @dimensions 2"),
    ("series-length-mismatch",
     "@seriesLength 3\n" + _HEADER + "@data\n1,2:x\n",
     r"line 5: length 2; @seriesLength is 3"),
    ("unequal-lengths",
     "@equalLength true\n" + _HEADER + "@data\n1,2:x\n1,2,3:y\n",
     r"line 6: length 3 but @equalLength true"),
    ("timestamps", "@timeStamps true\n" + _HEADER + "@data\n(0,1):x\n",
     r"line 4: @timeStamps true .* not supported"),
    ("bad-boolean", "@missing maybe\n" + _HEADER + "@data\n",
     r"line 1: @missing must be 'true' or 'false'"),
    ("bad-series-length", "@seriesLength -2\n" + _HEADER + "@data\n",
     r"line 1: @seriesLength must be a positive integer"),
    ("no-declared-labels", "@classLabel true\n@data\n",
     r"line 1: @classLabel true must list"),
    ("repeated-labels", "@classLabel true a a\n@data\n",
     r"line 1: repeated @classLabel"),
    ("labels-with-false", "@classLabel false a\n@data\n",
     r"line 1: @classLabel false takes no labels"),
    ("data-before-data-tag", _HEADER + "1,2:x\n@data\n",
     r"line 3: data before the @data line"),
    ("header-after-data", _HEADER + "@data\n1,2:x\n@problemName Again\n",
     r"line 5: header line after @data"),
    ("no-data-tag", _HEADER, r"no @data line"),
]


@pytest.mark.parametrize("text, message",
                         [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_read_malformed_raises(tmp_path, text, message):
    path = _write_ts(tmp_path, "Bad", "train", text)
    with pytest.raises(ValueError, match=message) as info:
        read_ts(path)
    assert str(path) in str(info.value)


def test_read_missing_file_raises_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="Nope_TRAIN.ts"):
        read_ts(tmp_path / "Nope_TRAIN.ts")


# --------------------------------------------------------------------------
# load_ucr_uea on files written here.
# --------------------------------------------------------------------------


def test_load_pads_with_zeros_and_indexes_declared_classes(tmp_path):
    _write_ts(tmp_path, "Multi", "train", MULTIVARIATE_VARIABLE)
    x, lengths, labels, class_names = load_ucr_uea(
        "Multi", split="train", data_dir=tmp_path
    )
    assert x.shape == (4, 4, 2) and x.dtype == np.float32
    assert lengths.dtype == np.int64 and labels.dtype == np.int64
    np.testing.assert_array_equal(lengths, [3, 2, 1, 4])
    assert class_names == ["b", "a", "c"]
    # "a", "c", "b", "a" as indices into the declared ["b", "a", "c"].
    np.testing.assert_array_equal(labels, [1, 2, 0, 1])
    nan = np.nan
    expected = np.array([
        [[1, 10], [2, 20], [3, 30], [0, 0]],
        [[4, nan], [nan, 50], [0, 0], [0, 0]],
        [[7, 70], [0, 0], [0, 0], [0, 0]],
        [[0.5, 60], [nan, 61], [1.5, 62], [2.5, nan]],
    ], dtype=np.float32)
    # NaN (missing) inside a case is kept; padding after the end is zero.
    np.testing.assert_array_equal(x, expected)


def test_load_test_split_and_flat_directory(tmp_path):
    _write_ts(tmp_path, "Uni", "train", "@classLabel true up down\n@data\n"
              "9,9:up\n", nested=False)
    _write_ts(tmp_path, "Uni", "test", UNIVARIATE_EQUAL, nested=False)
    x, lengths, labels, class_names = load_ucr_uea("Uni", split="test",
                                                   data_dir=str(tmp_path))
    assert x.shape == (3, 4, 1)
    np.testing.assert_array_equal(lengths, [4, 4, 4])
    np.testing.assert_array_equal(labels, [0, 1, 1])
    assert class_names == ["up", "down"]
    np.testing.assert_array_equal(x[2, :, 0], [4, 3, 2, 1])
    x, _, labels, _ = load_ucr_uea("Uni", data_dir=tmp_path)
    np.testing.assert_array_equal(x, [[[9], [9]]])
    np.testing.assert_array_equal(labels, [0])


def test_load_nested_directory_wins_over_flat(tmp_path):
    _write_ts(tmp_path, "Uni", "train", "@classLabel true p q\n@data\n1:p\n")
    _write_ts(tmp_path, "Uni", "train", "@classLabel true p q\n@data\n2:q\n",
              nested=False)
    x, _, labels, _ = load_ucr_uea("Uni", data_dir=tmp_path)
    assert float(x[0, 0, 0]) == 1.0 and labels.tolist() == [0]


def test_environment_variable_sets_default_dir(tmp_path, monkeypatch):
    _write_ts(tmp_path, "Uni", "train", UNIVARIATE_EQUAL)
    monkeypatch.setenv("RANK1_KERAS_UCR_UEA_DIR", str(tmp_path))
    x, _, _, _ = load_ucr_uea("Uni")
    assert x.shape == (3, 4, 1)


def test_data_dir_argument_overrides_environment_variable(tmp_path,
                                                          monkeypatch):
    _write_ts(tmp_path, "Uni", "train", UNIVARIATE_EQUAL)
    monkeypatch.setenv("RANK1_KERAS_UCR_UEA_DIR", str(tmp_path / "absent"))
    x, _, _, _ = load_ucr_uea("Uni", data_dir=tmp_path)
    assert x.shape == (3, 4, 1)


def _fake_find_spec(package_dir):
    """A find_spec that places a fake "sktime" at ``package_dir`` (or none)."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        if name != "sktime":
            return real_find_spec(name, package)
        if package_dir is None:
            return None
        spec = importlib.machinery.ModuleSpec("sktime", None, is_package=True)
        spec.submodule_search_locations = [str(package_dir)]
        return spec

    return find_spec


def test_default_dir_is_sktime_data_found_without_import(tmp_path,
                                                        monkeypatch):
    package_dir = tmp_path / "site-packages" / "sktime"
    data_dir = package_dir / "datasets" / "data"
    data_dir.mkdir(parents=True)
    _write_ts(data_dir, "Uni", "test", UNIVARIATE_EQUAL)
    monkeypatch.delenv("RANK1_KERAS_UCR_UEA_DIR", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        _fake_find_spec(package_dir))
    x, _, labels, _ = load_ucr_uea("Uni", split="test")
    assert x.shape == (3, 4, 1)
    np.testing.assert_array_equal(labels, [0, 1, 1])


def test_sktime_absent_raises_with_install_command(monkeypatch):
    monkeypatch.delenv("RANK1_KERAS_UCR_UEA_DIR", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec(None))
    with pytest.raises(DataNotFoundError) as info:
        load_ucr_uea("GunPoint", split="test")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "sktime is not installed" in message
    assert "GunPoint_TEST.ts" in message
    assert "`pip install sktime`" in message
    assert "pip install --no-deps sktime" in message
    assert "data_dir" in message


def test_missing_file_in_data_dir_raises_with_install_command(tmp_path):
    _write_ts(tmp_path, "Uni", "train", UNIVARIATE_EQUAL)
    with pytest.raises(DataNotFoundError) as info:
        load_ucr_uea("Uni", split="test", data_dir=tmp_path)
    message = str(info.value)
    assert "Uni_TEST.ts" in message
    assert str(tmp_path) in message
    assert "`pip install sktime`" in message
    assert "data_dir" in message
    # An unknown name is "not found" too (any name works if files exist).
    with pytest.raises(DataNotFoundError, match="NoSuchProblem_TRAIN.ts"):
        load_ucr_uea("NoSuchProblem", data_dir=tmp_path)


@pytest.mark.parametrize("split", ["validation", "TRAIN", "", None])
def test_bad_split_raises(tmp_path, split):
    with pytest.raises(ValueError,
                       match=r"split must be one of.*'train'.*'test'"):
        load_ucr_uea("GunPoint", split=split, data_dir=tmp_path)


@pytest.mark.parametrize("name", ["", " ", "..", "../GunPoint", "a/b",
                                  "a\\b", None, 3])
def test_bad_name_raises(tmp_path, name):
    with pytest.raises(ValueError, match=r"name must be a UCR/UEA problem"):
        load_ucr_uea(name, data_dir=tmp_path)


def test_empty_data_raises(tmp_path):
    _write_ts(tmp_path, "Empty", "train", "@classLabel true a\n@data\n")
    assert read_ts(tmp_path / "Empty" / "Empty_TRAIN.ts") == ([], [], ["a"])
    with pytest.raises(ValueError, match="no cases"):
        load_ucr_uea("Empty", data_dir=tmp_path)


# --------------------------------------------------------------------------
# Real files bundled in the sktime wheel. These FAIL when sktime is absent.
# --------------------------------------------------------------------------

# (name, split): (cases, channels, min length, max length, class counts).
REAL_FILES = {
    ("JapaneseVowels", "train"): (270, 12, 7, 26, [30] * 9),
    ("JapaneseVowels", "test"): (370, 12, 7, 29,
                                 [31, 35, 88, 44, 29, 24, 40, 50, 29]),
    ("ItalyPowerDemand", "train"): (67, 1, 24, 24, [34, 33]),
    ("ItalyPowerDemand", "test"): (1029, 1, 24, 24, [513, 516]),
    ("GunPoint", "train"): (50, 1, 150, 150, [24, 26]),
    ("GunPoint", "test"): (150, 1, 150, 150, [76, 74]),
}


def _require_sktime_file(name, split):
    data_dir = time_series._sktime_data_dir()
    suffix = split.upper()
    if data_dir is None:
        where = "sktime is not installed"
    else:
        where = f"not in sktime's data directory {data_dir}"
    if data_dir is None or not os.path.isfile(
            os.path.join(data_dir, name, f"{name}_{suffix}.ts")):
        pytest.fail(
            f"sktime's bundled UCR/UEA file {name}/{name}_{suffix}.ts is "
            f"absent ({where}). These real-file tests need it: run "
            "`pip install --no-deps sktime` (only the data files are used; "
            "the 1.2.0 wheel is 8.2 MB) or `pip install sktime`.",
            pytrace=False,
        )


@pytest.mark.parametrize("name, split", list(REAL_FILES),
                         ids=[f"{n}-{s}" for n, s in REAL_FILES])
def test_real_sktime_files(name, split):
    _require_sktime_file(name, split)
    sktime_was_imported = "sktime" in sys.modules
    num_cases, channels, min_len, max_len, counts = REAL_FILES[(name, split)]

    x, lengths, labels, class_names = load_ucr_uea(name, split=split)

    assert x.shape == (num_cases, max_len, channels)
    assert x.dtype == np.float32
    assert int(lengths.min()) == min_len and int(lengths.max()) == max_len
    assert class_names == [str(k) for k in range(1, len(counts) + 1)]
    np.testing.assert_array_equal(np.bincount(labels), counts)
    assert not np.isnan(x).any()
    # Padding after each case's end is zero; the last step is not (always).
    steps = np.arange(max_len)
    padding = steps[np.newaxis, :] >= lengths[:, np.newaxis]
    assert not x[padding].any()
    last = x[np.arange(num_cases), lengths - 1]
    assert np.abs(last).sum(axis=-1).min() > 0
    # The files were found without importing sktime.
    assert sktime_was_imported or "sktime" not in sys.modules


@pytest.mark.parametrize("name", list(time_series.UCR_UEA_DATASETS))
def test_documented_facts_match_real_files(name):
    facts = time_series.UCR_UEA_DATASETS[name]
    lengths, class_names = [], set()
    for split in ("train", "test"):
        _require_sktime_file(name, split)
        x, split_lengths, _, names = load_ucr_uea(name, split=split)
        assert x.shape[0] == facts[f"num_{split}"]
        assert x.shape[2] == facts["channels"]
        lengths.extend(split_lengths.tolist())
        class_names.update(names)
    assert min(lengths) == facts["min_length"]
    assert max(lengths) == facts["max_length"]
    assert len(class_names) == facts["num_classes"]


def test_real_japanese_vowels_first_values():
    _require_sktime_file("JapaneseVowels", "train")
    path = os.path.join(time_series._sktime_data_dir(), "JapaneseVowels",
                        "JapaneseVowels_TRAIN.ts")
    cases, labels, _ = read_ts(path)
    # The first case's first line, as printed in the file.
    assert cases[0].shape == (20, 12)
    np.testing.assert_array_equal(
        cases[0][:3, 0], np.array([1.860936, 1.891651, 1.939205], np.float32)
    )
    np.testing.assert_array_equal(
        cases[0][:3, 1],
        np.array([-0.207383, -0.193249, -0.239664], np.float32),
    )
    assert labels[0] == "1"


# --------------------------------------------------------------------------
# Digits.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sklearn_digits():
    from sklearn import datasets

    return datasets.load_digits()


def test_digits_shapes_and_range(sklearn_digits):
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8, 1)
    assert images.dtype == np.float32
    assert labels.shape == (1797,)
    assert labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(labels, sklearn_digits.target)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                  np.bincount(sklearn_digits.target))


def test_digits_normalization_is_exact(sklearn_digits):
    raw, _ = load_digits(normalize=False)
    normalized, _ = load_digits()
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw[..., 0], sklearn_digits.images)
    assert raw.max() == 16.0
    # k / 16 is exact in float32, so equality (not closeness) holds.
    np.testing.assert_array_equal(normalized[..., 0],
                                  sklearn_digits.images / 16.0)
    assert np.all(normalized[raw == 16.0] == 1.0)
    assert set(np.unique(raw).tolist()) <= set(range(17))


def test_digits_resized_to_fashion_mnist_size(sklearn_digits):
    images, labels = load_digits(image_size=(28, 28))
    assert images.shape == (1797, 28, 28, 1)
    assert images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(labels, sklearn_digits.target)
    raw, _ = load_digits(image_size=(28, 28), normalize=False)
    np.testing.assert_allclose(raw / 16.0, images, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        images[..., 0],
        digits.resize_bilinear(sklearn_digits.images, (28, 28)) / 16.0,
        rtol=0, atol=1e-7,
    )
    # Same size is a no-op, and non-square sizes work.
    same, _ = load_digits(image_size=(8, 8))
    np.testing.assert_array_equal(same, load_digits()[0])
    assert load_digits(image_size=(12, 20))[0].shape == (1797, 12, 20, 1)


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_2x2_to_3x3_by_hand(align_corners):
    # Both conventions sample the 2-pixel axis at 0, 0.5, 1:
    # half-pixel: (i + 0.5) * 2/3 - 0.5 = -1/6 (clamped to 0), 0.5, 7/6
    # (clamped to 1); align corners: i * 1/2.
    image = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(
        digits.resize_bilinear(image, (3, 3), align_corners=align_corners),
        [[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]],
    )


def test_resize_conventions_differ_by_hand():
    row = np.array([[0.0, 4.0]])
    # Half-pixel: (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped.
    np.testing.assert_array_equal(digits.resize_bilinear(row, (1, 4)),
                                  [[0.0, 1.0, 3.0, 4.0]])
    # Align corners: i / 3 -> 0, 4/3, 8/3, 4.
    np.testing.assert_allclose(
        digits.resize_bilinear(row, (1, 4), align_corners=True),
        [[0.0, 4 / 3, 8 / 3, 4.0]], rtol=0, atol=1e-15,
    )
    # Halving: half-pixel averages pixel pairs, align corners keeps the ends.
    column = np.array([[0.0], [1.0], [2.0], [3.0]])
    np.testing.assert_array_equal(digits.resize_bilinear(column, (2, 1)),
                                  [[0.5], [2.5]])
    np.testing.assert_array_equal(
        digits.resize_bilinear(column, (2, 1), align_corners=True),
        [[0.0], [3.0]],
    )
    # A single output pixel: the mean of the centre pair / the first pixel.
    np.testing.assert_array_equal(digits.resize_bilinear(column, (1, 1)),
                                  [[1.5]])
    np.testing.assert_array_equal(
        digits.resize_bilinear(column, (1, 1), align_corners=True), [[0.0]]
    )


@pytest.mark.parametrize("size", [(28, 28), (5, 3), (1, 1), (8, 8)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_constant_image_stays_constant(size, align_corners):
    image = np.full((2, 8, 8), 0.7)
    image[1] = 13.0 / 16.0
    out = digits.resize_bilinear(image, size, align_corners=align_corners)
    assert out.shape == (2,) + size
    np.testing.assert_array_equal(out[0], np.full(size, 0.7))
    np.testing.assert_array_equal(out[1], np.full(size, 13.0 / 16.0))


@pytest.mark.parametrize("size", [(28, 28), (5, 13), (3, 3)])
def test_resize_matches_tensorflow(sklearn_digits, size):
    import tensorflow as tf

    images = sklearn_digits.images[:50]
    ours = digits.resize_bilinear(images, size)
    theirs = tf.image.resize(images[..., np.newaxis], size,
                             method="bilinear").numpy()[..., 0]
    # TensorFlow interpolates in float32.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    ours = digits.resize_bilinear(images, size, align_corners=True)
    theirs = tf.compat.v1.image.resize_bilinear(
        images[..., np.newaxis], size, align_corners=True
    ).numpy()[..., 0]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("image_size", [(28,), 28, (0, 28), (28, -1),
                                        (28.0, 28), "ab", (True, 2),
                                        (28, 28, 1)])
def test_digits_bad_image_size_raises(image_size):
    with pytest.raises(
            ValueError,
            match=r"image_size must be None or a pair of positive integers"):
        load_digits(image_size=image_size)


def test_resize_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"size must be a pair"):
        digits.resize_bilinear(np.zeros((2, 2)), None)
    with pytest.raises(ValueError, match=r"images must have shape"):
        digits.resize_bilinear(np.zeros(4), (2, 2))
    with pytest.raises(ValueError, match=r"images must have shape"):
        digits.resize_bilinear(np.zeros((3, 0)), (2, 2))


def test_digits_without_sklearn_raises_with_install_command(monkeypatch):
    # None in sys.modules makes `import sklearn` raise ImportError.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(DataNotFoundError, match="`pip install scikit-learn`"):
        load_digits()


# --------------------------------------------------------------------------
# Import hygiene: NumPy (and the standard library) only, no TensorFlow.
# --------------------------------------------------------------------------


def _imports(module, top_level_only):
    with open(module.__file__) as f:
        tree = ast.parse(f.read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    return imported


def test_modules_import_only_numpy_at_import_time():
    # Checked on the source, since importing the package may pull in Keras.
    assert _imports(digits, top_level_only=True) == {"numpy", "rank1_keras"}
    # scikit-learn is imported lazily, inside load_digits.
    assert _imports(digits, top_level_only=False) == {
        "numpy", "rank1_keras", "sklearn"
    }
    assert _imports(time_series, top_level_only=False) == {
        "importlib", "numpy", "os", "rank1_keras"
    }
