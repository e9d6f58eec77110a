"""Every flagfile in configs/ parses with its binary and sets exactly what it says.

The binaries define the same flag names, so each binary's flagfiles are parsed
in a subprocess of their own; unknown or mistyped flags fail there.
"""

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
BINARIES = {
    "cifar10": "baselines.cifar",
    "cifar100": "baselines.cifar",
    "imagenet": "baselines.imagenet",
    "mimic": "baselines.mimic",
}

PARSER = r"""
import importlib, json, sys
from absl import flags
importlib.import_module(sys.argv[1])
report = {}
for path in sys.argv[2:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["binary", f"--flagfile={path}", "--output_dir=/tmp/unused"])
    written = dict(line.strip()[2:].split("=", 1) for line in open(path) if line.startswith("--"))
    report[path] = {
        name: [flags.FLAGS[name].present, flags.FLAGS[name].value == flags.FLAGS[name].parser.parse(text)]
        for name, text in written.items()
    }
print(json.dumps(report))
"""


def _binary_for(path):
    directory = os.path.basename(os.path.dirname(path))
    if directory == "embedded":
        with open(path) as stream:
            return "baselines.compare" if "--methods=" in stream.read() else "baselines.embedded"
    return BINARIES[directory]


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.cfg")))


def test_every_paper_row_and_demo_has_a_config():
    names = {os.path.relpath(path, os.path.join(ROOT, "configs")) for path in CONFIGS}
    for dataset in ("cifar10", "cifar100"):
        for row in (
            "deterministic", "dropout", "deep_ensemble", "batchensemble", "rank1_gaussian", "rank1_cauchy", "lpbnn",
            "bella", "bella_svgd",
        ):
            assert f"{dataset}/{row}.cfg" in names
    for row in ("deterministic", "deep_ensemble", "batchensemble", "rank1", "lpbnn", "bella"):
        assert f"imagenet/{row}.cfg" in names and f"mimic/{row}.cfg" in names
    assert any(name.startswith("embedded/") and name.endswith("_demo.cfg") for name in names)


def test_configs_parse_and_set_every_value():
    by_binary = {}
    for path in CONFIGS:
        by_binary.setdefault(_binary_for(path), []).append(path)
    processes = {
        binary: subprocess.Popen(
            [sys.executable, "-c", PARSER, binary, *paths], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        for binary, paths in by_binary.items()
    }
    for binary, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{binary}: {stderr[-2000:]}"
        report = json.loads(stdout.strip().splitlines()[-1])
        assert sorted(report) == sorted(by_binary[binary])
        for path, values in report.items():
            assert values, path
            for name, (present, equal) in values.items():
                assert present and equal, f"{path}: --{name}"


def test_a_flagfile_with_an_unknown_flag_fails_with_one_line(tmp_path):
    flagfile = tmp_path / "bad.cfg"
    flagfile.write_text("--dataset=cifar10\n--learning_rte=0.1\n")
    process = subprocess.run(
        [sys.executable, "-m", "baselines.cifar", f"--flagfile={flagfile}", f"--output_dir={tmp_path}/out"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300,
    )
    assert process.returncode != 0
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "learning_rte" in last
    assert not (tmp_path / "out").exists()


DEFAULTS_PROBE = r"""
import json, sys
from absl import flags
from baselines import common, embedded
report = {}
for name, argv in json.loads(sys.argv[1]).items():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["binary", *argv, "--output_dir=/tmp/unused"])
    method, training, task = common.settings_from_flags()
    report[name] = {
        "train_epochs": training.train_epochs, "batch": training.per_replica_batch_size,
        "kl_annealing_epochs": training.kl_annealing_epochs, "num_eval_samples": method.num_eval_samples,
        "base_learning_rate": training.base_learning_rate,
    }
report["table"] = embedded.DATASET_DEFAULTS
print(json.dumps(report))
"""


def test_embedded_binary_takes_each_data_sets_converging_defaults_for_unset_flags(tmp_path):
    flagfile = tmp_path / "mine.cfg"
    flagfile.write_text("--train_epochs=3\n")
    cases = {
        "digits": ["--dataset=digits"],
        "digits_given": ["--dataset=digits", "--train_epochs=2", "--per_core_batch_size=16"],
        "digits_flagfile": ["--dataset=digits", f"--flagfile={flagfile}"],
        "gunpoint": ["--dataset=gunpoint"],
    }
    completed = subprocess.run(
        [sys.executable, "-c", DEFAULTS_PROBE, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    digits = report["table"]["digits"]
    assert report["digits"]["train_epochs"] == digits["train_epochs"] == 20
    assert report["digits"]["batch"] == 64 and report["digits"]["num_eval_samples"] == 4
    assert report["digits"]["base_learning_rate"] == 1e-3 * 64 / 64  # per base_batch_size 64
    # Flags given on the command line or in a flagfile win over the data set's defaults.
    assert (report["digits_given"]["train_epochs"], report["digits_given"]["batch"]) == (2, 16)
    assert report["digits_flagfile"]["train_epochs"] == 3 and report["digits_flagfile"]["batch"] == 64
    # A data set without its own defaults keeps the binary's.
    assert (report["gunpoint"]["train_epochs"], report["gunpoint"]["batch"]) == (2, 128)
    # The defaults are the comparison flagfiles' settings (one source of truth for a converged run).
    for dataset, defaults in report["table"].items():
        matches = [path for path in CONFIGS if f"--dataset={dataset}\n" in open(path).read() and "--methods=" in open(path).read()]
        assert matches, dataset
        written = dict(line.strip()[2:].split("=", 1) for line in open(matches[0]) if line.startswith("--"))
        for name, value in defaults.items():
            parse = str if isinstance(value, str) else float
            assert parse(written[name]) == parse(value), (dataset, name, written[name], value)
