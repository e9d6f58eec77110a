"""One run: a task, a method, training under a strategy, evaluation, results.

`run_experiment` is what every binary calls. Output directory layout:

    <output_dir>/checkpoints/[member_<k>/]ckpt-<epoch>.npz   every epoch, resumable
    <output_dir>/tensorboard/[member_<k>/]                   TensorBoard scalars
    <output_dir>/run_settings.json                           what rebuilds the model (baselines/export.py)
    <output_dir>/results.json, results.md                    written once, at the end, atomically
    <output_dir>/reliability.png                             reliability diagram (matplotlib)

One run per output directory: `run_experiment` holds the directory's lock
(`directory_lock.DirectoryLock`) from before it reads anything there until it
returns; a second run on it is refused naming the holder. The directory's
identity is its `run_settings.json`: a rerun with another method, seed, data
subset or any other setting that changes the weights or the results is
refused naming each setting, whatever checkpoints exist, and a finished run
whose checkpoints are gone is not trained again over its results.

A failed run (bad flags, missing data, a corrupt or foreign checkpoint, a
diverged loss) raises before writing results and never replaces a file;
refusals (other settings, a batch larger than the data, Bella's pretrained
weights) come before any file is written.
"""

import contextlib
import dataclasses
import json
import os
import time

import keras

from rank1_keras import validation
from rank1_keras.methods.converter import _trainable_count
from rank1_keras.methods.settings import MethodSettings, build_method_models, inference_model, training_options
from rank1_keras.runs.checkpoint import find_resume_checkpoint, remove_interrupted_writes, write_atomically
from rank1_keras.runs.directory_lock import DirectoryLock
from rank1_keras.tensorflow.training import evaluation
from rank1_keras.tensorflow.training.loop import (
    TrainingSettings,
    checkpoint_directory,
    fingerprint_differences,
    full_steps_per_epoch,
    train,
    training_fingerprint,
)
from rank1_keras.tensorflow.training.strategy import is_chief, make_strategy
from rank1_keras.tensorflow.training.tasks import TaskOptions, load_task


def run_experiment(
    dataset,
    method_settings,
    training_settings,
    task_options,
    output_dir,
    strategy=None,
    evaluation_batch_size=256,
    write_files=True,
    task=None,
):
    """Trains and evaluates one method on one task; returns the result dict.

    Args:
        dataset: a task name (`rank1_keras.tensorflow.training.tasks.TASKS`).
        method_settings: `MethodSettings` (its `train_size` is replaced by the
            task's training-set size, times its labelled positions per example
            for segmentation, whose losses average over pixels).
        training_settings: `TrainingSettings`.
        task_options: `TaskOptions`.
        output_dir: where checkpoints, summaries and results go.
        strategy: a `tf.distribute.Strategy` (None: the default one).
        evaluation_batch_size: examples per evaluation batch.
        write_files: write results.json / results.md (the chief only).
        task: the already loaded `load_task(dataset, task_options)`, to share
            one load between runs (None: load it here).
    """
    validation.require_tensorflow("run_experiment", "tf.distribute training, tf.data pipelines")
    strategy = strategy or make_strategy("default")
    chief = is_chief(strategy)
    writes = write_files and chief
    # One run per output directory, taken before anything in it is read or written.
    lock = DirectoryLock(output_dir, "training run") if writes else None
    with lock or contextlib.nullcontext():
        return _run_experiment(dataset, method_settings, training_settings, task_options, output_dir, strategy,
                               evaluation_batch_size, writes, task)


def _run_experiment(dataset, method_settings, training_settings, task_options, output_dir, strategy,
                    evaluation_batch_size, writes, task):
    chief = is_chief(strategy)
    check_output_dir(output_dir, writes)
    if writes:
        remove_interrupted_writes(output_dir)
    task = task or load_task(dataset, task_options)
    # Resolved: the run records (and resumes by) the training batch the method uses, not "its default".
    method_settings = dataclasses.replace(
        method_settings.resolved(), train_size=task.train.num_examples * task.positions_per_example
    )
    seed = training_settings.seed
    replicas = strategy.num_replicas_in_sync
    run_settings = {
        "dataset": task.name,
        "method": dataclasses.asdict(method_settings),
        "task": dataclasses.asdict(task_options),
        "model_spec": task.model_spec,
        "serving_input": task.serving_input.get_config(),
        "seed": seed,
        **training_identity(training_settings, replicas),
    }
    settings_path = os.path.join(output_dir, RUN_SETTINGS)
    if writes:
        check_run_identity(output_dir, run_settings)
    # Refusals that need no model come before the build, and every refusal before a file is written.
    full_steps_per_epoch(task.train.num_examples, training_settings.per_replica_batch_size, replicas)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        models = build_method_models(task.build_plain, method_settings)
    if writes:
        check_results_have_checkpoints(output_dir, len(models))
        # Written before training, so an interrupted run can be exported (and is recognised on a rerun).
        write_json(settings_path, run_settings)

    train_seconds, records = 0.0, []
    for index, model in enumerate(models):
        member = index if len(models) > 1 else None
        # Deep-ensemble members each see their own data order.
        settings = dataclasses.replace(training_settings, seed=seed + 1000 * index)
        if member is not None and training_settings.verbose:
            print(f"-- ensemble member {index + 1} of {len(models)} --", flush=True)
        record = train(
            model,
            task.train,
            settings,
            strategy,
            members=method_settings.members,
            likelihood=method_settings.training_likelihood,
            checkpoint_dir=checkpoint_directory(output_dir, member),
            log_dir=os.path.join(output_dir, "tensorboard", f"member_{index}" if member is not None else ""),
            chief=chief,
            # A resume or rerun must match these too: they change the weights or the results.
            run_settings={key: run_settings[key] for key in ("dataset", "method", "task", "model_spec")},
            run_setting_defaults=_SETTING_DEFAULTS,
            **training_options(model, method_settings),
        )
        train_seconds += record.train_seconds
        records.append(record)

    predictor = inference_model(models)
    start = time.perf_counter()
    result = evaluation.evaluate(
        predictor,
        task.evaluation,
        num_samples=method_settings.eval_samples,
        batch_size=evaluation_batch_size,
        reliability_path=os.path.join(output_dir, "reliability.png") if writes else None,
    )
    result.update(
        dataset=task.name,
        architecture=task.architecture,
        method=method_settings.method,
        ensemble_size=method_settings.ensemble_members,
        eval_samples=method_settings.eval_samples,
        parameters=sum(_trainable_count(model) for model in models),
        train_seconds=train_seconds,
        eval_seconds=time.perf_counter() - start,
        train_examples=task.train.num_examples,
        replicas=strategy.num_replicas_in_sync,
        global_batch_size=training_settings.per_replica_batch_size * strategy.num_replicas_in_sync,
        final_train_logs=[record.logs for record in records],
        resumed_from_epoch=[record.resumed_from_epoch for record in records],
        settings={
            "method": dataclasses.asdict(method_settings),
            "training": dataclasses.asdict(training_settings),
            "task": dataclasses.asdict(task_options),
        },
        notes=task.notes,
    )
    if method_settings.method == "bella":
        from rank1_keras.bella import trainable_fraction

        with strategy.scope():
            base = task.build_plain()
        fraction = trainable_fraction(models[0], base)
        result.update(trainable_fraction=fraction.total, trainable_fraction_per_particle=fraction.per_particle)
    if writes:
        write_json(settings_path, run_settings)
        write_results(result, output_dir)
    return result


RUN_SETTINGS = "run_settings.json"
# Each method and task setting's default, for checkpoints written before the setting existed.
_SETTING_DEFAULTS = {
    part: {field.name: field.default for field in dataclasses.fields(settings_class)
           if field.default is not dataclasses.MISSING}
    for part, settings_class in (("method", MethodSettings), ("task", TaskOptions))
}


def check_output_dir(output_dir, writes):
    """Fails early, with the path, when `output_dir` cannot hold a run.

    A regular file in its place, a read-only or full file system, or a
    read-only folder inside it (checkpoints/, tensorboard/...) are found
    before training starts, not after hours of it.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir} is a file, not a directory; choose a directory.")
    if not writes:
        return
    os.makedirs(output_dir, exist_ok=True)
    for directory, _, _ in os.walk(output_dir):
        # Raises OSError (read-only file system, no space, permissions) naming the directory.
        probe = os.path.join(directory, ".write-check")
        write_atomically(probe, lambda stream: stream.write(b"ok\n" * 1024))
        os.remove(probe)


# run_settings.json entries that say which run a directory holds (serving_input is derived from the task).
_IDENTITY_KEYS = ("dataset", "method", "task", "model_spec", "seed", "training", "replicas", "global_batch")


def training_identity(training_settings, replicas):
    """The training settings a run directory is identified by (those that change the weights)."""
    return {"training": training_fingerprint(training_settings), "replicas": replicas,
            "global_batch": training_settings.per_replica_batch_size * replicas}


class RunSettingsError(ValueError):
    """`output_dir` holds another run (other settings), or a finished run that lost its checkpoints."""


def read_run_settings(output_dir):
    """The `run_settings.json` of `output_dir` (None when there is none)."""
    path = os.path.join(output_dir, RUN_SETTINGS)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            settings = json.load(stream)
    except (UnicodeDecodeError, ValueError) as error:
        raise RunSettingsError(
            f"{path} is not readable JSON ({type(error).__name__}); it says which run --output_dir={output_dir} "
            "holds: restore it, or choose a fresh --output_dir."
        ) from error
    if not isinstance(settings, dict):
        raise RunSettingsError(f"{path} holds no run settings; restore it, or choose a fresh --output_dir.")
    return settings


def check_run_identity(output_dir, run_settings):
    """Refuses a run whose settings differ from those of the run `output_dir` already holds.

    The directory's `run_settings.json` is its identity, compared whatever
    checkpoints exist: another method, seed, data subset or any other setting
    that changes the weights or the results is a `RunSettingsError` naming
    each flag with both values. Files written before an entry existed are
    compared on the entries they have (their checkpoints check the rest).
    """
    saved = read_run_settings(output_dir)
    if saved is None:
        return
    keys = [key for key in _IDENTITY_KEYS if key in saved]
    defaults = {**_SETTING_DEFAULTS, "training": {field.name: field.default
                                                   for field in dataclasses.fields(TrainingSettings)}}
    differences = fingerprint_differences(
        {key: saved[key] for key in keys},
        json.loads(json.dumps({key: run_settings[key] for key in keys}, default=str)),
        {key: value for key, value in defaults.items() if key in keys},
        source="the run",
    )
    if differences:
        raise RunSettingsError(
            f"--output_dir={output_dir} holds a run trained with other settings ({RUN_SETTINGS}): "
            f"{'; '.join(differences)}. Rerun with the run's values to resume or rerun it, or choose a fresh "
            "--output_dir."
        )


def check_results_have_checkpoints(output_dir, num_models):
    """Refuses to train again a finished run (results.json) none of whose checkpoints is left for a model.

    Its results would be replaced by those of a new training, silently.
    """
    results = os.path.join(output_dir, "results.json")
    if not os.path.exists(results):
        return
    for index in range(num_models):
        directory = checkpoint_directory(output_dir, index if num_models > 1 else None)
        if find_resume_checkpoint(directory).path is None:
            raise RunSettingsError(
                f"--output_dir={output_dir} holds a finished run ({results}) but no readable checkpoint in "
                f"{directory}: training again would replace its results. Move results.json away to train again, "
                "or choose a fresh --output_dir."
            )


def write_json(path, value):
    write_atomically(path, lambda stream: stream.write(json.dumps(value, indent=2, default=float).encode("utf-8")))


def write_results(result, output_dir):
    """results.json and a one-row results.md, each replaced atomically."""
    write_json(os.path.join(output_dir, "results.json"), result)
    table = evaluation.markdown_table([result]) + "\n"
    write_atomically(os.path.join(output_dir, "results.md"), lambda stream: stream.write(table.encode("utf-8")))


__all__ = ["MethodSettings", "TaskOptions", "TrainingSettings", "run_experiment", "write_results"]
