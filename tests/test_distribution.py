"""The same binary under the default strategy, MirroredStrategy (2 logical CPUs)
and MultiWorkerMirroredStrategy (two worker processes on 127.0.0.1).

Each run trains a BatchEnsemble small CNN on the embedded digits for one epoch
with the same global batch of 64; the per-replica batch must be 32 under both
distributed strategies, and the final weights must match the single-device
run (gradients are summed across replicas of the loss divided by the global
batch, so only float summation order differs).
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np

COMMON = [
    "--dataset=digits", "--method=batchensemble", "--ensemble_size=2", "--train_epochs=1", "--verbose=0",
    "--ood=false", "--corruptions=", "--validation_percent=0", "--seed=1",
]


def _environment(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _start(arguments, **environment):
    return subprocess.Popen(
        [sys.executable, "-m", "baselines.embedded", *COMMON, *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(**environment),
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _replica_line(stdout):
    match = re.search(r"replicas: (\d+), per-replica batch: \[(\d+)\], global batch: (\d+)", stdout)
    assert match, stdout[-2000:]
    return tuple(int(group) for group in match.groups())


def _model_arrays(output_dir):
    with np.load(os.path.join(output_dir, "checkpoints", "ckpt-00001.npz")) as archive:
        return {name: archive[name] for name in archive.files if name.startswith("model/")}


def test_mirrored_and_multi_worker_match_a_single_device(tmp_path):
    single, mirrored, workers = (str(tmp_path / name) for name in ("single", "mirrored", "workers"))
    processes = [
        _start(["--per_core_batch_size=64", f"--output_dir={single}"]),
        _start(["--strategy=mirrored", "--num_cores=2", "--per_core_batch_size=32", f"--output_dir={mirrored}"]),
    ]
    outputs = [_finish(p) for p in processes]
    assert _replica_line(outputs[0]) == (1, 64, 64)
    assert _replica_line(outputs[1]) == (2, 32, 64)

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    worker_processes = [
        _start(
            ["--strategy=multi_worker", "--per_core_batch_size=32", f"--output_dir={workers}"],
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        for index in range(2)
    ]
    for stdout in [_finish(p) for p in worker_processes]:
        assert _replica_line(stdout) == (2, 32, 64)  # each worker: 2 replicas in sync, 32 examples each

    reference = _model_arrays(single)
    for output_dir in (mirrored, workers):
        arrays = _model_arrays(output_dir)
        assert arrays.keys() == reference.keys()
        for name in reference:
            np.testing.assert_allclose(arrays[name], reference[name], rtol=1e-4, atol=1e-5, err_msg=name)
    with open(os.path.join(single, "results.json")) as stream:
        single_result = json.load(stream)
    with open(os.path.join(workers, "results.json")) as stream:
        worker_result = json.load(stream)
    assert single_result["accuracy"] > 0.3  # it trained (chance is 0.1), so matching weights mean something
    assert worker_result["replicas"] == 2 and worker_result["global_batch_size"] == 64
    assert abs(worker_result["accuracy"] - single_result["accuracy"]) <= 2 / worker_result["test_examples"]
