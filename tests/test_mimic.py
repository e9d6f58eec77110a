"""Tests for rank1_keras.data.mimic (local MIMIC-III mortality CSV format)."""

import numpy as np
import pytest

from rank1_keras.data import DataNotFoundError
from rank1_keras.data import load_mimic
from rank1_keras.data import write_mimic_split

EVENTS_HEADER = "stay_id,time,hr,sbp\n"
LABELS_HEADER = "stay_id,mortality\n"


def _write_text(directory, split, events, labels):
    (directory / f"{split}_events.csv").write_text(events)
    (directory / f"{split}_labels.csv").write_text(labels)


def _stays():
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(length, 3)).astype(np.float32) for length in (3, 1, 5)]
    sequences[0][1, 2] = np.nan  # Missing cells.
    sequences[2][0, :] = np.nan
    times = [np.array([0.0, 1.5, 1.5]), np.array([7.25]),
             np.array([0.0, 0.1, 2.0, 30.0, 47.999])]
    return sequences, times


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_round_trip(tmp_path, split):
    sequences, times = _stays()
    paths = write_mimic_split(tmp_path / "new", split, sequences, labels=[1, 0, 1],
                              stay_ids=[300, 5, 2 ** 40], feature_names=["a", "b c", "d,e"],
                              times=times)
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"{split}_events.csv",
                                                   f"{split}_labels.csv"]
    data = load_mimic(tmp_path / "new", split)
    assert data["features"].dtype == np.float32 and data["features"].shape == (3, 5, 3)
    assert data["mask"].dtype == bool and data["mask"].shape == (3, 5)
    assert data["lengths"].dtype == np.int32
    assert data["labels"].dtype == np.int32 and data["stay_ids"].dtype == np.int64
    np.testing.assert_array_equal(data["lengths"], [3, 1, 5])
    np.testing.assert_array_equal(data["labels"], [1, 0, 1])
    np.testing.assert_array_equal(data["stay_ids"], [300, 5, 2 ** 40])
    assert data["feature_names"] == ["a", "b c", "d,e"]
    for i, (sequence, t) in enumerate(zip(sequences, times)):
        length = len(sequence)
        # float32 values survive the text round trip exactly; NaN -> 0.0.
        np.testing.assert_array_equal(data["features"][i, :length],
                                      np.nan_to_num(sequence, nan=0.0))
        np.testing.assert_array_equal(data["features"][i, length:], 0.0)
        np.testing.assert_array_equal(data["mask"][i], np.arange(5) < length)
        np.testing.assert_allclose(data["times"][i, :length], t, rtol=1e-7)
        np.testing.assert_array_equal(data["times"][i, length:], 0.0)


def test_defaults_and_hand_written_file(tmp_path):
    write_mimic_split(tmp_path, "train", [np.ones((2, 2)), np.zeros((1, 2))], labels=[0, 1])
    text = (tmp_path / "train_events.csv").read_text()
    assert text == ("stay_id,time,feature_0,feature_1\n0,0.0,1.0,1.0\n0,1.0,1.0,1.0\n"
                    "1,0.0,0.0,0.0\n")
    assert (tmp_path / "train_labels.csv").read_text() == LABELS_HEADER + "0,0\n1,1\n"

    # Interleaved stays, blank lines, spaces, exponents, empty cells, and a
    # labels order that differs from the events order.
    _write_text(tmp_path, "test",
                EVENTS_HEADER + "2, 0.5 ,1e2,\n1,0,-3.5,4\n\n2,3,,0.25\n1,2, 7 ,8\n",
                LABELS_HEADER + "1,1\n\n2,0\n")
    data = load_mimic(tmp_path, "test")
    np.testing.assert_array_equal(data["stay_ids"], [1, 2])
    np.testing.assert_array_equal(data["labels"], [1, 0])
    np.testing.assert_array_equal(data["lengths"], [2, 2])
    np.testing.assert_array_equal(data["features"],
                                  [[[-3.5, 4], [7, 8]], [[100, 0], [0, 0.25]]])
    np.testing.assert_array_equal(data["times"], [[0, 2], [0.5, 3]])
    assert data["feature_names"] == ["hr", "sbp"]


def test_max_length_keeps_last_steps(tmp_path):
    sequences, times = _stays()
    write_mimic_split(tmp_path, "train", sequences, [0, 1, 0], times=times)
    full = load_mimic(tmp_path, "train")
    data = load_mimic(tmp_path, "train", max_length=2)
    assert data["features"].shape == (3, 2, 3)
    np.testing.assert_array_equal(data["lengths"], [2, 1, 2])
    np.testing.assert_array_equal(data["mask"], [[True, True], [True, False], [True, True]])
    np.testing.assert_array_equal(data["features"][0], full["features"][0, 1:3])
    np.testing.assert_array_equal(data["features"][1, 0], full["features"][1, 0])
    np.testing.assert_array_equal(data["features"][1, 1], 0.0)
    np.testing.assert_array_equal(data["features"][2], full["features"][2, 3:5])
    np.testing.assert_array_equal(data["times"][2], np.float32([30.0, 47.999]))
    # A max_length above the longest stay pads every stay to max_length.
    long = load_mimic(tmp_path, "train", max_length=8)
    assert long["features"].shape == (3, 8, 3)
    np.testing.assert_array_equal(long["features"][:, :5], full["features"])
    np.testing.assert_array_equal(long["lengths"], [3, 1, 5])
    assert not long["mask"][:, 5:].any()


def test_empty_split(tmp_path):
    _write_text(tmp_path, "train", EVENTS_HEADER, LABELS_HEADER)
    data = load_mimic(tmp_path, "train")
    assert data["features"].shape == (0, 0, 2) and data["labels"].shape == (0,)


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def test_missing_directory_and_files(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match=r"nope.*train_events\.csv.*train_labels\.csv"
                       r".*format"):
        load_mimic(missing, "train")
    with pytest.raises(DataNotFoundError, match="No data_dir"):
        load_mimic(None, "train")
    (tmp_path / "validation_labels.csv").write_text(LABELS_HEADER)
    with pytest.raises(DataNotFoundError) as info:
        load_mimic(tmp_path, "validation")
    assert str(tmp_path / "validation_events.csv") in str(info.value)
    assert "format" in str(info.value) and isinstance(info.value, FileNotFoundError)
    (tmp_path / "validation_labels.csv").unlink()
    (tmp_path / "validation_events.csv").write_text(EVENTS_HEADER)
    with pytest.raises(DataNotFoundError, match="validation_labels.csv not found"):
        load_mimic(tmp_path, "validation")


@pytest.mark.parametrize("events,labels,pattern", [
    # Stay in events without a label.
    (EVENTS_HEADER + "1,0,1,2\n9,0,1,2\n", LABELS_HEADER + "1,0\n",
     r"train_events\.csv, line 3: stay_id 9 has no label"),
    # Label without events.
    (EVENTS_HEADER + "1,0,1,2\n", LABELS_HEADER + "1,0\n4,1\n",
     r"train_labels\.csv, line 3: stay_id 4 has no rows"),
    # Non-numeric feature cell.
    (EVENTS_HEADER + "1,0,1,2\n1,1,abc,2\n", LABELS_HEADER + "1,0\n",
     r"train_events\.csv, line 3, column 'hr': non-numeric value 'abc'"),
    # Non-finite cell.
    (EVENTS_HEADER + "1,0,1,nan\n", LABELS_HEADER + "1,0\n",
     r"train_events\.csv, line 2, column 'sbp': non-finite value 'nan'"),
    # Bad or empty time.
    (EVENTS_HEADER + "1,0,1,2\n1,x,1,2\n", LABELS_HEADER + "1,0\n",
     r"line 3, column 'time': non-numeric value 'x'"),
    (EVENTS_HEADER + "1,,1,2\n", LABELS_HEADER + "1,0\n", r"line 2, column 'time': empty"),
    # Non-integer stay ids.
    (EVENTS_HEADER + "1.5,0,1,2\n", LABELS_HEADER + "1,0\n",
     r"train_events\.csv, line 2, column 'stay_id': '1.5' is not an integer"),
    (EVENTS_HEADER + "1,0,1,2\n", LABELS_HEADER + "x,0\n",
     r"train_labels\.csv, line 2, column 'stay_id'"),
    # Labels not 0/1.
    (EVENTS_HEADER + "1,0,1,2\n", LABELS_HEADER + "1,2\n",
     r"train_labels\.csv, line 2: mortality must be 0 or 1; got '2'"),
    (EVENTS_HEADER + "1,0,1,2\n", LABELS_HEADER + "1,yes\n", r"mortality must be 0 or 1"),
    # Unsorted times (the second stay's rows are interleaved).
    (EVENTS_HEADER + "1,0,1,2\n2,5,1,2\n1,2,1,2\n2,4,1,2\n",
     LABELS_HEADER + "1,0\n2,1\n",
     (r"train_events\.csv, line 5: time 4\.0 of stay_id 2 is earlier than 5\.0 on line 3.*"
      r"sorted by time")),
    # Wrong number of fields.
    (EVENTS_HEADER + "1,0,1\n", LABELS_HEADER + "1,0\n",
     r"train_events\.csv, line 2: expected 4 fields.*got 3"),
    (EVENTS_HEADER + "1,0,1,2\n", LABELS_HEADER + "1,0,0\n",
     r"train_labels\.csv, line 2: expected 2 fields"),
    # Duplicate label.
    (EVENTS_HEADER + "1,0,1,2\n", LABELS_HEADER + "1,0\n1,1\n",
     r"train_labels\.csv, line 3: stay_id 1 already appears on line 2"),
    # Bad headers.
    ("stay_id,hr,sbp\n1,0,1\n", LABELS_HEADER + "1,0\n",
     r"train_events\.csv, line 1: header must be 'stay_id,time,<feature_1>"),
    ("stay_id,time\n1,0\n", LABELS_HEADER + "1,0\n", r"train_events\.csv, line 1: header"),
    ("stay_id,time,hr,hr\n1,0,1,2\n", LABELS_HEADER + "1,0\n",
     r"train_events\.csv, line 1: header"),
    (EVENTS_HEADER + "1,0,1,2\n", "stay_id,label\n1,0\n",
     r"train_labels\.csv, line 1: header must be 'stay_id,mortality'"),
    ("", LABELS_HEADER, r"train_events\.csv: the file is empty"),
])
def test_format_errors(tmp_path, events, labels, pattern):
    _write_text(tmp_path, "train", events, labels)
    with pytest.raises(ValueError, match=pattern):
        load_mimic(tmp_path, "train")


def test_large_file_error_reports_line(tmp_path):
    # The fast vectorised parse must still report the exact bad line.
    rows = [f"{i // 10},{i % 10},{i},0.5" for i in range(2000)]
    rows[1234] = "123,4,1,oops"
    labels = "".join(f"{i},{i % 2}\n" for i in range(200))
    _write_text(tmp_path, "train", EVENTS_HEADER + "\n".join(rows) + "\n",
                LABELS_HEADER + labels)
    with pytest.raises(ValueError, match=r"line 1236, column 'sbp': non-numeric value 'oops'"):
        load_mimic(tmp_path, "train")


def test_large_interleaved_file(tmp_path):
    # 200 stays of 10 steps, rows interleaved across stays: the grouping must
    # keep each stay's rows in file order.
    rows = [f"{i % 200},{i // 200},{i},{-i}" for i in range(2000)]
    labels = "".join(f"{i},{i % 2}\n" for i in reversed(range(200)))
    _write_text(tmp_path, "train", EVENTS_HEADER + "\n".join(rows) + "\n",
                LABELS_HEADER + labels)
    data = load_mimic(tmp_path, "train", max_length=7)
    stays = np.arange(200)[::-1]
    np.testing.assert_array_equal(data["stay_ids"], stays)
    np.testing.assert_array_equal(data["labels"], stays % 2)
    steps = np.arange(3, 10)  # The last 7 of 10 steps.
    expected = stays[:, None] + 200 * steps[None, :]
    np.testing.assert_array_equal(data["features"][..., 0], expected)
    np.testing.assert_array_equal(data["features"][..., 1], -expected)
    np.testing.assert_array_equal(data["times"], np.broadcast_to(steps, (200, 7)))
    assert data["mask"].all() and (data["lengths"] == 7).all()


@pytest.mark.parametrize("kwargs,pattern", [
    ({"split": "val"}, r"split must be one of \['train', 'validation', 'test'\]"),
    ({"max_length": 0}, "max_length must be None or a positive integer"),
    ({"max_length": 2.0}, "max_length must be None or a positive integer"),
    ({"max_length": True}, "max_length must be None or a positive integer"),
])
def test_bad_load_arguments(tmp_path, kwargs, pattern):
    write_mimic_split(tmp_path, "train", [np.ones((1, 1))], [0])
    with pytest.raises(ValueError, match=pattern):
        load_mimic(tmp_path, **{"split": "train", **kwargs})


@pytest.mark.parametrize("kwargs,pattern", [
    ({"sequences": []}, "at least one stay"),
    ({"sequences": [np.ones(3)]}, r"sequences\[0\] must have shape \(T_i, F\)"),
    ({"sequences": [np.ones((0, 2))]}, r"sequences\[0\] must have shape"),
    ({"sequences": [np.ones((2, 2)), np.ones((2, 3))]}, r"sequences\[1\] has 3 features"),
    ({"sequences": [np.full((1, 2), np.inf)]}, "infinite"),
    ({"labels": [0]}, "labels has 1 entries"),
    ({"labels": [0, 2]}, r"labels must be 0 or 1; got labels\[1\]=2"),
    ({"stay_ids": [3, 3]}, "stay_ids must be 2 distinct integers"),
    ({"feature_names": ["a"]}, "feature_names must be 2 distinct"),
    ({"feature_names": ["a", "time"]}, "feature_names must be 2 distinct"),
    ({"feature_names": ["a", "a"]}, "feature_names must be 2 distinct"),
    ({"times": [[1.0, 0.0], [0.0]]}, r"times\[0\] must hold 2 finite, non-decreasing"),
    ({"times": [[0.0, 1.0], [0.0, 1.0]]}, r"times\[1\] must hold 1 finite"),
    ({"split": "dev"}, "split must be one of"),
])
def test_bad_write_arguments(tmp_path, kwargs, pattern):
    arguments = {"split": "train", "sequences": [np.ones((2, 2)), np.ones((1, 2))],
                 "labels": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=pattern):
        write_mimic_split(tmp_path, **arguments)
    assert not (tmp_path / "train_events.csv").exists()
