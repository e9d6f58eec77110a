"""A training binary killed with SIGKILL and started again ends on the weights of an
uninterrupted run (rank-1: sampled factors and seeded data order must both replay).

The kill lands the moment `ckpt-00001.npz` appears, which is what a resume
reads: often before the `latest` pointer names it (the race a loaded machine
made visible), and the restart must still resume from epoch 1, not 0."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = [
    sys.executable, "-m", "baselines.embedded", "--dataset=digits", "--method=rank1", "--ensemble_size=2",
    "--train_epochs=4", "--per_core_batch_size=16", "--ood=false", "--corruptions=", "--validation_percent=0",
    "--verbose=0", "--seed=3",
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _start(output_dir):
    return subprocess.Popen(
        COMMAND + [f"--output_dir={output_dir}"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def _final_arrays(output_dir):
    with np.load(os.path.join(output_dir, "checkpoints", "ckpt-00004.npz")) as archive:
        return {name: archive[name] for name in archive.files if name != "header"}


def test_sigkill_then_restart_ends_on_the_uninterrupted_weights(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    uninterrupted = _start(straight)
    victim = _start(killed)
    first_checkpoint = os.path.join(killed, "checkpoints", "ckpt-00001.npz")
    deadline = time.monotonic() + 600
    while not os.path.exists(first_checkpoint) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(killed, "results.json"))

    restarted = subprocess.run(
        COMMAND + [f"--output_dir={killed}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    stdout, stderr = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, stderr[-3000:]

    with open(os.path.join(killed, "results.json")) as stream:
        resumed_from = json.load(stream)["resumed_from_epoch"][0]
    assert 1 <= resumed_from <= 3
    expected, actual = _final_arrays(straight), _final_arrays(killed)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
