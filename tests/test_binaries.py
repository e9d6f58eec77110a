"""End-to-end tests of the training binaries and `run_experiment` (offline, small).

* In process, `run_experiment` on every task kind with tiny settings:
  CIFAR-10 (every method, CIFAR-10-C and CIFAR-100 OOD), CIFAR-100 and
  ImageNet from `tfds.testing.mock_data` (one mock context per test), MIMIC
  from CSV files written by `write_mimic_split`, and the embedded
  JapaneseVowels time series.
* As subprocesses, the real binaries (`python -m baselines.<x>`) on bad
  input: each must exit non-zero with a last stderr line `error: ...` naming
  the problem, and leave the files already in `--output_dir` byte-identical.
  They run concurrently, in the background while the in-process tests run
  (a Python-bound tracing process leaves the second core mostly idle).

tfds' mock knows no split sizes (`MockPolicy.USE_CODE`: there is no metadata);
the tasks then count the mocked data set's examples (its cardinality).
"""

import concurrent.futures
import contextlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rank1_keras.data import write_mimic_split
from rank1_keras.methods.settings import MethodSettings
from rank1_keras.runs.checkpoint import read_header
from rank1_keras.tensorflow.training.experiment import run_experiment
from rank1_keras.tensorflow.training.loop import TrainingSettings
from rank1_keras.tensorflow.training.tasks import TaskOptions, load_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_EXAMPLES = 16  # every mocked split: 2 steps of 8, then 8 test examples
BATCH = 8
TEST_EXAMPLES = 8
CORRUPTIONS = ("gaussian_noise",)
SEVERITIES = (1, 3)
TINY_TRAINING = TrainingSettings(train_epochs=1, steps_per_epoch=2, per_replica_batch_size=BATCH, verbose=0)
CORE_METRICS = ("accuracy", "nll", "ece", "brier", "predictive_entropy")


# --------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------


@contextlib.contextmanager
def tfds_mock(tmp_path):
    """`tfds.testing.mock_data` (USE_CODE) with MOCK_EXAMPLES per split; yields a data_dir."""
    import tensorflow_datasets as tfds

    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        yield str(data_dir)


def _trainable_parameters(model):
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))


def _json_normalised(value):
    return json.loads(json.dumps(value, default=float))


def check_result(
    result,
    output_dir,
    *,
    dataset,
    method,
    num_classes,
    train_examples,
    test_examples,
    models=1,
    members=1,
    ood=(),
    shifts=(),
    validation=False,
):
    """The checks every run shares: finite, consistent metrics and the files written."""
    assert result["dataset"] == dataset and result["method"] == method
    for key in CORE_METRICS:
        assert math.isfinite(result[key]), (key, result[key])
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["nll"] >= 0.0
    assert 0.0 <= result["ece"] <= 1.0
    assert 0.0 <= result["brier"] <= 2.0
    assert -1e-9 <= result["predictive_entropy"] <= math.log(num_classes) + 1e-6
    assert result["train_examples"] == train_examples
    assert result["test_examples"] == test_examples
    assert result["parameters"] > 0 and result["train_seconds"] > 0

    # Member diversity exists exactly for multi-member predictions.
    if members > 1:
        assert 0.0 <= result["disagreement"] <= 1.0
        assert math.isfinite(result["average_kl"]) and result["average_kl"] >= -1e-9
        assert -1e-9 <= result["mutual_information"] <= math.log(num_classes) + 1e-6
    else:
        assert "disagreement" not in result and "mutual_information" not in result

    # Shifts: exactly the requested corruptions x severities.
    shift_keys = {key for key in result if key.startswith("shift/")}
    assert shift_keys == {
        f"shift/{corruption}/{severity}/{name}"
        for corruption, severity in shifts
        for name in ("accuracy", "nll", "ece")
    }
    if shifts:
        accuracies = [result[f"shift/{c}/{s}/accuracy"] for c, s in shifts]
        for c, s in shifts:
            assert 0.0 <= result[f"shift/{c}/{s}/accuracy"] <= 1.0
            assert math.isfinite(result[f"shift/{c}/{s}/nll"]) and result[f"shift/{c}/{s}/nll"] >= 0.0
            assert 0.0 <= result[f"shift/{c}/{s}/ece"] <= 1.0
        assert result["shift_accuracy"] == pytest.approx(np.mean(accuracies))
        assert 0.0 <= result["shift_ece"] <= 1.0
    else:
        assert "shift_accuracy" not in result and "shift_ece" not in result

    # OOD: one AUROC / AUPR per set; `ood_auroc` is the first set's.
    assert {key for key in result if key.startswith("ood/")} == {
        f"ood/{name}/{metric}" for name in ood for metric in ("auroc", "aupr")
    }
    if ood:
        assert 0.0 <= result["ood_auroc"] <= 1.0 and 0.0 <= result["ood_aupr"] <= 1.0
        assert result["ood_auroc"] == result[f"ood/{ood[0]}/auroc"]
    else:
        assert "ood_auroc" not in result

    if validation and "temperature_skipped" in result:
        # A perfectly classified validation split has no finite NLL-minimising temperature.
        assert "temperature" not in result and "nll_temperature_scaled" not in result
    elif validation:
        assert result["temperature"] > 0 and math.isfinite(result["temperature"])
        assert math.isfinite(result["nll_temperature_scaled"]) and result["nll_temperature_scaled"] >= 0
    else:
        assert "temperature" not in result

    # Training logs: one per trained model, finite, on the requested batch.
    assert len(result["final_train_logs"]) == models
    assert result["resumed_from_epoch"] == [0] * models
    for logs in result["final_train_logs"]:
        assert math.isfinite(logs["nll"]) and math.isfinite(logs["regularization"])
        assert 0.0 <= logs["accuracy"] <= 1.0

    # Files: results.json is the returned dict, results.md its row, a checkpoint per model.
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as stream:
        written = json.load(stream)
    assert written == _json_normalised(result)
    with open(os.path.join(output_dir, "results.md"), encoding="utf-8") as stream:
        table = stream.read()
    assert f"| {method} |" in table
    epochs = result["settings"]["training"]["train_epochs"]
    method_settings = result["settings"]["method"]
    training_members = MethodSettings(**method_settings).members  # K rows per example for tiled training
    directories = (
        [os.path.join(output_dir, "checkpoints")]
        if models == 1
        else [os.path.join(output_dir, "checkpoints", f"member_{k}") for k in range(models)]
    )
    for directory in directories:
        name = f"ckpt-{epochs:05d}.npz"
        with open(os.path.join(directory, "latest"), encoding="utf-8") as stream:
            assert stream.read().strip() == name
        header = read_header(os.path.join(directory, name))
        assert header["epoch"] == epochs
        assert header["metadata"]["fingerprint"]["members"] == training_members
        assert any(shape[-1:] == [num_classes] for _, shape in header["model"])  # the output layer
    return written


# --------------------------------------------------------------------------
# tfds tasks under tfds.testing.mock_data.
# --------------------------------------------------------------------------


def _cifar_options(data_dir, method):
    return TaskOptions(
        data_dir=data_dir,
        test_examples=TEST_EXAMPLES,
        corruptions=CORRUPTIONS,
        corruption_severities=SEVERITIES,
        architecture="wide_resnet",
        depth=10,
        width_multiplier=1,
        dropout_rate=0.1 if method == "dropout" else 0.0,  # as the binaries set it
    )


@pytest.fixture(scope="module")
def plain_wrn_parameters():
    """Trainable parameters of the plain WRN-10-1 for CIFAR-10."""
    from rank1_keras.models.wide_resnet import wide_resnet

    return _trainable_parameters(wide_resnet(10, 1, 10, (32, 32, 3)))


# Every method also trains end to end in the main-job test (test_training.py,
# Fashion-MNIST); on CIFAR-10 the default suite keeps rank-1 (the WRN with rank-1
# layers and per-member batch norm) and Packed-Ensembles, the others are slow (suite time).
@pytest.mark.parametrize(
    "method",
    [
        pytest.param("deterministic", marks=pytest.mark.slow),
        pytest.param("dropout", marks=pytest.mark.slow),
        pytest.param("ensemble", marks=pytest.mark.slow),
        pytest.param("batchensemble", marks=pytest.mark.slow),
        "rank1",
        "packed",
    ],
)
def test_cifar10_every_method(tmp_path, method, plain_wrn_parameters):
    output_dir = str(tmp_path / "run")
    settings = MethodSettings(method=method, ensemble_size=2)
    with tfds_mock(tmp_path) as data_dir:
        result = run_experiment("cifar10", settings, TINY_TRAINING, _cifar_options(data_dir, method), output_dir)
    check_result(
        result,
        output_dir,
        dataset="cifar10",
        method=method,
        num_classes=10,
        train_examples=MOCK_EXAMPLES,
        test_examples=TEST_EXAMPLES,
        models=2 if method == "ensemble" else 1,
        members=1 if method in ("deterministic", "dropout") else 2,
        ood=("cifar100",),
        shifts=[(c, s) for c in CORRUPTIONS for s in SEVERITIES],
    )
    assert result["architecture"] == "wide_resnet"
    assert result["ensemble_size"] == (1 if method in ("deterministic", "dropout") else 2)
    assert all(logs["replica_batch_size"] == BATCH for logs in result["final_train_logs"])
    if method in ("deterministic", "dropout"):  # MC dropout adds no weights
        assert result["parameters"] == plain_wrn_parameters
    elif method == "ensemble":
        assert result["parameters"] == 2 * plain_wrn_parameters
    elif method == "packed":
        # Width factor 2 over K = 2 members: each member is the plain network's width, a 2-member deep ensemble.
        assert result["parameters"] == 2 * plain_wrn_parameters
    else:  # shared weights plus the rank-1 factors
        assert plain_wrn_parameters < result["parameters"] < 2 * plain_wrn_parameters


def test_cifar100_deterministic(tmp_path):
    output_dir = str(tmp_path / "run")
    with tfds_mock(tmp_path) as data_dir:
        options = TaskOptions(
            data_dir=data_dir, test_examples=TEST_EXAMPLES, corruptions=CORRUPTIONS,
            corruption_severities=SEVERITIES, architecture="wide_resnet", depth=10, width_multiplier=1,
        )
        result = run_experiment("cifar100", MethodSettings(method="deterministic"), TINY_TRAINING, options, output_dir)
    # CIFAR-100: OOD is CIFAR-10, and there are no CIFAR-100 corruptions.
    check_result(
        result, output_dir, dataset="cifar100", method="deterministic", num_classes=100,
        train_examples=MOCK_EXAMPLES, test_examples=TEST_EXAMPLES, ood=("cifar10",),
    )


@pytest.mark.parametrize(
    "method", ["deterministic", pytest.param("rank1", marks=pytest.mark.slow)]  # rank-1 ResNet-50 traces ~1-2 min
)
def test_imagenet_resnet50(tmp_path, method):
    output_dir = str(tmp_path / "run")
    settings = MethodSettings(method=method, ensemble_size=2)
    with tfds_mock(tmp_path) as data_dir:
        options = TaskOptions(
            data_dir=data_dir, test_examples=TEST_EXAMPLES, architecture="resnet50", width_multiplier=1 / 16,
            image_size=32,
        )
        result = run_experiment("imagenet2012", settings, TINY_TRAINING, options, output_dir)
    check_result(
        result, output_dir, dataset="imagenet2012", method=method, num_classes=1000,
        train_examples=MOCK_EXAMPLES, test_examples=TEST_EXAMPLES, members=2 if method == "rank1" else 1,
    )
    assert result["architecture"] == "resnet50"
    assert result["settings"]["task"]["image_size"] == 32


def test_tfds_task_counts_the_examples_without_split_metadata(tmp_path):
    with tfds_mock(tmp_path) as data_dir:
        task = load_task("cifar10", TaskOptions(data_dir=data_dir, corruptions=(), ood=False))
    assert task.train.num_examples == MOCK_EXAMPLES


# --------------------------------------------------------------------------
# MIMIC from CSV files.
# --------------------------------------------------------------------------


def _write_mimic(data_dir, seed=0):
    """40/10/20 stays of 3 features and 2-9 steps; mortality = mean of feature 0 > 0."""
    rng = np.random.default_rng(seed)
    counts = {}
    for split, count in (("train", 40), ("validation", 10), ("test", 20)):
        labels = np.arange(count) % 2  # both classes in every split
        sequences = []
        for label in labels:
            steps = int(rng.integers(2, 10))
            sequence = rng.normal(size=(steps, 3))
            sequence[:, 0] = np.abs(sequence[:, 0]) * (1.0 if label else -1.0) + (0.5 if label else -0.5)
            if steps > 3:
                sequence[1, 2] = np.nan  # a missing cell
            sequences.append(sequence)
        write_mimic_split(data_dir, split, sequences, labels.tolist(),
                          feature_names=["heart_rate", "glucose", "lactate"])
        counts[split] = count
    return counts


@pytest.mark.parametrize("method", ["batchensemble", "rank1"])
def test_mimic(tmp_path, method):
    data_dir, output_dir = str(tmp_path / "mimic"), str(tmp_path / "run")
    counts = _write_mimic(data_dir)
    options = TaskOptions(data_dir=data_dir, lstm_units=8)
    training = TrainingSettings(
        train_epochs=3, per_replica_batch_size=BATCH, base_learning_rate=1e-2, optimizer="adam",
        lr_warmup_epochs=0.0, lr_decay_epochs=(), kl_annealing_epochs=1.0, verbose=0,
    )
    settings = MethodSettings(method=method, ensemble_size=2, random_sign_init=-0.5)
    result = run_experiment("mimic", settings, training, options, output_dir)
    check_result(
        result, output_dir, dataset="mimic", method=method, num_classes=2, train_examples=counts["train"],
        test_examples=counts["test"], members=2, validation=True,
    )
    assert result["architecture"] == "lstm"
    assert len(result["final_train_logs"][0]) and result["final_train_logs"][0]["replica_batch_size"] == BATCH
    # Two classes: the task and the trained (checkpointed) output layer.
    task = load_task("mimic", options)
    assert task.num_classes == 2 and task.build_plain().output_shape == (None, 2)
    header = read_header(os.path.join(output_dir, "checkpoints", "ckpt-00003.npz"))
    assert any(shape[-1:] == [2] for _, shape in header["model"]), header["model"]
    # Predictions are 2-class distributions: the entropy is at most log 2.
    assert result["predictive_entropy"] <= math.log(2) + 1e-6


# --------------------------------------------------------------------------
# Embedded time series.
# --------------------------------------------------------------------------


def test_japanese_vowels_mc_dropout(tmp_path):
    output_dir = str(tmp_path / "run")
    options = TaskOptions(lstm_units=16, dropout_rate=0.1, validation_percent=10.0)
    training = TrainingSettings(
        train_epochs=1, per_replica_batch_size=32, base_learning_rate=1e-3, optimizer="adam",
        lr_warmup_epochs=0.0, lr_decay_epochs=(), verbose=0,
    )
    settings = MethodSettings(method="dropout", dropout_rate=0.1, num_eval_samples=3)
    result = run_experiment("japanese_vowels", settings, training, options, output_dir)
    train_examples = result["train_examples"]
    assert train_examples > 0 and result["test_examples"] > 0
    check_result(
        result, output_dir, dataset="japanese_vowels", method="dropout", num_classes=7,
        train_examples=train_examples, test_examples=result["test_examples"], members=3,
        ood=("held_out_speakers",), validation=True,
    )
    assert result["eval_samples"] == 3 and result["ensemble_size"] == 1
    assert result["mutual_information"] > 0.0  # the 3 dropout passes differ
    assert "disagreement" in result


# --------------------------------------------------------------------------
# The binaries on bad input, as subprocesses.
# --------------------------------------------------------------------------

# name: (module, flags, exit code, substrings of the last stderr line).
# `{out}` is the case's output_dir, `{tmp}` its temporary directory.
BAD_INPUT = {
    "unknown_method": (
        "baselines.imagenet", ["--method=bogus_method"], 2,
        ["flag --method=bogus_method", "value should be one of", "rank1"],
    ),
    "unknown_dataset": (
        "baselines.cifar", ["--dataset=mnist"], 2, ["flag --dataset=mnist", "value should be one of", "cifar10"],
    ),
    "missing_data_dir": (
        "baselines.cifar", ["--data_dir={tmp}/nowhere", "--depth=10", "--width_multiplier=1"], 1,
        ["is not prepared in data_dir='{tmp}/nowhere'", "does not exist", "tfds build"],
    ),
    "flagfile_unknown_flag": (
        "baselines.compare", ["--flagfile={tmp}/bad.cfg"], 2, ["Unknown command line flag 'bogus_flag'"],
    ),
    "garbage_pretrained_weights": (
        "baselines.embedded",
        ["--dataset=digits", "--method=bella", "--pretrained_checkpoint={tmp}/garbage.weights.h5", "--noood",
         "--corruptions=", "--train_epochs=1"],
        1, ["pretrained_checkpoint={tmp}/garbage.weights.h5 could not be loaded", "deterministic run"],
    ),
    "output_dir_is_a_file": (
        "baselines.embedded", ["--dataset=digits", "--method=deterministic"], 1,
        ["--output_dir={out} is a file, not a directory"],
    ),
    # Checkpoints larger than `ulimit -f` (an unprivileged stand-in for a full disk: the same OSError path).
    "file_size_limit": ("baselines.embedded", ["--dataset=digits"], 1, ["cannot write or read {out}", "errno 27", "ulimit -f"]),
    # In a user and mount namespace (`unshare -r -m`): output_dir on a tmpfs that is read-only, or full.
    "read_only_file_system": ("baselines.embedded", ["--dataset=digits"], 1, ["cannot write or read {out}", "errno 30", "read-only"]),
    "full_disk": ("baselines.embedded", ["--dataset=digits"], 1, ["cannot write or read {out}", "errno 28", "free some space"]),
    # checkpoints/ alone read-only (a tmpfs mounted there): found before training, not at the first save.
    "read_only_checkpoints_folder": (
        "baselines.embedded", ["--dataset=digits"], 1,
        ["cannot write or read {out}/checkpoints/.write-check", "errno 30", "read-only"],
    ),
    # Another process holds the directory's lock (a real process, started first).
    "output_dir_in_use": (
        "baselines.embedded", ["--dataset=digits", "--seed=1"], 1,
        ["--output_dir={out} is in use by a training run: pid {holder}", "wait for it to finish"],
    ),
    # Refused before anything is written: a fresh output_dir is not even created.
    "batch_larger_than_the_data": (
        "baselines.embedded", ["--dataset=digits", "--per_core_batch_size=100000", "--noood", "--corruptions="], 1,
        ["per_core_batch_size=100000 x 1 replicas = 100000 exceeds the"],
    ),
    "bella_garbage_weights_fresh_output_dir": (
        "baselines.embedded",
        ["--dataset=digits", "--method=bella", "--pretrained_checkpoint={tmp}/garbage.weights.h5", "--noood",
         "--corruptions="],
        1, ["pretrained_checkpoint={tmp}/garbage.weights.h5 could not be loaded"],
    ),
}
# Cases whose output_dir starts empty (they reach training: a filled one would hold a fake checkpoint).
EMPTY_OUTPUT_DIR = {"file_size_limit", "read_only_file_system", "full_disk", "read_only_checkpoints_folder"}
# Cases whose output_dir does not exist: it must not exist afterwards either.
FRESH_OUTPUT_DIR = {"batch_larger_than_the_data", "bella_garbage_weights_fresh_output_dir"}
FILE_SIZE_LIMIT = 256 * 1024  # bytes; a digits checkpoint (630 KiB) is larger, run_settings.json much smaller
# tmpfs sizes: the write check and run_settings.json fit, the first checkpoint does not.
NAMESPACE_MOUNTS = {"read_only_file_system": "ro,size=1m", "full_disk": "size=256k",
                    "read_only_checkpoints_folder": "ro,size=1m"}
# Where the tmpfs goes, under output_dir (default: output_dir itself).
MOUNT_POINTS = {"read_only_checkpoints_folder": "checkpoints"}

# A finished two-epoch digits run; each case below then runs on its own copy of it.
DIGITS_FLAGS = [
    "--dataset=digits", "--method=deterministic", "--train_epochs=2", "--steps_per_epoch=2",
    "--per_core_batch_size=16", "--corruptions=", "--noood", "--verbose=0",
]
# name: (module, flags, exit code, substrings of the last stderr line); `{run}` is the copy.
ON_A_FINISHED_RUN = {
    # The rerun: new settings must not relabel the old weights.
    "rerun_with_other_settings": (
        "baselines.embedded",
        DIGITS_FLAGS + ["--base_learning_rate=0.5", "--prior_stddev=0.7", "--train_examples=150", "--output_dir={run}"],
        1, ["holds a run trained with other settings (run_settings.json)", "base_learning_rate",
            "prior_stddev: 0.1 in the run, 0.7 now", "train_examples: 0 in the run, 150 now", "fresh --output_dir"],
    ),
    # Another method keeps its checkpoints elsewhere (member_<k>/): the run's own settings refuse it.
    "rerun_with_another_method": (
        "baselines.embedded", DIGITS_FLAGS + ["--method=ensemble", "--output_dir={run}"], 1,
        ["holds a run trained with other settings", "method: deterministic in the run, ensemble now"],
    ),
    # The run's checkpoints deleted, results kept (see CHECKPOINTS_DELETED).
    "rerun_without_checkpoints_with_another_seed": (
        "baselines.embedded", DIGITS_FLAGS + ["--seed=1", "--output_dir={run}"], 1,
        ["holds a run trained with other settings", "seed: 0 in the run, 1 now"],
    ),
    "export_over_the_run": (
        "baselines.export", ["--checkpoint={run}", "--output_dir={run}", "--overwrite"], 1,
        ["--output_dir={run} exists and is not an earlier export"],
    ),
}
# Cases on a copy of the finished run whose ckpt-*.npz files were deleted.
CHECKPOINTS_DELETED = {"rerun_without_checkpoints_with_another_seed"}
TRUNCATED = "truncated_newest_checkpoint"  # resumes from the checkpoint before, keeping the damaged one
BAD_CASES = sorted(BAD_INPUT) + sorted(ON_A_FINISHED_RUN)


def _namespaces_work():
    """Whether `unshare -r -m` may mount a tmpfs here (user namespaces allowed)."""
    try:
        probe = subprocess.run(
            ["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
            capture_output=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _snapshot(directory):
    """{relative path: bytes} of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as stream:
                files[os.path.relpath(path, directory)] = stream.read()
    return files


class _Binary:
    """One `python -m <module>` run in the background, output to files.

    `file_size_limit` sets `ulimit -f` (bytes); `mount` runs it in a user and
    mount namespace with a tmpfs of those options on `output_dir`.
    """

    def __init__(self, directory, module, flags, file_size_limit=None, mount=None, mount_point=None):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        self.command = [sys.executable, "-m", module, *flags]
        if mount is not None:
            script = f'mount -t tmpfs -o "{mount}" tmpfs "$1" && shift && exec "$@"'
            self.command = ["unshare", "-r", "-m", "sh", "-c", script, "sh", mount_point, *self.command]

        def limit_file_size():
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

        # Closed in `wait`: the files outlive this call, the process writes to them.
        self._stdout = open(os.path.join(directory, "stdout.txt"), "wb")  # noqa: SIM115
        self._stderr = open(os.path.join(directory, "stderr.txt"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command, stdout=self._stdout, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            preexec_fn=limit_file_size if file_size_limit else None,
        )

    def wait(self, timeout=600):
        returncode = self.process.wait(timeout)
        self._stdout.close()
        self._stderr.close()
        with open(os.path.join(self.directory, "stdout.txt"), encoding="utf-8", errors="replace") as stream:
            stdout = stream.read()
        with open(os.path.join(self.directory, "stderr.txt"), encoding="utf-8", errors="replace") as stream:
            stderr = stream.read()
        return returncode, stdout, stderr

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


def _fill_output_dir(output_dir):
    """Files a previous run would have left: results and a (fake) checkpoint."""
    os.makedirs(os.path.join(output_dir, "checkpoints"))
    files = {
        "results.json": json.dumps({"accuracy": 0.5, "method": "previous"}).encode(),
        "results.md": b"| method |\n|---|\n| previous |\n",
        os.path.join("checkpoints", "ckpt-00001.npz"): bytes(range(256)) * 8,
        os.path.join("checkpoints", "latest"): b"ckpt-00001.npz",
    }
    for name, content in files.items():
        with open(os.path.join(output_dir, name), "wb") as stream:
            stream.write(content)


class BadRuns:
    """Starts every bad-input case at once; the cases on a finished run once that run is done."""

    def __init__(self, base):
        self.base = str(base)
        self.before, self.runs = {}, {}
        self.namespaces = _namespaces_work()
        self.holder = None
        with open(os.path.join(self.base, "bad.cfg"), "w", encoding="utf-8") as stream:
            stream.write("--dataset=digits\n--methods=deterministic\n--bogus_flag=3\n")
        with open(os.path.join(self.base, "garbage.weights.h5"), "wb") as stream:
            stream.write(bytes(range(256)) * 4)
        self.output_dirs = {case: os.path.join(self.base, case, "output") for case in BAD_CASES + [TRUNCATED]}
        # The finished run goes first: the cases on it wait for it.
        self.finished_run = os.path.join(self.base, "finished_run")
        self._first = _Binary(
            os.path.join(self.base, "finished_run_logs"), "baselines.embedded",
            DIGITS_FLAGS + [f"--output_dir={self.finished_run}"],
        )
        for case, (module, flags, _, _) in BAD_INPUT.items():
            if case in NAMESPACE_MOUNTS and not self.namespaces:
                continue
            output_dir = self.output_dirs[case]
            if case == "output_dir_is_a_file":
                os.makedirs(os.path.dirname(output_dir))
                with open(output_dir, "wb") as stream:
                    stream.write(b"my notes")
            elif case in EMPTY_OUTPUT_DIR:
                os.makedirs(os.path.join(output_dir, MOUNT_POINTS.get(case, "")))
            elif case not in FRESH_OUTPUT_DIR:
                _fill_output_dir(output_dir)
            self.before[case] = _snapshot(output_dir)
            if case == "output_dir_in_use":
                from tests.test_directory_lock import start_holder

                self.holder = start_holder(output_dir)
            flags = [flag.format(tmp=self.base) for flag in flags] + [f"--output_dir={output_dir}"]
            self.runs[case] = _Binary(
                os.path.join(self.base, case, "logs"), module, flags,
                file_size_limit=FILE_SIZE_LIMIT if case == "file_size_limit" else None,
                mount=NAMESPACE_MOUNTS.get(case), mount_point=os.path.join(output_dir, MOUNT_POINTS.get(case, "")),
            )
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._dependents = self._executor.submit(self._start_on_the_finished_run)

    def _start_on_the_finished_run(self):
        import shutil

        returncode, stdout, stderr = self._first.wait()
        assert returncode == 0, f"the first digits run failed:\n{stdout[-2000:]}\n{stderr[-3000:]}"
        assert os.path.exists(os.path.join(self.finished_run, "results.json"))
        runs = {}
        for case in sorted(ON_A_FINISHED_RUN) + [TRUNCATED]:
            shutil.copytree(self.finished_run, self.output_dirs[case])
        for case in CHECKPOINTS_DELETED:
            checkpoint_dir = os.path.join(self.output_dirs[case], "checkpoints")
            for name in os.listdir(checkpoint_dir):
                if name.startswith("ckpt-"):
                    os.remove(os.path.join(checkpoint_dir, name))
        newest = os.path.join(self.output_dirs[TRUNCATED], "checkpoints", "ckpt-00002.npz")
        with open(newest, "r+b") as stream:
            stream.truncate(os.path.getsize(newest) // 2)
        for case in sorted(ON_A_FINISHED_RUN) + [TRUNCATED]:
            self.before[case] = _snapshot(self.output_dirs[case])
            module, flags = ON_A_FINISHED_RUN.get(case, ("baselines.embedded", DIGITS_FLAGS + ["--output_dir={run}"]))[:2]
            flags = [flag.format(run=self.output_dirs[case]) for flag in flags]
            runs[case] = _Binary(os.path.join(self.base, case, "logs"), module, flags)
        return runs

    def result(self, case):
        """(exit code, stdout, stderr, files before, files after) of a case."""
        if case in NAMESPACE_MOUNTS and not self.namespaces:
            pytest.skip("user namespaces (unshare -r -m) are not allowed on this machine")
        run = self._dependents.result(timeout=600)[case] if case in self._dependent_cases else self.runs[case]
        returncode, stdout, stderr = run.wait()
        after = _snapshot(self.output_dirs[case]) if case not in NAMESPACE_MOUNTS else {}
        if case in MOUNT_POINTS:  # what lies outside the mount is checked
            after = _snapshot(self.output_dirs[case])
        return returncode, stdout, stderr, self.before[case], after

    _dependent_cases = set(ON_A_FINISHED_RUN) | {TRUNCATED}

    def stop(self):
        for run in self.runs.values():
            run.stop()
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
        self._first.stop()
        if self._dependents.exception(timeout=600) is None:  # else the first run failed: its test says so
            for run in self._dependents.result().values():
                run.stop()
        self._executor.shutdown()


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    runs = BadRuns(tmp_path_factory.mktemp("bad_input"))
    yield runs
    runs.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_binaries_early(request):
    """Starts the subprocesses before the in-process tests when any bad-input test is selected."""
    if any(
        getattr(item, "module", None) is request.module and "bad_runs" in getattr(item, "fixturenames", ())
        for item in request.session.items
    ):
        request.getfixturevalue("bad_runs")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_with_one_error_line(bad_runs, case):
    returncode, stdout, stderr, before, after = bad_runs.result(case)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, f"no stderr; stdout:\n{stdout[-2000:]}"
    last = lines[-1]
    assert last.startswith("error:"), stderr[-3000:]
    module, _, expected_code, substrings = {**BAD_INPUT, **ON_A_FINISHED_RUN}[case]
    output_dir = bad_runs.output_dirs[case]
    holder = bad_runs.holder.pid if bad_runs.holder is not None else None
    substrings = [s.format(tmp=bad_runs.base, out=output_dir, run=output_dir, holder=holder) for s in substrings]
    assert returncode == expected_code, stderr[-3000:]
    for substring in substrings:
        assert substring in last, (substring, last)
    assert "Traceback" not in stderr
    # Nothing that was in output_dir changed (or went away).
    assert set(before) <= set(after)
    for name, content in before.items():
        assert after[name] == content, f"{name} changed"
    if case == "output_dir_is_a_file":
        with open(output_dir, "rb") as stream:
            assert stream.read() == b"my notes"
    if case in FRESH_OUTPUT_DIR:  # refused before anything was written: not even the directory
        assert not os.path.exists(output_dir)
    if case == "file_size_limit":  # the failed write left no partial file behind
        assert not [name for name in after if os.path.basename(name).startswith(".tmp-")], sorted(after)


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(bad_runs):
    returncode, stdout, stderr, before, after = bad_runs.result(TRUNCATED)
    assert returncode == 0, stderr[-3000:]
    output_dir = bad_runs.output_dirs[TRUNCATED]
    newest = os.path.join(output_dir, "checkpoints", "ckpt-00002.npz")
    assert f"skipped checkpoint {newest}" in stderr and f"kept as {newest}.unreadable" in stderr
    # The damaged file is kept, byte for byte; epoch 2 was trained again from ckpt-00001.
    assert after[os.path.join("checkpoints", "ckpt-00002.npz.unreadable")] == before[os.path.join("checkpoints", "ckpt-00002.npz")]
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as stream:
        assert json.load(stream)["resumed_from_epoch"] == [1]
    assert read_header(newest)["epoch"] == 2
