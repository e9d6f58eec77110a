r"""Export a trained run as a SavedModel that answers with uncertainty.

    python -m baselines.export --checkpoint=runs/fmnist_rank1 --output_dir=exports/fmnist_rank1

`--checkpoint` is a training run's `--output_dir` (every member of a deep
ensemble is restored from its own latest checkpoint) or one `ckpt-*.npz` file
of a single-model run. The run's `run_settings.json` says how to rebuild the
model (data set, method, architecture) and how raw examples become its input,
so the data itself is not needed. The signature (`serving_default`) takes raw
examples (uint8 images, or float sequences with their lengths) and returns
probabilities, predicted_class, confidence, predictive_entropy,
mutual_information and member_probabilities; see `rank1_keras.tensorflow.export`.

Its probabilities are temperature-scaled by the temperature the run fitted on
its validation split (`results.json`'s `temperature`, the one behind the
evaluation's "(T)" columns), when the export is of the checkpoints that run
evaluated; otherwise (no validation split, a single checkpoint file, a run
trained on after its evaluation) they are unscaled and the export says why.
`--temperature` sets T by hand (1: unscaled). The export's marker file
records the temperature it applied and where it came from.

The export holds the run directory's lock while it reads the run
(`rank1_keras.runs.directory_lock`): an export of a run that is training,
or a training run started on a directory being exported, gets one error
naming the other process. The export is written into a hidden
`.rank1_keras-export-*` folder next to `--output_dir` and moved into place
only once complete; exports into one folder take turns (the second waits,
saying for whom), and each removes the hidden folders that killed exports
left there. Each export holds a marker file (`EXPORT_MARKER`) listing every
file it wrote; `--overwrite` replaces an existing `--output_dir` only when it
is such an earlier export and holds nothing else, never a training run, a
user's file or any other directory, and names what it found otherwise.
"""

import json
import os
import re
import shutil
import sys
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "A training run's output directory, or one ckpt-*.npz file of it.")
flags.DEFINE_string("output_dir", None, "The SavedModel directory to write.")
flags.DEFINE_integer("num_samples", None, "Passes averaged per member (default: the run's --num_eval_samples).")
flags.DEFINE_integer("seed", 0, "Every request starts the random streams from this seed (stochastic methods).")
flags.DEFINE_bool("raw_input", True, "Take raw examples (uint8 images, sequences + lengths); else model features.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir.")
flags.DEFINE_float(
    "temperature", None,
    "Temperature for the served probabilities (1: unscaled; default: the one the run fitted on its validation split).",
)
flags.mark_flags_as_required(["checkpoint", "output_dir"])

# Written into every export: what `--overwrite` may replace.
EXPORT_MARKER = "rank1_keras_export.json"
# Exports into one folder take turns on this lock file there.
EXPORT_LOCK = ".rank1_keras_export.lock"
# Where an export is written before it is moved into place; what a killed export leaves.
STAGING_PREFIX = ".rank1_keras-export-"
# Staging folders of exports written before STAGING_PREFIX (tempfile.mkdtemp's 8 characters).
_OLD_STAGING = re.compile(r"^\.export-[a-z0-9_]{8}$")
# A SavedModel's own entries: what an export whose marker predates its file list may hold.
_SAVED_MODEL_ENTRY = re.compile(r"^(saved_model\.pb|fingerprint\.pb|assets(/.*)?|variables|"
                                r"variables/variables\.(index|data-\d+-of-\d+))$")


def _run_directory(checkpoint):
    """(run directory, checkpoint file or None) for `--checkpoint`."""
    from rank1_keras.tensorflow.training.experiment import RUN_SETTINGS

    if os.path.isfile(checkpoint):
        directory = os.path.dirname(os.path.abspath(checkpoint))
        while directory != os.path.dirname(directory):
            if os.path.exists(os.path.join(directory, RUN_SETTINGS)):
                return directory, checkpoint
            directory = os.path.dirname(directory)
        raise ValueError(f"--checkpoint={checkpoint}: no {RUN_SETTINGS} in any directory above it.")
    if not os.path.exists(os.path.join(checkpoint, RUN_SETTINGS)):
        raise ValueError(
            f"--checkpoint={checkpoint} must be a training run's --output_dir (holding {RUN_SETTINGS}) "
            "or a ckpt-*.npz file of one."
        )
    return checkpoint, None


def read_lock(run_dir, argument="--checkpoint"):
    """The run directory's lock, as a reader takes it (a read-only copy of a run needs none)."""
    from rank1_keras.runs.directory_lock import DirectoryLock

    return DirectoryLock(run_dir, "export", argument=argument, create=False, read_only_ok=True)


def load_trained_models(checkpoint):
    """Rebuilds a run's models and restores their weights; returns (models, run settings).

    Holds the run directory's lock while it reads (a run in training is refused, naming it).
    """
    with read_lock(_run_directory(checkpoint)[0]):
        models, settings, _, _ = _restore_run(checkpoint)
    return models, settings


def _restore_run(checkpoint):
    """(models, run settings, the epoch of each model's restored checkpoint, the run directory)."""
    import keras

    from rank1_keras.methods.settings import MethodSettings, build_method_models
    from rank1_keras.runs.checkpoint import CheckpointError, find_resume_checkpoint, read_header, restore_model_weights
    from rank1_keras.tensorflow.training.experiment import RUN_SETTINGS
    from rank1_keras.tensorflow.training.loop import checkpoint_directory
    from rank1_keras.tensorflow.training.tasks import TaskOptions, plain_builder

    run_dir, checkpoint_file = _run_directory(checkpoint)
    with open(os.path.join(run_dir, RUN_SETTINGS), encoding="utf-8") as stream:
        settings = json.load(stream)
    task_options = TaskOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings["task"].items()})
    method = MethodSettings(**settings["method"])
    keras.utils.set_random_seed(settings["seed"])
    models = build_method_models(plain_builder(settings["model_spec"], task_options), method)
    if checkpoint_file and len(models) > 1:
        raise ValueError(
            f"--checkpoint={checkpoint} is one file, but the run is a deep ensemble of {len(models)} models: "
            f"pass the run directory {run_dir}."
        )
    epochs = []
    for index, model in enumerate(models):
        path, header = checkpoint_file, None
        if path is None:
            found = find_resume_checkpoint(checkpoint_directory(run_dir, index if len(models) > 1 else None))
            for note in found.notes:
                print(f"warning: {note}", file=sys.stderr, flush=True)
            path, header = found.path, found.header
        if path is None:
            raise CheckpointError(f"{run_dir} has no readable checkpoint for model {index}: was it trained?")
        try:
            restore_model_weights(path, model)
            header = header or read_header(path)
        except CheckpointError as error:
            raise CheckpointError(f"--checkpoint={checkpoint}: {error} It does not match {RUN_SETTINGS}.") from error
        epochs.append(header.get("epoch"))
    return models, settings, epochs, run_dir


def evaluated_temperature(run_dir, settings, epochs):
    """(T, where it came from): the run's validation-fitted temperature, or (1.0, why there is none).

    The temperature belongs to the weights the run evaluated, so it is taken
    only when every restored checkpoint is that run's last epoch and
    `results.json` was written for the settings the model was rebuilt from.
    """
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return 1.0, f"unscaled: {path} does not exist (the run has not finished its evaluation)"
    with open(path, encoding="utf-8") as stream:
        results = json.load(stream)
    if "temperature" not in results:
        reason = results.get("temperature_skipped", "the run held out no validation split (--validation_percent=0)")
        return 1.0, f"unscaled: the run fitted no temperature ({reason})"
    recorded = results.get("settings", {})
    if recorded.get("method") != settings["method"] or recorded.get("task") != settings["task"]:
        return 1.0, f"unscaled: {path} was written for other settings than {run_dir}'s run_settings.json"
    last_epoch = recorded.get("training", {}).get("train_epochs")
    if any(epoch != last_epoch for epoch in epochs):
        return 1.0, (
            f"unscaled: the temperature in {path} was fitted after epoch {last_epoch}, but the exported "
            f"checkpoints are of epochs {epochs} (pass the run directory, or --temperature)"
        )
    return float(results["temperature"]), f"fitted on the run's validation split ({path})"


def _entries(directory):
    """Relative paths of every folder and file under `directory`, sorted."""
    entries = []
    for root, folders, files in os.walk(directory):
        entries += [os.path.relpath(os.path.join(root, name), directory) for name in folders + files]
    return sorted(entries)


def check_replaceable(output_dir):
    """Refuses to replace `output_dir` unless it is an earlier export holding only what that export wrote.

    Raises a ValueError naming what else is there (a training run copied in, a
    user's file): `--overwrite` deletes only an export's own files.
    """
    marker_path = os.path.join(output_dir, EXPORT_MARKER)
    not_export = (f"--output_dir={output_dir} exists and is not an earlier export (it has no readable "
                  f"{EXPORT_MARKER}); --overwrite replaces only an export. Choose another --output_dir.")
    if not os.path.isdir(output_dir) or not os.path.isfile(marker_path):
        raise ValueError(not_export)
    try:
        with open(marker_path, encoding="utf-8") as stream:
            written = json.load(stream).get("files")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(not_export) from error
    if written is not None:
        foreign = [entry for entry in _entries(output_dir) if entry != EXPORT_MARKER and entry not in set(written)]
    else:  # a marker from before the file list: a SavedModel's own entries only
        foreign = [entry for entry in _entries(output_dir)
                   if entry != EXPORT_MARKER and not _SAVED_MODEL_ENTRY.match(entry)]
    # Name the outermost foreign entries (a copied run, not each of its files).
    outermost = [entry for entry in foreign if os.path.dirname(entry) not in foreign]
    if outermost:
        shown = ", ".join(os.path.join(output_dir, entry) for entry in outermost[:5])
        more = f" and {len(outermost) - 5} more" if len(outermost) > 5 else ""
        raise ValueError(
            f"--output_dir={output_dir} is an earlier export, but it also holds what no export wrote: {shown}{more}; "
            "--overwrite deletes only an export's own files. Move them out, or choose another --output_dir."
        )


def remove_staging_leftovers(parent):
    """Removes the staging folders killed exports left in `parent` (the caller holds its export lock)."""
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if (name.startswith(STAGING_PREFIX) or _OLD_STAGING.match(name)) and os.path.isdir(path) \
                and not os.path.islink(path):
            shutil.rmtree(path)
            print(f"warning: removed {path}, the leftover of an interrupted export", file=sys.stderr, flush=True)
            removed.append(path)
    return removed


def _check_output_dir(output_dir, overwrite):
    if os.path.lexists(output_dir) and not overwrite:
        raise ValueError(f"--output_dir={output_dir} exists; choose another or pass --overwrite.")
    if os.path.lexists(output_dir):
        check_replaceable(output_dir)


def export_run(checkpoint, output_dir, num_samples=None, seed=0, raw_input=True, overwrite=False, temperature=None):
    """Exports the run at `checkpoint` to `output_dir` (see the module docstring); returns the path.

    `temperature`: T for the served probabilities; None: the run's own (`evaluated_temperature`).
    """
    from rank1_keras import validation
    from rank1_keras.tensorflow.export import ServingInput, export_for_serving
    from rank1_keras.methods.settings import MethodSettings, inference_model
    from rank1_keras.runs.checkpoint import umask_mode
    from rank1_keras.runs.directory_lock import DirectoryLock

    _check_output_dir(output_dir, overwrite)  # early; checked again under the folder's lock
    if temperature is not None:
        temperature = validation.check_positive_finite(temperature, "temperature")
    run_dir = _run_directory(checkpoint)[0]
    with read_lock(run_dir):
        models, settings, epochs, run_dir = _restore_run(checkpoint)
        if temperature is None:
            temperature, source = evaluated_temperature(run_dir, settings, epochs)
            print(f"temperature {temperature:.4f}: {source}", file=sys.stderr, flush=True)
        else:
            source = "--temperature"
    if num_samples is None:
        num_samples = MethodSettings(**settings["method"]).eval_samples
    serving_input = ServingInput.from_config(settings["serving_input"]) if raw_input else None
    parent = os.path.dirname(os.path.abspath(output_dir))
    with DirectoryLock(parent, "export", argument="the folder of --output_dir", wait=True, name=EXPORT_LOCK):
        remove_staging_leftovers(parent)
        _check_output_dir(output_dir, overwrite)
        staging = tempfile.mkdtemp(dir=parent, prefix=STAGING_PREFIX)
        try:
            export_for_serving(
                inference_model(models), staging, num_samples=num_samples, seed=seed, serving_input=serving_input,
                temperature=temperature,
            )
            marker = {"checkpoint": os.path.abspath(checkpoint), "num_samples": num_samples, "seed": seed,
                      "temperature": temperature, "temperature_source": source, "files": _entries(staging)}
            with open(os.path.join(staging, EXPORT_MARKER), "w", encoding="utf-8") as stream:
                json.dump(marker, stream)
            os.chmod(staging, umask_mode(0o777))  # mkdtemp's 0700, as mkdir would have made it
            if os.path.lexists(output_dir):
                # Moved aside, then deleted once the new export is in place (a kill in between
                # leaves it as a staging folder, removed by the next export here).
                replaced = staging + "-replaced"
                os.rename(output_dir, replaced)
                os.rename(staging, output_dir)
                shutil.rmtree(replaced)
            else:
                os.rename(staging, output_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if os.path.lexists(staging + "-replaced") and not os.path.lexists(output_dir):
                os.rename(staging + "-replaced", output_dir)  # the earlier export stays as it was
            raise
    return output_dir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}; every setting is a --flag.")
    path = export_run(
        FLAGS.checkpoint, FLAGS.output_dir, FLAGS.num_samples, FLAGS.seed, FLAGS.raw_input, FLAGS.overwrite,
        FLAGS.temperature,
    )
    print(f"exported: {path}", flush=True)


if __name__ == "__main__":
    from baselines import common

    common.run(main)
