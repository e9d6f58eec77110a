"""Training callbacks for rank-1 models."""

import math
import sys

import keras
import numpy as np

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import Rank1Mixin
from rank1_keras.layers.walk import layers_of


def rank1_layers(model):
    """Every rank-1 / BatchEnsemble layer inside `model`, nested ones included."""
    return layers_of(model, Rank1Mixin, include_self=True)


@keras.saving.register_keras_serializable(package="rank1_keras")
class KLAnnealing(keras.callbacks.Callback):
    """Ramps the KL weight of every rank-1 layer linearly from 0 to 1.

    At step `b` of epoch `e` (both from 0) with `S` steps per epoch the weight
    is min(1, (e + (b + 1) / S) / annealing_epochs): it reaches 1 at the end of
    epoch `annealing_epochs - 1` and stays there. When the number of steps is
    unknown the weight moves once per epoch, to min(1, (e + 1) / annealing_epochs).
    The weight depends only on the position in training, so a run resumed
    with `initial_epoch` continues the same schedule. The current weight is
    logged as `kl_weight`.

    Args:
        annealing_epochs: epochs over which the weight rises (200 of 250 on
            CIFAR in the paper); positive.

    Example:

        model.fit(x, y, epochs=5, callbacks=[KLAnnealing(annealing_epochs=3)])
    """

    def __init__(self, annealing_epochs):
        super().__init__()
        self.annealing_epochs = validation.check_positive_finite(annealing_epochs, "annealing_epochs")
        self._epoch = 0
        self.weight = 0.0

    def weight_at(self, epoch, step=None, steps_per_epoch=None):
        progress = epoch + 1 if not steps_per_epoch else epoch + (step + 1) / steps_per_epoch
        return min(1.0, progress / self.annealing_epochs)

    def _set(self, weight):
        self.weight = weight
        for layer in rank1_layers(self.model):
            if layer.kl_weight is not None:
                layer.kl_weight.assign(weight)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if not self.params.get("steps"):
            self._set(self.weight_at(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps")
        if steps:
            self._set(self.weight_at(self._epoch, batch, steps))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["kl_weight"] = self.weight

    def get_config(self):
        return {"annealing_epochs": self.annealing_epochs}


@keras.saving.register_keras_serializable(package="rank1_keras")
class TerminateOnNonFinite(keras.callbacks.Callback):
    """Stops `fit` at the first non-finite batch and rolls back to the last finite state.

    Checks, after every training batch, the training loss (`logs["loss"]`,
    Keras' running mean: non-finite from the bad batch on) and every
    floating-point variable of the model (`model.variables`) and of its
    optimizer (Adam's moments): a non-finite gradient behind a finite loss
    shows up only there. Integer variables (seed states, the step counter)
    are not checked. The state before the first batch is checked too.

    Restores, at a bad batch, every model and optimizer variable (seed states,
    batch-norm statistics and step counter included) and the compiled
    metrics' running totals to their values after the last good batch, so
    `fit` can go on once the data is fixed; then raises `FloatingPointError`
    (or, with `raise_error=False`, stops training with one `warning:` line on
    stderr).

    Cost: one host (NumPy) copy of the model and optimizer variables per
    kept copy (every batch by default), and a finiteness scan of it; it grows
    with the number of variables more than with their size, and it turns off
    Keras' asynchronous callback dispatch. Measured on 2 CPU cores
    (TensorFlow, batch 32, Adam), rank-1 K=4: the 4-16-3 MLP (44 variables)
    takes 3-5 ms more per batch against a 2-3 ms step (fit about 3x slower);
    `small_cnn((28, 28, 1), 10)` (84 variables, 2.9 MB) takes 7-8 ms more
    against a 35-40 ms step (+15-25%). For large models, `snapshot_every=N`
    copies (and scans the weights) every N batches only: the loss is still
    checked at every batch, a non-finite gradient behind a finite loss is
    caught at the next kept copy or at the next batch's loss, whichever
    comes first, and the rollback goes back to the last kept copy.

    Args:
        raise_error: True (default) raises `FloatingPointError`; False stops
            training with a warning instead.
        snapshot_every: batches between kept copies (1: the state after the
            last good batch is restored exactly).

    Example:

        model.fit(x, y, callbacks=[r1.TerminateOnNonFinite()])
    """

    def __init__(self, raise_error=True, snapshot_every=1):
        super().__init__()
        if not isinstance(raise_error, (bool, np.bool_)):
            raise ValueError(f"raise_error must be True or False; got raise_error={raise_error!r}.")
        self.raise_error = bool(raise_error)
        self.snapshot_every = validation.check_positive_int(snapshot_every, "snapshot_every")
        self._clear()

    def _clear(self):
        self._variables = None  # model, optimizer, then metrics variables
        self._checked = None  # per variable: a float variable of the model or optimizer
        self._snapshot = None  # host copies after the last good batch
        self._spare = None  # buffers reused for the next copy
        self._epoch = 0
        self._first_step = None
        self._halted = False
        self._batches_seen = 0  # batch-end calls since fit started
        self._kept_at = "the start of fit"  # where the kept copy was taken

    def _collect(self, model):
        variables, checked, seen = [], [], set()
        optimizer = getattr(model, "optimizer", None)
        groups = [(model.variables, True), (optimizer.variables if optimizer is not None else [], True)]
        groups.append((getattr(model, "metrics_variables", []), False))
        for group, check in groups:
            for variable in group:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    variables.append(variable)
                    checked.append(check and keras.backend.is_float_dtype(variable.dtype))
        self._variables, self._checked = variables, checked

    def _copy(self):
        """Host copies of every variable (into the spare buffers); the first non-finite checked one, or None."""
        buffers = self._spare or [None] * len(self._variables)
        bad = None
        for i, variable in enumerate(self._variables):
            value = np.asarray(variable)  # may share memory with the variable: copy it
            if buffers[i] is None or buffers[i].shape != value.shape or buffers[i].dtype != value.dtype:
                buffers[i] = value.copy()
            else:
                np.copyto(buffers[i], value)
            if bad is None and self._checked[i] and not np.isfinite(buffers[i]).all():
                bad = variable
        self._spare = buffers
        return bad

    def _keep(self):
        self._snapshot, self._spare = self._spare, self._snapshot

    def on_train_begin(self, logs=None):
        self._clear()
        model = self.model
        if not model.built:
            return  # built inside the first train step: the first copy is taken after it
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # Keras (TensorFlow, no distribution strategy) builds it in the first train
            # step; build it now, as Keras' own `_symbolic_build` does, to copy its state.
            optimizer.build(model.trainable_variables)
        self._collect(model)
        bad = self._copy()
        if bad is not None:
            self._halted = True
            self._stop(
                f"fit stopped at its start: the model or its optimizer already held non-finite values (first: "
                f"{bad.path}). Rebuild or reload the model (a fit without TerminateOnNonFinite may have left it so)."
            )
            return
        self._keep()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._first_step = batch

    def on_train_batch_end(self, batch, logs=None):
        if self._halted:
            return
        model = self.model  # on JAX this syncs the trainer's state into the variables
        if self._variables is None:
            self._collect(model)
        loss = (logs or {}).get("loss")
        try:
            loss = float(loss)
        except (TypeError, ValueError):
            loss = None
        advice = "Check the inputs for inf/NaN (numpy.isfinite(x).all()) or lower the learning rate."
        self._batches_seen += 1
        if loss is not None and not math.isfinite(loss):
            problem = f"the training loss became {loss}"
        elif self._batches_seen % self.snapshot_every:
            return  # not a batch whose state is kept
        else:
            bad = self._copy()
            if bad is None:
                self._keep()
                self._kept_at = f"epoch {self._epoch + 1}, batch {batch + 1}"
                return
            loss_text = "" if loss is None else f"the loss, {loss:.6g}, was finite; "
            problem = (
                f"a weight update became non-finite (non-finite gradients; {loss_text}"
                f"first non-finite variable: {bad.path})"
            )
            advice = (
                "Check the inputs for inf/NaN (numpy.isfinite(x).all()) and the model for operations with an "
                "infinite derivative at the data (sqrt or log at 0), or lower the learning rate."
            )
        self._halted = True
        first = batch if self._first_step is None else min(self._first_step, batch)
        last = batch
        steps = self.params.get("steps") if self.params else None
        if steps:
            last = min(last, steps - 1)
        where = f"batch {last + 1}" if last <= first else f"batches {first + 1}-{last + 1}"
        that = "that batch" if last <= first else "those batches"
        if self._snapshot is not None:
            for variable, value in zip(self._variables, self._snapshot):
                variable.assign(value)
            if self._batches_seen - 1 == self._last_kept_batch():
                outcome = f"the model and its optimizer keep their state from before {that} (every weight finite)"
            else:
                outcome = (f"the model and its optimizer go back to their state after {self._kept_at}, the last "
                           f"copy kept (snapshot_every={self.snapshot_every}; every weight finite)")
        else:
            outcome = (
                f"the model could not be restored (it was built inside fit, so no copy of its state existed "
                f"before {that}; build it before fit to make it restorable)"
            )
        self._snapshot = self._spare = None
        self._stop(f"fit stopped at epoch {self._epoch + 1}, {where}: {problem}; {outcome}. {advice}")

    def _last_kept_batch(self):
        """How many batch ends had passed when the kept copy was taken."""
        return self._batches_seen - 1 - (self._batches_seen - 1) % self.snapshot_every

    def _stop(self, message):
        if self.params and self.params.get("verbose") in (1, "auto"):
            sys.stdout.write("\n")  # end Keras' progress-bar line first
            sys.stdout.flush()
        if self.raise_error:
            raise FloatingPointError(message)
        self.model.stop_training = True
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def on_train_end(self, logs=None):
        self._snapshot = self._spare = None

    def get_config(self):
        return {"raise_error": self.raise_error, "snapshot_every": self.snapshot_every}

    @classmethod
    def from_config(cls, config):
        return cls(**config)  # keras.callbacks.Callback has no from_config of its own
