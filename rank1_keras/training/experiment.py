"""One run: a task, a method, training under a strategy, evaluation, results.

`run_experiment` is what every binary calls. Output directory layout:

    <output_dir>/checkpoints/[member_<k>/]ckpt-<epoch>.npz   every epoch, resumable
    <output_dir>/tensorboard/[member_<k>/]                   TensorBoard scalars
    <output_dir>/run_settings.json                           what rebuilds the model (baselines/export.py)
    <output_dir>/results.json, results.md                    written once, at the end, atomically
    <output_dir>/reliability.png                             reliability diagram (matplotlib)

A failed run (bad flags, missing data, a corrupt or foreign checkpoint, a
diverged loss) raises before writing results and never replaces a file.
"""

import dataclasses
import json
import os
import time

import keras

from rank1_keras.methods.converter import _trainable_count
from rank1_keras.methods.settings import MethodSettings, build_method_models, inference_model, training_options
from rank1_keras.training import evaluation
from rank1_keras.training.checkpoint import write_atomically
from rank1_keras.training.loop import TrainingSettings, checkpoint_directory, train
from rank1_keras.training.strategy import is_chief, make_strategy
from rank1_keras.training.tasks import TaskOptions, load_task


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
        dataset: a task name (`rank1_keras.training.tasks.TASKS`).
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
    strategy = strategy or make_strategy("default")
    chief = is_chief(strategy)
    task = task or load_task(dataset, task_options)
    # Resolved: the run records (and resumes by) the training batch the method uses, not "its default".
    method_settings = dataclasses.replace(
        method_settings.resolved(), train_size=task.train.num_examples * task.positions_per_example
    )
    seed = training_settings.seed
    run_settings = {
        "dataset": task.name,
        "method": dataclasses.asdict(method_settings),
        "task": dataclasses.asdict(task_options),
        "model_spec": task.model_spec,
        "serving_input": task.serving_input.get_config(),
        "seed": seed,
    }
    check_output_dir(output_dir, write_files and chief)
    settings_path = os.path.join(output_dir, RUN_SETTINGS)
    if write_files and chief and not os.path.exists(settings_path):
        # Written first, so an interrupted run can be exported too; a run with
        # other settings in the same directory rewrites it only once it succeeds.
        write_json(settings_path, run_settings)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        models = build_method_models(task.build_plain, method_settings)

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
        reliability_path=os.path.join(output_dir, "reliability.png") if (write_files and chief) else None,
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
    if write_files and chief:
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

    A regular file in its place, a read-only or full file system are found
    before training starts, not after hours of it.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir} is a file, not a directory; choose a directory.")
    if not writes:
        return
    os.makedirs(output_dir, exist_ok=True)
    # Raises OSError (read-only file system, no space, permissions) naming the directory.
    write_atomically(os.path.join(output_dir, ".write-check"), lambda stream: stream.write(b"ok\n" * 1024))
    os.remove(os.path.join(output_dir, ".write-check"))


def write_json(path, value):
    write_atomically(path, lambda stream: stream.write(json.dumps(value, indent=2, default=float).encode("utf-8")))


def write_results(result, output_dir):
    """results.json and a one-row results.md, each replaced atomically."""
    write_json(os.path.join(output_dir, "results.json"), result)
    table = evaluation.markdown_table([result]) + "\n"
    write_atomically(os.path.join(output_dir, "results.md"), lambda stream: stream.write(table.encode("utf-8")))


__all__ = ["MethodSettings", "TaskOptions", "TrainingSettings", "run_experiment", "write_results"]
