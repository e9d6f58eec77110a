"""TerminateOnNonFinite: stops fit at the first non-finite batch and restores the last finite state."""

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.callbacks import TerminateOnNonFinite
from tests.backend_utils import numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

BATCH = 30


def iris_like(n=300, seed=0):
    """Three Gaussian clusters in 4 dimensions, like iris; float32 inputs, int labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    x = centers[y] + 0.3 * rng.normal(size=(n, 4))
    return x.astype("float32"), y


def rank1_mlp(seed=0, steps_per_execution=1):
    """The user's model: a 4-16-3 softmax MLP converted to rank-1 (K=4), compiled with Adam."""
    keras.utils.set_random_seed(seed)
    mlp = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    )
    model = r1.convert(mlp, "rank1", ensemble_size=4, train_size=300)
    model.compile("adam", r1.AverageNLL(4), steps_per_execution=steps_per_execution)
    return model


def state(model):
    return [numpy(v) for v in model.variables + model.optimizer.variables]


def float_state(model):
    variables = model.variables + model.optimizer.variables
    return {v.path: numpy(v) for v in variables if keras.backend.is_float_dtype(v.dtype)}


def assert_all_finite(model):
    bad = [path for path, value in float_state(model).items() if not np.isfinite(value).all()]
    assert not bad, f"non-finite variables: {bad}"


def assert_same_state(model, twin):
    ours, theirs = state(model), state(twin)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad_value", [np.inf, np.nan], ids=["inf", "nan"])
def test_bad_input_stops_fit_and_restores_the_state_after_the_last_good_batch(bad_value):
    x, y = iris_like()
    x_bad = x.copy()
    x_bad[3 * BATCH + 7, 2] = bad_value  # in the 4th batch
    model = rank1_mlp()
    with pytest.raises(FloatingPointError) as error:
        model.fit(x_bad, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[r1.TerminateOnNonFinite()])
    message = str(error.value)
    assert "epoch 1, batch 4:" in message
    # Which check fires depends on the CPU: a fused matmul + bias + relu (TensorFlow's oneDNN
    # kernels, which the member chains' plain layers get) may turn a NaN into 0 in the forward
    # pass (a finite loss, NaN gradients), where an unfused relu passes it on (a NaN loss).
    assert "training loss became nan" in message or "a weight update became non-finite" in message
    assert "numpy.isfinite(x).all()" in message
    assert_all_finite(model)
    # Exactly the state after the first 3 batches: a twin trained on those alone.
    twin = rank1_mlp()
    twin.fit(x[: 3 * BATCH], y[: 3 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 3
    assert_same_state(model, twin)  # before predict, which advances the rank-1 seed states
    assert np.isfinite(model.predict(x, verbose=0)).all()
    # fit goes on once the data is fixed, from the restored state (on JAX the next fit's
    # jitted steps read the variables the callback assigned, not the trainer's last state).
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[r1.TerminateOnNonFinite()])
    assert int(model.optimizer.iterations) == 3 + 10
    assert_all_finite(model)
    twin.predict(x, verbose=0)
    twin.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert_same_state(model, twin)


def sqrt_abs_model():
    """Dense (no bias) -> sqrt(|t|) -> softmax: an all-zero input row gives t = 0 exactly, a
    finite loss (sqrt(0) = 0) and NaN gradients (d sqrt/dt = inf at 0, times 0)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, use_bias=False)(inputs)
    hidden = keras.layers.Lambda(lambda t: keras.ops.sqrt(keras.ops.abs(t)))(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


class Probe(keras.callbacks.Callback):
    """Placed before TerminateOnNonFinite: records the loss and weights it sees, before any restore."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        finite = all(np.isfinite(value).all() for value in float_state(self.model).values())
        self.seen.append((logs["loss"], finite))


def test_finite_loss_with_non_finite_gradient_stops_fit_and_restores():
    x, y = iris_like()
    x[BATCH + 4] = 0.0  # an all-zero row in the 2nd batch
    model = sqrt_abs_model()
    probe = Probe()
    with pytest.raises(FloatingPointError) as error:
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[probe, r1.TerminateOnNonFinite()])
    # The construction: batch 2 had a finite loss but left non-finite weights.
    assert len(probe.seen) == 2
    assert probe.seen[0][1] and np.isfinite(probe.seen[0][0])
    assert np.isfinite(probe.seen[1][0]) and not probe.seen[1][1]
    message = str(error.value)
    assert "epoch 1, batch 2:" in message
    assert "weight update became non-finite" in message and "non-finite gradients" in message
    assert "first non-finite variable:" in message
    assert_all_finite(model)
    assert int(model.optimizer.iterations) == 1


# Keras' PyTorch trainer refuses steps_per_execution > 1.
@pytest.mark.backends("tensorflow", "jax")
def test_steps_per_execution_names_the_batch_range():
    x, y = iris_like()
    x[3 * BATCH, 0] = np.inf  # 4th batch, inside the execution of batches 3-4
    model = rank1_mlp(steps_per_execution=2)
    with pytest.raises(FloatingPointError, match=r"epoch 1, batches 3-4: the training loss became nan"):
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[r1.TerminateOnNonFinite()])
    assert int(model.optimizer.iterations) == 2
    assert_all_finite(model)


def test_raise_error_false_stops_training_with_one_warning(capsys):
    x, y = iris_like()
    x[3 * BATCH + 1, 1] = np.inf
    model = rank1_mlp()
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[r1.TerminateOnNonFinite(raise_error=False)],
    )
    assert model.stop_training is True
    assert len(history.history["loss"]) == 1  # stopped in the first epoch
    assert int(model.optimizer.iterations) == 3
    assert_all_finite(model)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "epoch 1, batch 4:" in warnings[0]


def test_clean_data_changes_nothing(capsys):
    x, y = iris_like()
    model, twin = rank1_mlp(), rank1_mlp()
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[r1.TerminateOnNonFinite()]
    )
    twin.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and not model.stop_training
    assert_same_state(model, twin)
    assert "warning:" not in capsys.readouterr().err


def test_progress_bar_line_is_ended_before_the_error(capsys):
    x, y = iris_like()
    x[3 * BATCH, 0] = np.nan
    model = rank1_mlp()
    capsys.readouterr()
    with pytest.raises(FloatingPointError):
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=1, callbacks=[r1.TerminateOnNonFinite()])
    out = capsys.readouterr().out
    assert "1/10" in out  # Keras drew its progress bar (no newline of its own on a dynamic display)
    assert out.endswith("\n")


def test_non_finite_state_before_fit_is_reported():
    x, y = iris_like()
    model = rank1_mlp()
    kernel = model.trainable_variables[0]
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    with pytest.raises(FloatingPointError, match="fit stopped at its start: .* already held non-finite values"):
        model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[r1.TerminateOnNonFinite()])


def test_config_round_trip_and_exports():
    callback = TerminateOnNonFinite(raise_error=False)
    assert callback.get_config() == {"raise_error": False, "snapshot_every": 1}
    assert TerminateOnNonFinite.from_config(callback.get_config()).raise_error is False
    assert keras.saving.get_registered_name(TerminateOnNonFinite) == "rank1_keras>TerminateOnNonFinite"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert isinstance(restored, TerminateOnNonFinite) and restored.raise_error is False
    assert TerminateOnNonFinite().raise_error is True
    assert r1.TerminateOnNonFinite is r1.callbacks.TerminateOnNonFinite is TerminateOnNonFinite
    assert "TerminateOnNonFinite" in r1.__all__
    with pytest.raises(ValueError, match="raise_error"):
        TerminateOnNonFinite(raise_error="yes")
    with pytest.raises(ValueError, match="snapshot_every"):
        TerminateOnNonFinite(snapshot_every=0)


def test_sparser_copies_roll_back_to_the_last_one_kept():
    """snapshot_every=2 (cheaper for large models): bad data in batch 5 rolls back to the copy after batch 4."""
    x, y = iris_like()
    x_bad = x.copy()
    x_bad[4 * BATCH + 3, 0] = np.inf  # in the 5th batch; copies are kept after batches 2 and 4
    model = rank1_mlp()
    with pytest.raises(FloatingPointError, match="before that batch"):
        model.fit(x_bad, y, batch_size=BATCH, shuffle=False, verbose=0,
                  callbacks=[r1.TerminateOnNonFinite(snapshot_every=2)])
    x_bad = x.copy()
    x_bad[3 * BATCH + 3, 0] = np.inf  # in the 4th batch: back to the copy after batch 2
    model = rank1_mlp()
    with pytest.raises(FloatingPointError) as error:
        model.fit(x_bad, y, batch_size=BATCH, shuffle=False, verbose=0,
                  callbacks=[r1.TerminateOnNonFinite(snapshot_every=2)])
    assert "go back to their state after epoch 1, batch 2, the last copy kept (snapshot_every=2" in str(error.value)
    twin = rank1_mlp()
    twin.fit(x[: 2 * BATCH], y[: 2 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    assert_same_state(model, twin)
