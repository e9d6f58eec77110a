"""TensorFlow, JAX and PyTorch give the same numbers: the same layers, weights and noise in three processes.

`tests/cross_backend_run.py` builds DenseRank1 (multiplicative; additive with
a draw per example), Conv2DRank1, LSTMCellRank1 in keras.layers.RNN and
DenseBatchEnsemble, sets every weight from NumPy and calls each in training
mode (sampled factors) and at inference. It runs once per backend, each in
its own process (`KERAS_BACKEND` is read once, at import), and the test
here, run under TensorFlow, compares the three files:

* outputs: the three backends agree to 1e-5, and each equals the float64
  NumPy forward pass (`tests/test_numpy_reference.py`'s formulas) with the
  same weights and noise;
* KL terms (the layer losses): each equals its float64 closed form / N;
* bookkeeping: same weights, same seeds consumed, same number of draws.

`keras.random` draws different numbers for one seed on each backend (each
backend has its own generator), so the run pins the noise itself
(`cross_backend_run.portable_noise`, checked here on every backend): what
is compared is everything the library computes from the noise.
"""

import importlib.util
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from rank1_keras.probability import distributions
from tests import cross_backend_run as run
from tests import test_numpy_reference as reference
from tests.backend_utils import ALL_BACKENDS, numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PROCESS_TIMEOUT_S = 300

# case -> its stochastic factors, in draw order.
STOCHASTIC = {
    "dense": ("alpha", "gamma"),
    "dense_additive_per_example": ("alpha", "gamma"),
    "conv2d": ("alpha", "gamma"),
    "lstm": ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma"),
    "dense_batch_ensemble": (),
}
# What the runner builds (tests/cross_backend_run.py), for the float64 references.
OPTIONS = {
    "dense": dict(kind="dense", activation=np.tanh, additive=False, per_example=False, inference="mean"),
    "dense_additive_per_example": dict(kind="dense", activation=None, additive=True, per_example=True, inference="sample"),
    "conv2d": dict(kind="conv2d", activation=lambda v: np.maximum(v, 0.0), additive=False, per_example=False,
                   inference="mean", strides=(2, 2), padding="same", dilation_rate=(1, 1)),
    "lstm": dict(kind="lstm", activation=None, additive=False, per_example=False, inference="mean"),
    "dense_batch_ensemble": dict(kind="dense", activation=lambda v: np.maximum(v, 0.0), additive=False,
                                 per_example=False, inference="mean"),
}


def _softplus(x):
    x = np.asarray(x, np.float64)
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _portable_eps(seed, shape):
    """The noise `portable_noise` hands out for `seed`, regenerated in NumPy."""
    rng = np.random.RandomState([seed[0] % 2**32, seed[1] % 2**32, 20240601])
    return rng.standard_normal(shape).astype(np.float32).astype(np.float64)


def _run_all_backends(tmp_path):
    missing = [name for name in ("jax", "torch") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not importable: the cross-backend test needs TensorFlow, JAX and PyTorch "
            "installed (CI installs all three). Install them; this test is not skipped.",
            pytrace=False,
        )
    processes = {}
    for backend in ALL_BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        out = tmp_path / f"{backend}.npz"
        processes[backend] = (out, subprocess.Popen(
            [sys.executable, "-m", "tests.cross_backend_run", str(out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    results, failures = {}, []
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    for backend, (out, process) in processes.items():
        try:
            output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            failures.append(f"{backend}: no result in {PROCESS_TIMEOUT_S} s\n{output[-3000:]}")
            continue
        if process.returncode != 0:
            failures.append(f"{backend}: exit status {process.returncode}\n{output[-3000:]}")
            continue
        with np.load(out) as data:
            results[backend] = {key: data[key] for key in data.files}
    if failures:
        pytest.fail("cross-backend run failed:\n" + "\n\n".join(failures), pytrace=False)
    for backend, result in results.items():
        assert str(result["backend"]) == backend, f"KERAS_BACKEND={backend} ran {result['backend']}"
    return results


def _factors(result, case, mode):
    """Float64 (K, B, dim) factor values of one call, from the stored weights and regenerated noise."""
    options, roles = OPTIONS[case], STOCHASTIC[case]
    weights = {name: result[f"{case}/weight/{name}"].astype(np.float64) for name in result[f"{case}/weight_names"]}
    draws = result[f"{case}/{mode}_draws"]
    sampled = mode == "train" or options["inference"] == "sample"
    rows = run.K * run.B
    member = np.arange(rows) * run.K // rows
    factors = {}
    for index, role in enumerate(roles):
        loc, scale = weights[f"{role}_loc"], _softplus(weights[f"{role}_unconstrained_scale"])
        if sampled:
            shape = ((rows,) if options["per_example"] else ()) + loc.shape
            value = loc + scale * _portable_eps(draws[index, :2], shape)
            # A draw per example: row i keeps its member's row of its own (K, dim) draw.
            per_row = value[np.arange(rows), member] if options["per_example"] else value[member]
        else:
            per_row = loc[member]
        factors[role] = per_row.reshape(run.K, run.B, -1)
    for role in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma", "bias"):
        if role not in factors and role in weights:  # point factors
            factors[role] = weights[role][member].reshape(run.K, run.B, -1)
    return weights, factors


class _Layer:
    """The attributes the float64 references of tests/test_numpy_reference.py read from a layer."""

    def __init__(self, weights, options, units=None):
        self.kernel = weights["kernel"]
        self.recurrent_kernel = weights.get("recurrent_kernel")
        self.use_additive_perturbation = options["additive"]
        self.use_bias = True
        self.units = units
        self.strides = options.get("strides")
        self.padding = options.get("padding")
        self.dilation_rate = options.get("dilation_rate")


def _reference_output(result, case, mode):
    options = OPTIONS[case]
    weights, factors = _factors(result, case, mode)
    x = result[f"{case}/input"].astype(np.float64)
    activation = options["activation"] or (lambda v: v)
    if options["kind"] == "dense":
        return reference._dense_rank1_reference(_Layer(weights, options), x, factors, activation)
    if options["kind"] == "conv2d":
        return reference._conv_rank1_reference(_Layer(weights, options), x, factors, activation)
    units = weights["recurrent_kernel"].shape[0]
    return reference._lstm_reference(_Layer(weights, options, units), x, factors, return_sequences=True)


def _reference_kl(result, case):
    """kl_weight * sum over stochastic factors of KL(N(loc, softplus(raw)^2) || N(1, 0.1^2)) / N, float64."""
    total = 0.0
    for role in STOCHASTIC[case]:
        mu = result[f"{case}/weight/{role}_loc"].astype(np.float64)
        s = _softplus(result[f"{case}/weight/{role}_unconstrained_scale"])
        m, t = run.PRIOR_MEAN, run.PRIOR_STDDEV
        total += np.sum(np.log(t / s) + (s**2 + (mu - m) ** 2) / (2 * t**2) - 0.5)
    kl_weight = float(result[f"{case}/weight/kl_weight"]) if STOCHASTIC[case] else 0.0
    return kl_weight * total / run.TRAIN_SIZE


@pytest.mark.backends("tensorflow")
def test_tensorflow_jax_and_torch_give_the_same_numbers(tmp_path):
    assert (reference.K, reference.B) == (run.K, run.B)  # the references' member layout
    results = _run_all_backends(tmp_path)
    tf_result = results["tensorflow"]
    cases = sorted({key.split("/")[0] for key in tf_result if "/" in key})
    assert cases == sorted(STOCHASTIC), cases
    report = []
    for case in cases:
        stochastic = len(STOCHASTIC[case])
        # The same weights, seeds and draws in every process.
        for backend, result in results.items():
            assert sorted(result) == sorted(tf_result), backend
            np.testing.assert_array_equal(result[f"{case}/weight_names"], tf_result[f"{case}/weight_names"])
            for key in tf_result:
                if key.startswith(f"{case}/weight/") or key.endswith(("_draws", "seed_state", "_loss_count", "/input")):
                    np.testing.assert_array_equal(result[key], tf_result[key], err_msg=f"{backend} {key}")
        train_draws = tf_result[f"{case}/train_draws"]
        assert len(train_draws) == stochastic, (case, train_draws)
        if stochastic:
            # One seed per stochastic factor and call, the layer's generator state + [0, i].
            seed = int(tf_result[f"{case}/seed_state"][0])
            np.testing.assert_array_equal(train_draws[:, :2], [[seed, i] for i in range(stochastic)])
        for mode in ("train", "infer"):
            expected = _reference_output(tf_result, case, mode)
            outputs = {backend: result[f"{case}/{mode}"].astype(np.float64) for backend, result in results.items()}
            for backend, output in outputs.items():
                assert output.shape == expected.shape, (case, mode, backend, output.shape)
                scale = max(np.abs(expected).max(), 1e-12)
                np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5 * scale,
                                           err_msg=f"{case} {mode} on {backend} vs float64 NumPy")
            for backend in ("jax", "torch"):
                np.testing.assert_allclose(outputs[backend], outputs["tensorflow"], **TOLERANCE,
                                           err_msg=f"{case} {mode}: {backend} vs tensorflow")
            worst = max(np.abs(outputs[b] - outputs["tensorflow"]).max() for b in ("jax", "torch"))
            # The KL terms: one loss per call on a rank-1 layer, none on BatchEnsemble.
            expected_kl = _reference_kl(tf_result, case)
            assert int(tf_result[f"{case}/{mode}_loss_count"]) == (1 if stochastic else 0)
            for backend, result in results.items():
                np.testing.assert_allclose(float(result[f"{case}/{mode}_loss"]), expected_kl, rtol=1e-5, atol=1e-12,
                                           err_msg=f"{case} {mode} KL on {backend}")
            report.append(f"{case}/{mode}: max |backend - tensorflow| = {worst:.2e}")
        if stochastic and OPTIONS[case]["inference"] == "mean":
            # The training call really sampled: its output is not the posterior-mean one.
            assert np.abs(tf_result[f"{case}/train"] - tf_result[f"{case}/infer"]).max() > 1e-3, case
    print("\n".join(report))


def test_portable_noise_replaces_only_the_noise():
    """On every backend: under `portable_noise`, a layer's seed generator advances as with
    keras.random, and a draw is loc + scale * the NumPy noise for the seed it was handed."""
    loc = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.25]], np.float32)
    scale = np.array([[1.0, 0.5, 2.0], [0.25, 3.0, 1.5]], np.float32)
    original = keras.random.normal
    native = keras.random.SeedGenerator(5)
    keras.random.normal((2, 3), seed=native)
    keras.random.normal((4, 2, 3), seed=native)
    pinned, draws = keras.random.SeedGenerator(5), []
    with run.portable_noise(draws):
        first = distributions.reparameterized(distributions.normal(loc, scale, event_ndims=2), (), pinned)
        second = distributions.reparameterized(distributions.normal(loc, scale, event_ndims=2), (4,), pinned)
        with pytest.raises(AssertionError, match="uniform"):
            keras.random.uniform((2,), seed=pinned)
    np.testing.assert_array_equal(numpy(pinned.state), numpy(native.state))
    assert [seed for seed, _ in draws] == [(5, 0), (5, 1)]
    np.testing.assert_allclose(numpy(first), loc + scale * _portable_eps((5, 0), (2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(numpy(second), loc + scale * _portable_eps((5, 1), (4, 2, 3)), rtol=1e-6, atol=1e-6)
    assert keras.random.normal is original  # restored afterwards
