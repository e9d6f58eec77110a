"""`keras.distribution.DataParallel` over two CPU devices trains a converted model to the one-device weights."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.data_parallel_run import METHODS

pytestmark = pytest.mark.backends("jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(mode, directory):
    """{method: (trained weights, initial weights)} of a run on one device or data-parallel over two."""
    directory.mkdir()
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run([sys.executable, "-m", "tests.data_parallel_run", mode, str(directory)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = {}
    for method in METHODS:
        with np.load(directory / f"{method}.npz") as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        runs[method] = arrays[: len(arrays) // 2], arrays[len(arrays) // 2:]
    return runs


def test_two_device_data_parallel_training_ends_on_the_single_device_weights(tmp_path):
    single, parallel = _train("single", tmp_path / "single"), _train("parallel", tmp_path / "parallel")
    for method in METHODS:
        (one_device, initial), (two_devices, _) = single[method], parallel[method]
        assert len(one_device) == len(two_devices)
        for one, two in zip(one_device, two_devices):
            # Measured: 3.0e-8 (BatchEnsemble), 1.2e-7 (rank-1) after 16 SGD steps; gradients summed in another order.
            np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6, err_msg=method)
        # Training moved the weights: two runs that did nothing would match too.
        assert max(np.abs(trained - start).max() for trained, start in zip(one_device, initial)) > 1e-2, method
