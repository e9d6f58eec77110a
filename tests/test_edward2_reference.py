"""Numerical agreement of the rank-1 / BatchEnsemble layers with Edward2 0.0.2.

Each case builds one of our layers with every weight randomised (kernels,
point factors or posterior means far from one, non-zero per-member biases),
runs it, and sends the input and the weights (by role) to
`tests/edward2_reference.py`, which builds the matching Edward2 layer, assigns
the same weights and runs it. Edward2 needs Keras 2 (`TF_USE_LEGACY_KERAS=1`),
so it runs in ONE subprocess for all cases; it is never imported here.

Rank-1 layers are compared with `inference="mean"` and `training=False`
(factors = posterior means) against Edward2's rank-1 layers with point
factors holding those means. Only the multiplicative variant is compared:
Edward2's `use_additive_perturbation` is a different formula
((x + r) W + s) from ours (W_k = W + r s^T, the paper's).

Everything runs in float32 on the CPU (no TF32 on a GPU); the tolerance is
an absolute 1e-5. Run with `-s` to see the table of maximum errors.
"""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from rank1_keras import layers

REFERENCE_SCRIPT = Path(__file__).with_name("edward2_reference.py")
TOLERANCE = 1e-5
SUBPROCESS_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("edward2") is None or importlib.util.find_spec("tf_keras") is None,
    reason="edward2 and tf_keras (the reference implementation) are not installed",
)

# Max abs error per case, filled by the comparisons, printed at the end.
MAX_ERRORS = {}


@dataclasses.dataclass
class Case:
    name: str
    make_layer: object  # () -> our layer (a cell for rnn cases)
    ed_layer: str  # class name in ed.layers
    ed_kwargs: dict
    input_shape: tuple  # (K*B, ...)
    rnn: bool = False
    masked: bool = False


# Point factors in Edward2's rank-1 layers: ones, no KL.
_ED_POINT = {"alpha_initializer": "ones", "gamma_initializer": "ones", "alpha_regularizer": None, "gamma_regularizer": None}
_ED_LSTM_POINT = dict(
    _ED_POINT,
    recurrent_alpha_initializer="ones",
    recurrent_gamma_initializer="ones",
    recurrent_alpha_regularizer=None,
    recurrent_gamma_regularizer=None,
)

CASES = [
    # -- BatchEnsemble (point factors) ------------------------------------
    Case(
        "dense_batch_ensemble_tanh",
        lambda: layers.DenseBatchEnsemble(7, ensemble_size=3, activation="tanh", dtype="float32"),
        "DenseBatchEnsemble",
        {"units": 7, "ensemble_size": 3, "activation": "tanh"},
        (3 * 4, 5),
    ),
    Case(
        "conv2d_batch_ensemble_same",
        lambda: layers.Conv2DBatchEnsemble(6, 3, ensemble_size=4, padding="same", activation="relu", dtype="float32"),
        "Conv2DBatchEnsemble",
        {"filters": 6, "kernel_size": 3, "ensemble_size": 4, "padding": "same", "activation": "relu", "data_format": "channels_last"},
        (4 * 2, 7, 7, 3),
    ),
    Case(
        "conv2d_batch_ensemble_valid_stride2",
        lambda: layers.Conv2DBatchEnsemble(5, (3, 2), ensemble_size=3, strides=2, padding="valid", dtype="float32"),
        "Conv2DBatchEnsemble",
        {"filters": 5, "kernel_size": (3, 2), "ensemble_size": 3, "strides": 2, "padding": "valid", "data_format": "channels_last"},
        (3 * 2, 9, 8, 4),
    ),
    Case(
        "conv1d_batch_ensemble_same",
        lambda: layers.Conv1DBatchEnsemble(6, 3, ensemble_size=3, padding="same", activation="tanh", dtype="float32"),
        "Conv1DBatchEnsemble",
        {"filters": 6, "kernel_size": 3, "ensemble_size": 3, "padding": "same", "activation": "tanh"},
        (3 * 3, 10, 4),
    ),
    Case(
        "conv1d_batch_ensemble_valid_stride2",
        lambda: layers.Conv1DBatchEnsemble(5, 4, ensemble_size=4, strides=2, padding="valid", dtype="float32"),
        "Conv1DBatchEnsemble",
        {"filters": 5, "kernel_size": 4, "ensemble_size": 4, "strides": 2, "padding": "valid"},
        (4 * 2, 11, 3),
    ),
    Case(
        "lstm_batch_ensemble",
        lambda: layers.LSTMCellBatchEnsemble(5, ensemble_size=3, dtype="float32"),
        "LSTMCellRank1",
        dict(_ED_LSTM_POINT, units=5, ensemble_size=3),
        (3 * 2, 6, 4),
        rnn=True,
    ),
    Case(
        "lstm_batch_ensemble_masked",
        lambda: layers.LSTMCellBatchEnsemble(5, ensemble_size=3, dtype="float32"),
        "LSTMCellRank1",
        dict(_ED_LSTM_POINT, units=5, ensemble_size=3),
        (3 * 2, 7, 4),
        rnn=True,
        masked=True,
    ),
    # -- rank-1 BNN, posterior means (inference="mean", training=False) ----
    Case(
        "dense_rank1_mean",
        lambda: layers.DenseRank1(7, ensemble_size=4, activation="tanh", inference="mean", seed=1, dtype="float32"),
        "DenseRank1",
        dict(_ED_POINT, units=7, ensemble_size=4, activation="tanh"),
        (4 * 3, 6),
    ),
    Case(
        "conv2d_rank1_mean_same",
        lambda: layers.Conv2DRank1(6, 3, ensemble_size=3, padding="same", inference="mean", seed=2, dtype="float32"),
        "Conv2DRank1",
        dict(_ED_POINT, filters=6, kernel_size=3, ensemble_size=3, padding="same", data_format="channels_last"),
        (3 * 2, 6, 6, 3),
    ),
    Case(
        "conv2d_rank1_mean_valid_stride2",
        lambda: layers.Conv2DRank1(4, 3, ensemble_size=4, strides=2, padding="valid", activation="relu", inference="mean", seed=3, dtype="float32"),
        "Conv2DRank1",
        dict(_ED_POINT, filters=4, kernel_size=3, ensemble_size=4, strides=2, padding="valid", activation="relu", data_format="channels_last"),
        (4 * 2, 9, 7, 2),
    ),
    Case(
        "conv1d_rank1_mean_causal_dilated",
        lambda: layers.Conv1DRank1(6, 3, ensemble_size=3, padding="causal", dilation_rate=2, inference="mean", seed=4, dtype="float32"),
        "Conv1DRank1",
        dict(_ED_POINT, filters=6, kernel_size=3, ensemble_size=3, padding="causal", dilation_rate=2),
        (3 * 2, 10, 4),
    ),
    Case(
        "conv1d_rank1_mean_same",
        lambda: layers.Conv1DRank1(5, 3, ensemble_size=4, padding="same", activation="tanh", inference="mean", seed=5, dtype="float32"),
        "Conv1DRank1",
        dict(_ED_POINT, filters=5, kernel_size=3, ensemble_size=4, padding="same", activation="tanh"),
        (4 * 2, 8, 3),
    ),
    Case(
        "lstm_rank1_mean",
        lambda: layers.LSTMCellRank1(5, ensemble_size=4, inference="mean", seed=6, dtype="float32"),
        "LSTMCellRank1",
        dict(_ED_LSTM_POINT, units=5, ensemble_size=4),
        (4 * 2, 6, 3),
        rnn=True,
    ),
    Case(
        "lstm_rank1_mean_masked",
        lambda: layers.LSTMCellRank1(5, ensemble_size=3, inference="mean", seed=7, dtype="float32"),
        "LSTMCellRank1",
        dict(_ED_LSTM_POINT, units=5, ensemble_size=3),
        (3 * 2, 7, 4),
        rnn=True,
        masked=True,
    ),
]
CASE_NAMES = [case.name for case in CASES]
assert len(set(CASE_NAMES)) == len(CASE_NAMES)


def _inverse_softplus(x):
    return np.log(np.expm1(x))


def _role_variables(layer):
    """Our weights by role: the shared kernels, and each factor's point value
    or posterior mean (the value the layer uses with inference="mean")."""
    roles = {"kernel": layer.kernel}
    if getattr(layer, "recurrent_kernel", None) is not None:
        roles["recurrent_kernel"] = layer.recurrent_kernel
    scales = []
    for name, factor in layer.member_factors.items():
        if factor.is_stochastic:
            loc = factor.initializer.loc
            roles[name] = loc
            scales.extend(v for v in factor.variables if v is not loc)
        else:
            roles[name] = factor.variable
    return roles, scales


def _randomize(layer, rng):
    """Assigns random values to every trainable weight; returns them by role."""
    roles, scales = _role_variables(layer)
    values = {}
    for role, variable in roles.items():
        shape = tuple(variable.shape)
        if role in ("kernel", "recurrent_kernel"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
        elif role == "bias":
            value = rng.normal(0.0, 0.5, shape)
        else:  # alpha, gamma, recurrent_*: far from one, some negative
            value = rng.normal(1.0, 0.5, shape)
        value = value.astype(np.float32)
        variable.assign(value)
        values[role] = value
    # Large posterior scales: a mean-mode pass that samples by mistake would
    # be far off, not 1e-3 off.
    for variable in scales:
        scale = rng.uniform(0.3, 0.6, tuple(variable.shape))
        if "unconstrained" in variable.path:  # scale = softplus(variable)
            scale = _inverse_softplus(scale)
        variable.assign(scale.astype(np.float32))
    covered = {id(v) for v in list(roles.values()) + scales}
    leftover = [v.path for v in layer.trainable_weights if id(v) not in covered]
    assert not leftover, f"{layer.name}: trainable weights not randomised: {leftover}"
    return values


def _make_input(case, rng):
    x = rng.normal(0.0, 1.0, case.input_shape).astype(np.float32)
    if case.masked:
        # Variable lengths: zero-pad each sequence's tail (length >= 1).
        steps = case.input_shape[1]
        lengths = rng.integers(1, steps + 1, case.input_shape[0])
        lengths[0] = steps  # one full-length sequence
        lengths[-1] = 2
        for row, length in enumerate(lengths):
            x[row, length:] = 0.0
    return x


def _run_ours(case, x, rng):
    """Builds our layer, randomises its weights, returns (output, weights by role)."""
    layer = case.make_layer()
    if case.rnn:
        cell = layer
        model_layer = keras.layers.RNN(cell, return_sequences=True)
    else:
        cell = model_layer = layer

    def forward():
        inputs, mask = tf.constant(x), None
        if case.masked:
            masking = keras.layers.Masking(mask_value=0.0)
            mask = masking.compute_mask(inputs)
            inputs = masking(inputs)
            return model_layer(inputs, mask=mask, training=False)
        return model_layer(inputs, training=False)

    forward()  # builds
    weights = _randomize(cell, rng)
    return np.asarray(forward(), dtype=np.float32), weights


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Our outputs and Edward2's for every case: {name: (ours, edward2)}."""
    directory = tmp_path_factory.mktemp("edward2_reference")
    rng = np.random.default_rng(20200707)
    arrays, ours, spec = {}, {}, []
    with tf.device("/CPU:0"):
        for case in CASES:
            x = _make_input(case, rng)
            ours[case.name], weights = _run_ours(case, x, rng)
            arrays[f"{case.name}/input"] = x
            for role, value in weights.items():
                arrays[f"{case.name}/weight/{role}"] = value
            spec.append(
                {"name": case.name, "layer": case.ed_layer, "kwargs": case.ed_kwargs, "rnn": case.rnn, "masked": case.masked}
            )
    arrays["spec"] = np.array(json.dumps({"cases": spec}))
    cases_path, outputs_path = directory / "cases.npz", directory / "edward2_outputs.npz"
    np.savez(cases_path, **arrays)

    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("KERAS_BACKEND", None)
    try:
        result = subprocess.run(
            [sys.executable, str(REFERENCE_SCRIPT), str(cases_path), str(outputs_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"edward2 reference subprocess timed out after {SUBPROCESS_TIMEOUT_S} s: {error.stderr!r}")
    if result.returncode != 0:
        pytest.fail(
            f"edward2 reference subprocess failed (exit {result.returncode}):\n"
            f"--- stderr (tail) ---\n{result.stderr[-6000:]}\n--- stdout (tail) ---\n{result.stdout[-2000:]}"
        )
    assert "edward2" not in sys.modules, "edward2 must only be imported in the reference subprocess"
    with np.load(outputs_path) as reference:
        return {name: (ours[name], reference[name]) for name in CASE_NAMES}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_matches_edward2(comparison, name):
    ours, reference = comparison[name]
    assert ours.shape == reference.shape, f"{name}: output shape {ours.shape} (ours) vs {reference.shape} (edward2)"
    assert np.all(np.isfinite(ours)), f"{name}: non-finite outputs"
    error = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    max_error = float(error.max())
    MAX_ERRORS[name] = (max_error, float(np.abs(reference).max()))
    print(f"\n[edward2] {name}: max abs error {max_error:.3g} (max |output| {np.abs(reference).max():.3g})")
    worst = np.unravel_index(np.argmax(error), error.shape)
    assert max_error <= TOLERANCE, (
        f"{name}: max abs error {max_error:.3g} > {TOLERANCE:g} at index {worst}: "
        f"ours {ours[worst]:.6g}, edward2 {reference[worst]:.6g}; "
        f"{int((error > TOLERANCE).sum())} of {error.size} entries differ"
    )


def test_outputs_are_not_trivial(comparison):
    """The comparison means something: outputs neither near zero nor constant."""
    for name in CASE_NAMES:
        _, reference = comparison[name]
        assert np.abs(reference).max() > 0.1, f"{name}: edward2 outputs are all near zero"
        assert reference.std() > 0.05, f"{name}: edward2 outputs are nearly constant"


def test_report_max_errors():
    """Prints the table of max abs errors (run pytest with -s)."""
    if not MAX_ERRORS:
        pytest.skip("no comparison ran")
    width = max(len(name) for name in MAX_ERRORS)
    lines = [f"{'case':{width}s}  max abs error  max |output|"]
    for name in CASE_NAMES:
        if name in MAX_ERRORS:
            error, scale = MAX_ERRORS[name]
            lines.append(f"{name:{width}s}  {error:13.3g}  {scale:12.3g}")
    print("\n[edward2] agreement with edward2 0.0.2 (tolerance %g)\n" % TOLERANCE + "\n".join(lines))
