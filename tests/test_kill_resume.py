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


def test_two_binaries_on_one_output_dir_one_trains_the_other_is_refused_naming_it(tmp_path):
    """The issue's three ways: two identical commands started together, one started when the first's
    ckpt-00001.npz appears, and one with other settings; only the first trains, the others end with one
    error line naming it, and leave its files (a .tmp-* it is writing included) alone."""
    output_dir = str(tmp_path / "run")
    # Far longer than the test (killed at its end), however slow or loaded the machine.
    long_run = [*COMMAND, "--train_epochs=100000", "--steps_per_epoch=1", f"--output_dir={output_dir}"]
    first, twin = (subprocess.Popen(long_run, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for _ in range(2))
    try:
        deadline = time.monotonic() + 600
        while twin.poll() is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        loser, holder = (twin, first) if twin.poll() is not None else (first, twin)
        _, err = loser.communicate(timeout=60)
        assert loser.returncode == 1 and holder.poll() is None, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: --output_dir={output_dir} is in use by a training run: pid {holder.pid}"), last

        checkpoint_dir = os.path.join(output_dir, "checkpoints")
        while not os.path.exists(os.path.join(checkpoint_dir, "ckpt-00001.npz")) and time.monotonic() < deadline:
            assert holder.poll() is None, holder.communicate()[1][-3000:]
            time.sleep(0.02)
        planted = os.path.join(checkpoint_dir, ".tmp-in-flight.npz")  # as if the holder were writing it
        with open(planted, "wb") as stream:
            stream.write(b"half a checkpoint")
        with open(os.path.join(output_dir, "run_settings.json"), "rb") as stream:
            settings = stream.read()
        for late in (long_run, [*COMMAND, "--train_epochs=4", "--seed=1", "--per_core_batch_size=32",
                                f"--output_dir={output_dir}"]):
            refused = subprocess.run(late, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
            last = refused.stderr.strip().splitlines()[-1]
            assert refused.returncode == 1 and f"is in use by a training run: pid {holder.pid}" in last, last
            assert "Traceback" not in refused.stderr
        assert holder.poll() is None
        with open(planted, "rb") as stream:
            assert stream.read() == b"half a checkpoint"
        with open(os.path.join(output_dir, "run_settings.json"), "rb") as stream:
            assert stream.read() == settings
        assert not os.path.exists(os.path.join(output_dir, "results.json"))
    finally:
        for process in (first, twin):
            if process.poll() is None:
                process.kill()
            process.communicate()
