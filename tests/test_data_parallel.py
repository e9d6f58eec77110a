"""`keras.distribution.DataParallel` over two CPU devices trains a converted model to the one-device weights."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.backends("jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(method, mode, path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run([sys.executable, "-m", "tests.data_parallel_run", method, mode, str(path)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(path) as saved:
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    half = len(arrays) // 2
    return arrays[:half], arrays[half:]  # trained weights, initial weights


@pytest.mark.parametrize("method", ["batchensemble", "rank1"])
def test_two_device_data_parallel_training_ends_on_the_single_device_weights(tmp_path, method):
    single, initial = _train(method, "single", tmp_path / "single.npz")
    parallel, _ = _train(method, "parallel", tmp_path / "parallel.npz")
    assert len(single) == len(parallel)
    for one, two in zip(single, parallel):
        # Measured: 3.0e-8 (BatchEnsemble), 1.2e-7 (rank-1) after 16 SGD steps; gradients summed in another order.
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
    # Training moved the weights: two runs that did nothing would match too.
    assert max(np.abs(trained - start).max() for trained, start in zip(single, initial)) > 1e-2
