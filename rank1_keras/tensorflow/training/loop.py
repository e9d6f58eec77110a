"""The training loop every binary shares: a custom `strategy.run` loop.

Why not `model.fit`: Keras 3's `fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585); this loop runs unchanged on one device, under
MirroredStrategy, MultiWorkerMirroredStrategy and TPUStrategy.

What it guarantees:
- The loss is the ensemble likelihood (`AverageNLL` or `MixtureNLL` over the
  K member rows of each example) summed over the global batch and divided by
  its size, plus the model's own losses (rank-1 KL x annealing weight, L2)
  divided by the number of replicas, so gradients summed across replicas
  equal a single device's gradient on the global batch.
- Exact resume: the data order and augmentation of epoch e depend only on
  (seed, e); a checkpoint after every epoch holds every model and optimizer
  variable (random-generator states included) and the KL weight is a
  function of the step. A run killed and restarted ends on the same weights
  as an uninterrupted one.
- A Keras progress bar and TensorBoard scalars (loss, KL term, accuracy,
  learning rate, KL weight) per epoch.
"""

import contextlib
import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from rank1_keras import validation
from rank1_keras.callbacks import KLAnnealing, rank1_layers
from rank1_keras.losses import AverageNLL, MixtureNLL
from rank1_keras.runs import checkpoint as checkpoints
from rank1_keras.runs.directory_lock import DirectoryLock
from rank1_keras.tensorflow.training.schedules import WarmupPiecewiseDecay

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How to train (the binaries' optimisation flags).

    Attributes:
        train_epochs: epochs to train.
        per_replica_batch_size: examples per replica per step, before tiling
            to the K members; the global batch is this times the replicas.
        base_learning_rate: peak learning rate for the *global* batch (the
            binaries scale the papers' rate per 128 examples).
        optimizer: "sgd" (Nesterov momentum, the papers') or "adam".
        momentum: SGD momentum.
        lr_warmup_epochs, lr_decay_epochs, lr_decay_ratio: `WarmupPiecewiseDecay`.
        kl_annealing_epochs: epochs over which the KL weight rises to 1.
        fast_weight_lr_multiplier: scales the gradients of the rank-1 /
            BatchEnsemble factors (their `fast_weight_variables`); 0.5 in
            uncertainty-baselines' BatchEnsemble. For SGD this scales their
            learning rate.
        seed: seeds the data order and augmentation (the caller seeds the
            initialisation with `keras.utils.set_random_seed`).
        steps_per_epoch: cap on the steps per epoch (None: all full batches).
        shuffle_buffer: examples in the shuffle buffer (None: the whole set).
        keep_checkpoints: newest checkpoints kept.
        verbose: 1 shows a progress bar, 2 one line per epoch, 0 nothing.
    """

    train_epochs: int = 250
    per_replica_batch_size: int = 64
    base_learning_rate: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    lr_warmup_epochs: float = 1.0
    lr_decay_epochs: tuple = (80.0, 160.0, 180.0)
    lr_decay_ratio: float = 0.2
    kl_annealing_epochs: float = 200.0
    fast_weight_lr_multiplier: float = 1.0
    seed: int = 0
    steps_per_epoch: int = None
    shuffle_buffer: int = None
    keep_checkpoints: int = 2
    verbose: int = 1

    def __post_init__(self):
        validation.check_positive_int(self.train_epochs, "train_epochs")
        validation.check_positive_int(self.per_replica_batch_size, "per_core_batch_size")
        validation.check_positive_finite(self.base_learning_rate, "base_learning_rate")
        validation.check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        validation.check_positive_finite(self.kl_annealing_epochs, "kl_annealing_epochs")
        validation.check_positive_finite(self.fast_weight_lr_multiplier, "fast_weight_lr_multiplier")
        if self.steps_per_epoch is not None:
            validation.check_positive_int(self.steps_per_epoch, "steps_per_epoch")


@dataclasses.dataclass
class TrainData:
    """A training set: unbatched `(features, label)` elements.

    Attributes:
        dataset: a `tf.data.Dataset` of single examples.
        num_examples: its size N.
        preprocess: optional `(features, label, seed, training) -> (features,
            label)` with `seed` an int64 [2] tensor for stateless random ops
            (augmentation that is the same when an epoch is replayed).
    """

    dataset: tf.data.Dataset
    num_examples: int
    preprocess: object = None


@dataclasses.dataclass
class TrainingRecord:
    """What `train` did: epochs run now, the epoch it resumed from, seconds, last epoch's logs."""

    epochs_run: int
    resumed_from_epoch: int
    train_seconds: float
    logs: dict


def epoch_dataset(data, epoch, global_batch_size, seed, training=True, shuffle_buffer=None):
    """Epoch `epoch`'s batches: a shuffle and augmentation fixed by (seed, epoch).

    tf.data combines the shuffle's seed with TensorFlow's global seed, which
    the binaries set from `--seed` (`keras.utils.set_random_seed`) before
    building anything, so a resumed run replays the same order.
    """
    dataset = data.dataset
    epoch_seed = int(seed) * 100_003 + int(epoch)
    if training:
        buffer = min(shuffle_buffer or data.num_examples, data.num_examples)
        dataset = dataset.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    if data.preprocess is not None:
        preprocess = data.preprocess

        def apply(index, example):
            features, label = example
            return preprocess(features, label, tf.stack([tf.constant(epoch_seed, tf.int64), index]), training)

        dataset = dataset.enumerate().map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(global_batch_size, drop_remainder=training)
    options = tf.data.Options()
    # In-memory sets cannot be sharded by file; DATA sharding keeps each
    # global batch the same set of examples as on one device.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _make_optimizer(settings, steps_per_epoch):
    schedule = WarmupPiecewiseDecay(
        settings.base_learning_rate,
        steps_per_epoch,
        warmup_epochs=settings.lr_warmup_epochs,
        decay_epochs=settings.lr_decay_epochs,
        decay_ratio=settings.lr_decay_ratio,
    )
    if settings.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    return keras.optimizers.SGD(schedule, momentum=settings.momentum, nesterov=True)


def member_stream_dataset(data, epoch, global_batch_size, seed, member_streams, shuffle_buffer=None):
    """Batches for members that each follow their own data order (Bella's plain ensemble).

    Element: features (G, M, ...) and labels (G, M), where column m comes from
    stream m, a full epoch shuffled with seed `seed + 1000 m` (as deep-ensemble
    members). A distribution strategy splits G; `_member_rows` turns each
    replica's part into M blocks in block order, for a model converted with
    `training_batch="split"` (member m trains on block m).
    """
    streams = [
        epoch_dataset(data, epoch, global_batch_size, seed + 1000 * member, True, shuffle_buffer)
        for member in range(member_streams)
    ]

    def stack(*batches):
        return tuple(tf.stack([batch[part] for batch in batches], axis=1) for part in (0, 1))

    return tf.data.Dataset.zip(tuple(streams)).map(stack)


def _member_rows(tensor):
    """(b, M, ...) -> (M*b, ...), member-major (block order)."""
    rank = tensor.shape.rank
    moved = tf.transpose(tensor, [1, 0, *range(2, rank)])
    return tf.reshape(moved, tf.concat([[-1], tf.shape(tensor)[2:]], axis=0))


# Settings that change neither the weights nor the results. `train_epochs` may
# grow between runs (nothing in the schedules depends on it: training longer
# continues the same run); it may not fall below a checkpoint's epoch.
_NOT_FINGERPRINTED = ("verbose", "keep_checkpoints", "train_epochs")
# The flag that sets a fingerprint entry, where the names differ.
_FLAG_NAMES = {
    "per_replica_batch_size": "per_core_batch_size",
    "global_batch": "per_core_batch_size x replicas",
    "base_learning_rate": "base_learning_rate (scaled to the global batch)",
}


def full_steps_per_epoch(num_examples, per_replica_batch_size, replicas=1):
    """Full global batches in `num_examples`; a ValueError naming the batch when there is none."""
    global_batch = per_replica_batch_size * replicas
    if num_examples // global_batch < 1:
        raise ValueError(
            f"per_core_batch_size={per_replica_batch_size} x {replicas} replicas = {global_batch} "
            f"exceeds the {num_examples} training examples; lower the batch size."
        )
    return num_examples // global_batch


def training_fingerprint(settings):
    """The `TrainingSettings` fields a resumed or rerun run must share (all but `_NOT_FINGERPRINTED`)."""
    return {key: value for key, value in dataclasses.asdict(settings).items() if key not in _NOT_FINGERPRINTED}


def _fingerprint(settings, members, likelihood, replicas, global_batch, member_streams=1, run_settings=None):
    """Everything an interrupted run and its resumption (or a rerun) must share.

    Every training setting (the learning rate and schedule, the KL annealing,
    the seed...), the batch layout, and `run_settings`: the caller's method,
    task and evaluation settings, which change the weights or the reported
    numbers. In JSON form, as the checkpoint stores it.
    """
    fingerprint = {
        "member_streams": member_streams,
        "members": members,
        "likelihood": likelihood,
        "global_batch": global_batch,
        "replicas": replicas,
        "training": training_fingerprint(settings),
        "run": run_settings or {},
    }
    return json.loads(json.dumps(fingerprint, default=str))


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def fingerprint_differences(saved, current, defaults=None, source="the checkpoint"):
    """'name: saved in <source>, current now' for each setting that differs ([] when none), one per flag.

    `defaults`: {flattened key: value} of settings a checkpoint may predate
    (a setting added to the library later): one recorded on one side only
    matches when the other side's value is its default.
    """
    saved, current = _flatten(saved or {}), _flatten(current)
    defaults = _flatten(json.loads(json.dumps(defaults or {}, default=str)))
    differences = {}
    for key in sorted(set(saved) | set(current)):
        before = saved.get(key, defaults.get(key, "not recorded"))
        after = current.get(key, defaults.get(key, "not recorded"))
        if before != after:
            leaf = key.rsplit(".", 1)[-1]
            name = _FLAG_NAMES.get(leaf, leaf)
            differences.setdefault(name, f"{name}: {before} in {source}, {after} now")
    return list(differences.values())


def train(
    model,
    data,
    settings,
    strategy=None,
    members=1,
    likelihood="average",
    checkpoint_dir=None,
    log_dir=None,
    chief=True,
    member_streams=1,
    gradient_transform=None,
    run_settings=None,
    run_setting_defaults=None,
):
    """Trains `model` (built under `strategy.scope()`) and checkpoints every epoch.

    Args:
        model: a Keras model; in training it returns K*B member rows
            (`members=K`) or B rows (`members=1`) of class probabilities.
        data: `TrainData`.
        settings: `TrainingSettings`.
        strategy: a `tf.distribute.Strategy` (None: the default strategy).
        members: member rows per example of the training output.
        likelihood: "average" or "mixture" NLL over the members.
        checkpoint_dir: where epoch checkpoints go; a run finding one there
            resumes from it (None: no checkpoints).
        log_dir: TensorBoard directory (None: no summaries).
        chief: whether this worker writes checkpoints and summaries.
        member_streams: M > 1 feeds M blocks per step, block m from member m's
            own data order (`member_stream_dataset`), to a model converted with
            `training_batch="split"` (`members` must then be 1).
        gradient_transform: optional `(variables, gradients) -> gradients`
            applied per replica before the optimizer (SVGD for Bella).
        run_settings: a JSON-able dict of the caller's other settings that
            change the weights or the reported numbers (method, task,
            evaluation); with the training settings it must match the
            checkpoint's for a run to resume (or a finished run to be rerun).
        run_setting_defaults: the same shape as `run_settings`, each
            setting's default: a checkpoint written before a setting existed
            resumes when the setting is at its default.

    Returns:
        A `TrainingRecord`.
    """
    validation.require_tensorflow("the training loop", "a tf.distribute strategy.run loop over tf.data")
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = settings.per_replica_batch_size * replicas
    full_steps = full_steps_per_epoch(data.num_examples, settings.per_replica_batch_size, replicas)
    steps = min(full_steps, settings.steps_per_epoch or full_steps)
    loss_object = (AverageNLL if likelihood == "average" else MixtureNLL)(members)
    annealing = KLAnnealing(settings.kl_annealing_epochs)
    kl_layers = [layer for layer in rank1_layers(model) if layer.kl_weight is not None]
    fast_weights = {id(v) for layer in rank1_layers(model) for v in layer.fast_weight_variables}
    gradient_scales = [
        settings.fast_weight_lr_multiplier if id(v) in fast_weights else 1.0 for v in model.trainable_variables
    ]

    with strategy.scope():
        optimizer = _make_optimizer(settings, steps)
        optimizer.build(model.trainable_variables)

    if member_streams > 1 and members != 1:
        raise ValueError(
            f"member_streams={member_streams} feeds each member its own examples; the model must return one row "
            f"per example (members=1, training_batch='split'), got members={members}."
        )
    # One writer per checkpoint directory: a second process (a second `train`
    # or binary on the same directory) is refused before anything is read.
    lock = DirectoryLock(checkpoint_dir, "training run", argument="checkpoint_dir") if (checkpoint_dir and chief) else None
    with lock or contextlib.nullcontext():
        fingerprint = _fingerprint(settings, members, likelihood, replicas, global_batch, member_streams, run_settings)
        start_epoch, elapsed = 0, 0.0
        if lock is not None:
            checkpoints.remove_interrupted_writes(checkpoint_dir)
        resume = checkpoints.find_resume_checkpoint(checkpoint_dir, set_aside_unreadable=chief) if checkpoint_dir else None
        if resume is not None:
            for note in resume.notes:
                print(f"warning: {note}", file=sys.stderr, flush=True)
        if resume is not None and resume.path:
            latest, header = resume.path, resume.header
            defaults = {"training": {field.name: field.default for field in dataclasses.fields(TrainingSettings)},
                        "run": run_setting_defaults or {}}
            differences = fingerprint_differences(header["metadata"].get("fingerprint"), fingerprint, defaults)
            if differences:
                raise checkpoints.CheckpointError(
                    f"checkpoint {latest} was trained with other settings: {'; '.join(differences)}. Rerun with the "
                    "checkpoint's values to resume it, or choose a fresh --output_dir."
                )
            if header["epoch"] > settings.train_epochs:
                raise checkpoints.CheckpointError(
                    f"checkpoint {latest} was trained for {header['epoch']} epochs; this run has "
                    f"train_epochs={settings.train_epochs}. Rerun with --train_epochs={header['epoch']} or more, or "
                    "choose a fresh --output_dir."
                )
            try:
                checkpoints.restore_checkpoint(latest, model, optimizer)
            except checkpoints.CheckpointError as error:
                raise checkpoints.CheckpointError(f"{error} Choose a fresh --output_dir for this model.") from error
            start_epoch, elapsed = header["epoch"], header["metadata"].get("train_seconds", 0.0)
            if settings.verbose:
                print(f"Resuming from {latest} (epoch {start_epoch} of {settings.train_epochs}).", flush=True)
        elif resume is not None and resume.skipped:
            print(
                f"warning: no checkpoint in {checkpoint_dir} reads back; training starts at epoch 1.",
                file=sys.stderr,
                flush=True,
            )

        @tf.function
        def train_step(features, labels):
            def replica_step(features, labels):
                if member_streams > 1:
                    features, labels = _member_rows(features), _member_rows(labels)
                with tf.GradientTape() as tape:
                    # float32 losses and metrics also under a mixed bfloat16 policy.
                    predictions = tf.cast(model(features, training=True), tf.float32)
                    per_position = loss_object.call(labels, predictions)  # (B,) or (B, d...) for dense outputs
                    per_example = tf.reduce_mean(per_position, axis=list(range(1, per_position.shape.rank)))
                    nll = tf.reduce_sum(per_example) / global_batch
                    extra = tf.add_n([tf.cast(loss, nll.dtype) for loss in model.losses]) if model.losses else tf.zeros((), nll.dtype)
                    loss = nll + extra / replicas
                gradients = tape.gradient(loss, model.trainable_variables)
                # Checked on the gradients, not only on the loss: a NaN inside the loss's
                # probability floor may come out finite or not depending on the CPU's min/max.
                gradients_finite = tf.reduce_all(
                    tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None] or [tf.constant(True)])
                )
                gradients = [g if scale == 1.0 else g * scale for g, scale in zip(gradients, gradient_scales)]
                if gradient_transform is not None:
                    gradients = gradient_transform(model.trainable_variables, gradients)
                optimizer.apply_gradients(zip(gradients, model.trainable_variables))
                batch = tf.shape(labels)[0]
                member_probabilities = tf.reshape(predictions, tf.concat([[-1, batch], tf.shape(predictions)[1:]], 0))
                predicted = tf.argmax(tf.reduce_mean(member_probabilities, axis=0), axis=-1, output_type=tf.int32)
                hits = tf.cast(tf.equal(predicted, tf.reshape(tf.cast(labels, tf.int32), tf.shape(predicted))), tf.float32)
                # Per example: the share of its positions right (1 or 0 for one label per example).
                correct = tf.reduce_sum(tf.reduce_mean(tf.reshape(hits, [batch, -1]), axis=1))
                # Accuracy per example row: with member streams a step has M rows per batch example.
                correct = correct / member_streams
                non_finite = 1.0 - tf.cast(gradients_finite, tf.float32)
                return nll, extra / replicas, correct, tf.cast(batch // member_streams, tf.float32), non_finite

            nll, extra, correct, replica_batch, non_finite = strategy.run(replica_step, args=(features, labels))
            total = [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in (nll, extra, correct)]
            # The mean per-replica batch: a check that the global batch is split.
            return total + [
                strategy.reduce(tf.distribute.ReduceOp.MEAN, replica_batch, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, non_finite, axis=None),  # replicas with NaN/inf gradients
            ]

        writer = tf.summary.create_file_writer(log_dir) if (log_dir and chief) else None
        logs = {}
        for epoch in range(start_epoch, settings.train_epochs):
            epoch_start = time.perf_counter()
            if member_streams > 1:
                dataset = member_stream_dataset(data, epoch, global_batch, settings.seed, member_streams, settings.shuffle_buffer)
            else:
                dataset = epoch_dataset(data, epoch, global_batch, settings.seed, True, settings.shuffle_buffer)
            dataset = dataset.take(steps)
            iterator = iter(strategy.experimental_distribute_dataset(dataset))
            progress = keras.utils.Progbar(steps, verbose=settings.verbose if chief else 0, unit_name="step")
            if settings.verbose and chief:
                print(f"Epoch {epoch + 1}/{settings.train_epochs}", flush=True)
            totals = np.zeros(3)
            for step in range(steps):
                kl_weight = annealing.weight_at(epoch, step, steps)
                for layer in kl_layers:
                    layer.kl_weight.assign(kl_weight)
                features, labels = next(iterator)
                nll, extra, correct, replica_batch, non_finite = (float(v) for v in train_step(features, labels))
                if not (np.isfinite(nll + extra) and non_finite == 0.0):
                    what = "the gradients became non-finite" if non_finite else f"the training loss became {nll + extra}"
                    if settings.verbose == 1 and chief:
                        print(flush=True)  # end the progress bar's line: the error gets a line of its own
                    raise FloatingPointError(
                        f"{what} at epoch {epoch + 1}, step {step + 1}; lower --base_learning_rate or check the "
                        "inputs for inf/NaN (no checkpoint of this epoch was written)."
                    )
                totals += (nll, extra, correct)
                progress.update(step + 1, [("nll", nll), ("kl_l2", extra), ("accuracy", correct / global_batch)])
            elapsed += time.perf_counter() - epoch_start
            logs = {
                "nll": totals[0] / steps,
                "regularization": totals[1] / steps,
                "accuracy": totals[2] / (steps * global_batch),
                "learning_rate": float(optimizer.learning_rate),
                "kl_weight": annealing.weight_at(epoch, steps - 1, steps),
                "train_seconds": elapsed,
                "replica_batch_size": int(replica_batch),
            }
            if writer is not None:
                with writer.as_default(step=epoch + 1):
                    for name, value in logs.items():
                        tf.summary.scalar(f"train/{name}", value)
                writer.flush()
            if checkpoint_dir and chief:
                checkpoints.save_checkpoint(
                    checkpoint_dir,
                    epoch + 1,
                    model,
                    optimizer,
                    metadata={"fingerprint": fingerprint, "train_seconds": elapsed, "logs": logs},
                    keep=settings.keep_checkpoints,
                )
        return TrainingRecord(
            epochs_run=settings.train_epochs - start_epoch,
            resumed_from_epoch=start_epoch,
            train_seconds=elapsed,
            logs=logs,
        )


def checkpoint_directory(output_dir, member=None):
    """`<output_dir>/checkpoints[/member_<k>]`."""
    path = os.path.join(output_dir, "checkpoints")
    return path if member is None else os.path.join(path, f"member_{member}")
