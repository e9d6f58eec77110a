"""A run directory holds one run: its lock, its identity (run_settings.json), and the export that reads it.

Each test does what a user did in the issue "nothing lost, part two" and checks
that the directory's files are byte-identical afterwards (or absent, for a
directory the refused run created).
"""

import json
import os
import shutil

import pytest

from rank1_keras.methods.settings import MethodSettings
from rank1_keras.runs.directory_lock import DirectoryInUseError
from rank1_keras.tensorflow.training.experiment import RunSettingsError, run_experiment
from rank1_keras.tensorflow.training.loop import TrainingSettings
from rank1_keras.tensorflow.training.tasks import TaskOptions
from tests.test_binaries import _snapshot
from tests.test_directory_lock import start_holder

OPTIONS = TaskOptions(ood=False, corruptions=(), test_examples=100)
TRAINING = TrainingSettings(train_epochs=1, steps_per_epoch=2, per_replica_batch_size=32, optimizer="adam",
                            base_learning_rate=1e-2, verbose=0)


def _run(output_dir, method="rank1", training=TRAINING, options=OPTIONS, **method_options):
    return run_experiment("digits", MethodSettings(method, ensemble_size=2, **method_options), training, options,
                          str(output_dir))


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A finished rank-1 run and a finished deep-ensemble run (checkpoints under member_<k>/)."""
    base = tmp_path_factory.mktemp("finished")
    _run(base / "rank1", "rank1")
    _run(base / "ensemble", "ensemble")
    return base


def _copy(finished_runs, name, tmp_path):
    target = tmp_path / name
    shutil.copytree(finished_runs / name, target)
    return target


@pytest.mark.parametrize("first, then", [("rank1", "ensemble"), ("ensemble", "rank1")])
def test_another_method_in_a_run_directory_is_refused_whatever_its_checkpoint_layout(
    finished_runs, tmp_path, first, then
):
    run = _copy(finished_runs, first, tmp_path)
    before = _snapshot(run)
    with pytest.raises(RunSettingsError) as error:
        _run(run, then)
    message = str(error.value)
    assert f"--output_dir={run} holds a run trained with other settings (run_settings.json)" in message
    assert f"method: {first} in the run, {then} now" in message and "fresh --output_dir" in message
    assert _snapshot(run) == before


def test_a_finished_run_without_checkpoints_is_never_retrained_over_its_results(finished_runs, tmp_path):
    run = _copy(finished_runs, "rank1", tmp_path)
    for name in os.listdir(run / "checkpoints"):
        if name.startswith("ckpt-"):
            os.remove(run / "checkpoints" / name)
    before = _snapshot(run)
    with pytest.raises(RunSettingsError, match="seed: 0 in the run, 1 now"):
        _run(run, training=TrainingSettings(**{**TRAINING.__dict__, "seed": 1}))
    with pytest.raises(RunSettingsError, match=r"holds a finished run \(.*results.json\) but no readable checkpoint"):
        _run(run)  # the same settings: its results would still be replaced by a new training's
    assert _snapshot(run) == before


def test_every_weight_or_result_changing_setting_is_named_with_both_values(finished_runs, tmp_path):
    run = _copy(finished_runs, "rank1", tmp_path)
    before = _snapshot(run)
    with pytest.raises(RunSettingsError) as error:
        _run(run, training=TrainingSettings(**{**TRAINING.__dict__, "base_learning_rate": 0.5,
                                               "per_replica_batch_size": 16}),
             options=TaskOptions(**{**OPTIONS.__dict__, "train_examples": 150}), prior_stddev=0.7)
    message = str(error.value)
    for expected in ("base_learning_rate (scaled to the global batch): 0.01 in the run, 0.5 now",
                     "per_core_batch_size: 32 in the run, 16 now", "prior_stddev: 0.1 in the run, 0.7 now",
                     "train_examples: 0 in the run, 150 now"):
        assert expected in message, message
    assert _snapshot(run) == before
    # Training longer continues the same run (train_epochs is not part of its identity).
    result = _run(run, training=TrainingSettings(**{**TRAINING.__dict__, "train_epochs": 2}))
    assert result["resumed_from_epoch"] == [1]


def test_a_run_directory_written_before_its_training_identity_still_resumes(finished_runs, tmp_path):
    run = _copy(finished_runs, "rank1", tmp_path)
    with open(run / "run_settings.json", encoding="utf-8") as stream:
        settings = json.load(stream)
    old = {key: value for key, value in settings.items() if key not in ("training", "replicas", "global_batch")}
    (run / "run_settings.json").write_text(json.dumps(old))
    assert _run(run)["resumed_from_epoch"] == [1]  # its checkpoint's fingerprint checks the training settings
    with open(run / "run_settings.json", encoding="utf-8") as stream:
        assert json.load(stream)["training"]["base_learning_rate"] == 0.01  # and the file gains them


@pytest.mark.parametrize("case", ["batch_larger_than_the_data", "bella_without_usable_weights"])
def test_a_refused_run_leaves_no_trace_in_a_fresh_output_directory(tmp_path, case):
    fresh = tmp_path / "fresh"
    if case == "batch_larger_than_the_data":
        with pytest.raises(ValueError, match="per_core_batch_size=4096"):
            _run(fresh, training=TrainingSettings(**{**TRAINING.__dict__, "per_replica_batch_size": 4096}))
    else:
        (tmp_path / "garbage.weights.h5").write_bytes(bytes(range(256)) * 4)
        with pytest.raises(Exception, match="could not be loaded"):
            _run(fresh, "bella", pretrained_checkpoint=str(tmp_path / "garbage.weights.h5"))
    assert not fresh.exists()


def test_a_run_on_a_directory_another_process_holds_is_refused_before_it_touches_anything(finished_runs, tmp_path):
    run = _copy(finished_runs, "rank1", tmp_path)
    (run / "checkpoints" / ".tmp-live.npz").write_bytes(b"the holder is writing this")
    holder = start_holder(run)
    try:
        before = _snapshot(run)
        with pytest.raises(DirectoryInUseError, match=f"--output_dir={run} is in use by a training run: pid {holder.pid}"):
            _run(run, training=TrainingSettings(**{**TRAINING.__dict__, "seed": 1}))
        assert _snapshot(run) == before  # its temporary file included
    finally:
        holder.kill()
        holder.wait()


# -- the export of a run ---------------------------------------------------------


def test_an_export_does_not_read_a_run_another_process_is_training(finished_runs, tmp_path):
    from baselines.export import export_run

    run = _copy(finished_runs, "rank1", tmp_path)
    holder = start_holder(run)
    try:
        with pytest.raises(DirectoryInUseError, match=f"--checkpoint={run} is in use by a training run: pid {holder.pid}"):
            export_run(str(run), str(tmp_path / "export"))
        assert not (tmp_path / "export").exists()
    finally:
        holder.kill()
        holder.wait()


def test_overwrite_replaces_only_what_an_export_wrote(finished_runs, tmp_path, capsys):
    from baselines.export import STAGING_PREFIX, export_run

    exports = tmp_path / "exports"
    export = exports / "rank1"
    export_run(str(finished_runs / "rank1"), str(export))
    # The case: a run copied into an earlier export, then exported over it.
    run = export / "myrun"
    shutil.copytree(finished_runs / "rank1", run)
    (export / "notes.txt").write_text("mine")
    before = _snapshot(export)
    with pytest.raises(ValueError) as error:
        export_run(str(run), str(export), overwrite=True)
    message = str(error.value)
    assert f"holds what no export wrote: {run}, {export / 'notes.txt'}" in message
    assert "deletes only an export's own files" in message
    assert _snapshot(export) == before
    # Killed exports' staging folders (today's name and the older mkdtemp one) go with the next export.
    (exports / f"{STAGING_PREFIX}killed").mkdir()
    (exports / f"{STAGING_PREFIX}killed" / "saved_model.pb").write_bytes(b"half")
    (exports / ".export-abcd1234").mkdir()
    shutil.rmtree(run)
    os.remove(export / "notes.txt")
    assert export_run(str(finished_runs / "rank1"), str(export), overwrite=True) == str(export)
    assert sorted(os.listdir(exports)) == ["rank1"]
    err = capsys.readouterr().err
    assert f"warning: removed {exports / (STAGING_PREFIX + 'killed')}, the leftover of an interrupted export" in err
    assert f"warning: removed {exports / '.export-abcd1234'}" in err
    with open(export / "rank1_keras_export.json", encoding="utf-8") as stream:
        files = json.load(stream)["files"]
    assert "saved_model.pb" in files and sorted(os.listdir(export)) == sorted(
        {entry.split("/")[0] for entry in files} | {"rank1_keras_export.json"})
