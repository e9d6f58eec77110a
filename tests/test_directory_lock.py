"""One process per directory: the OS lock, held and contended by real processes (no mocked lock)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rank1_keras.runs.directory_lock import LOCK_NAME, DirectoryInUseError, DirectoryLock

# A holder process: imports only the lock module (no TensorFlow), takes the lock, says so, sleeps.
HOLDER = r"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("directory_lock", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
lock = module.DirectoryLock(sys.argv[2], sys.argv[3]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[4]))
lock.release()
print("released", flush=True)
"""
MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rank1_keras", "runs",
                      "directory_lock.py")


def start_holder(directory, purpose="training run", seconds=600):
    """A separate process holding `directory`'s lock until it is killed (or `seconds` pass)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, MODULE, str(directory), purpose, str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    assert line.strip() == "held", process.stderr.read()
    return process


def test_a_second_process_is_refused_naming_the_holder_and_kill_9_frees_the_lock(tmp_path):
    holder = start_holder(tmp_path / "run")
    try:
        with pytest.raises(DirectoryInUseError) as error:
            DirectoryLock(str(tmp_path / "run"), "training run").acquire()
        message = str(error.value)
        assert f"--output_dir={tmp_path / 'run'} is in use by a training run: pid {holder.pid}" in message
        assert f"on host {socket.gethostname()}, started 20" in message and "UTC" in message
        assert "wait for it to finish, or choose another --output_dir" in message
        with open(tmp_path / "run" / LOCK_NAME, encoding="utf-8") as stream:
            assert json.load(stream)["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the lock with the process: no stale lock, although its file is still there.
    assert os.path.exists(tmp_path / "run" / LOCK_NAME)
    with DirectoryLock(str(tmp_path / "run"), "training run") as lock:
        assert lock.held
        with open(tmp_path / "run" / LOCK_NAME, encoding="utf-8") as stream:
            assert json.load(stream)["pid"] == os.getpid()
    assert not os.path.exists(tmp_path / "run" / LOCK_NAME)  # a release removes the file


def test_two_locks_in_one_process_exclude_each_other_too(tmp_path):
    with DirectoryLock(str(tmp_path), "training run"):
        with pytest.raises(DirectoryInUseError, match=f"pid {os.getpid()}"):
            DirectoryLock(str(tmp_path), "export", argument="--checkpoint").acquire()
    with DirectoryLock(str(tmp_path), "export"):  # free again once released
        pass


def test_waiting_takes_the_lock_when_the_holder_releases_it(tmp_path, capsys):
    holder = start_holder(tmp_path, "export", seconds=3)
    start = time.monotonic()
    with DirectoryLock(str(tmp_path), "export", wait=True):
        waited = time.monotonic() - start
        assert holder.stdout.readline().strip() == "released"
    holder.wait()
    assert waited > 0.5
    assert f"waiting for {tmp_path / LOCK_NAME}: held by an export: pid {holder.pid}" in capsys.readouterr().err


def test_a_directory_the_lock_created_is_removed_when_nothing_was_written(tmp_path):
    fresh = tmp_path / "a" / "b"
    with DirectoryLock(str(fresh), "training run"):
        assert fresh.is_dir()
    assert not fresh.exists() and (tmp_path / "a").is_dir()
    with DirectoryLock(str(fresh), "training run"):
        (fresh / "results.json").write_text("{}")
    assert (fresh / "results.json").read_text() == "{}" and not (fresh / LOCK_NAME).exists()


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        DirectoryLock(str(tmp_path / "notes"), "training run").acquire()
    assert (tmp_path / "notes").read_text() == "mine"
