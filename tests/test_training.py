"""Rank-1 models learn on real data with model.fit, and KL annealing does what it says."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rank1_keras import metrics
from rank1_keras.callbacks import KLAnnealing, rank1_layers
from rank1_keras.data import load_fashion_mnist
from rank1_keras.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR
from rank1_keras.losses import AverageNLL
from rank1_keras.models import small_cnn
from rank1_keras.methods.settings import MethodSettings, build_method_models

pytestmark = pytest.mark.skipif(
    not os.path.isdir(DEFAULT_FASHION_MNIST_DIR),
    reason="needs Debian's dataset-fashion-mnist (scripts/setup.sh installs it)",
)

ENSEMBLE_SIZE = 2
TRAIN, TEST, BATCH = 3000, 1000, 50


class _RecordWeights(keras.callbacks.Callback):
    """Records the KL weight each step sees (runs after KLAnnealing's update)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append(float(rank1_layers(self.model)[0].kl_weight.numpy()))


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x_train, y_train = (a[:TRAIN] for a in load_fashion_mnist(split="train"))
    x_test, y_test = (a[:TEST] for a in load_fashion_mnist(split="test"))
    settings = MethodSettings("rank1", ensemble_size=ENSEMBLE_SIZE, train_size=TRAIN, prior_stddev=0.5,
                              random_sign_init=-0.5)
    (model,) = build_method_models(small_cnn, settings)
    model.compile(keras.optimizers.Adam(2e-3), AverageNLL(ENSEMBLE_SIZE))
    untrained = model.predict(x_test, batch_size=200, verbose=0)  # the converted model averages its members
    recorder = _RecordWeights()
    history = model.fit(
        x_train, y_train, batch_size=BATCH, epochs=3, callbacks=[KLAnnealing(2), recorder], verbose=0
    )
    probabilities = model.predict(x_test, batch_size=200, verbose=0)
    return dict(model=model, history=history, recorder=recorder, x_test=x_test, y_test=y_test,
                untrained=untrained, probabilities=probabilities)


def test_rank1_model_learns_fashion_mnist(trained):
    accuracy = metrics.accuracy(trained["probabilities"].astype("float64"), trained["y_test"])
    untrained_accuracy = metrics.accuracy(trained["untrained"].astype("float64"), trained["y_test"])
    # Chance is 0.10; 3 short epochs on 3,000 examples reach ~0.75.
    assert accuracy > 0.65, accuracy
    assert accuracy > untrained_accuracy + 0.4
    nll = metrics.negative_log_likelihood(trained["probabilities"].astype("float64"), trained["y_test"])
    assert nll < 1.0


def test_kl_weight_follows_the_linear_schedule(trained):
    steps = TRAIN // BATCH
    expected = [min(1.0, (epoch + (step + 1) / steps) / 2) for epoch in range(3) for step in range(steps)]
    np.testing.assert_allclose(trained["recorder"].weights, expected, rtol=1e-6)
    assert trained["history"].history["kl_weight"] == [0.5, 1.0, 1.0]


def test_kl_loss_is_the_weight_times_the_closed_form_kl(trained):
    """The model's added losses equal kl_weight x sum_layers KL(q || p) / N."""
    model = trained["model"]
    layers = rank1_layers(model)
    expected_kl = 0.0
    for layer in layers:
        for factor in layer.member_factors.values():
            if factor.regularizer is None:
                continue
            loc = factor.initializer.loc.numpy().astype("float64")
            scale = tf.nn.softplus(factor.initializer.parameters["unconstrained_scale"]).numpy().astype("float64")
            prior = factor.regularizer
            kl = np.log(prior.stddev / scale) + (scale**2 + (loc - prior.mean) ** 2) / (2 * prior.stddev**2) - 0.5
            expected_kl += prior.scale_factor * kl.sum()
    for weight in (0.25, 1.0):
        for layer in layers:
            layer.kl_weight.assign(weight)
        model(trained["x_test"][:4], training=True)
        np.testing.assert_allclose(float(tf.add_n(model.losses)), weight * expected_kl, rtol=1e-4)


def test_comparison_binary_prints_one_table_and_keeps_results_on_failure(tmp_path):
    """The README's main job (baselines.compare), on a slice of Fashion-MNIST, plus LP-BNN and Bella."""
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "baselines.compare", "--flagfile=configs/embedded/fashion_mnist_demo.cfg",
               "--train_epochs=1", "--train_examples=640", "--test_examples=256", "--shift_examples=64",
               "--corruption_severities=1,5", "--per_core_batch_size=64", "--ensemble_size=2", "--num_eval_samples=2",
               "--verbose=0", f"--output_dir={output_dir}",
               "--methods=deterministic,dropout,ensemble,batchensemble,rank1,lpbnn,packed,bella",
               "--training_batch=split"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    assert completed.returncode == 0, completed.stderr[-3000:]
    comparison = json.loads((output_dir / "comparison.json").read_text())
    methods = ["deterministic", "dropout", "ensemble", "batchensemble", "rank1", "lpbnn", "packed", "bella"]
    assert [r["method"] for r in comparison["results"]] == methods
    table = completed.stdout.split("| method |")[1]
    header_line = next(line for line in completed.stdout.splitlines() if line.startswith("| method |"))
    gap_column = [cell.strip() for cell in header_line.split(" | ")].index("NLL gap closed")  # the share of the deep ensemble's NLL gain each method gets
    gaps = {line.split(" | ")[0].strip("| "): line.split(" | ")[gap_column]
            for line in table.splitlines()[2:] if line.startswith("| ")}
    nll = {row["method"]: row["nll"] for row in comparison["results"]}
    if nll["ensemble"] < nll["deterministic"]:
        assert gaps["deterministic"] == "0%" and gaps["ensemble"] == "100%"
        expected = (nll["deterministic"] - nll["rank1"]) / (nll["deterministic"] - nll["ensemble"])
        assert gaps["rank1"] == f"{expected:.0%}"
    else:  # no gap to close on this slice: the column says so rather than dividing by it
        assert set(gaps.values()) == {"-"}
    for row in comparison["results"]:
        assert f"| {row['method']} |" in table
        assert 0.0 <= row["ece"] <= 1.0 and row["nll"] > 0 and 0.2 < row["accuracy"] <= 1.0
        assert 0.0 <= row["ood_auroc"] <= 1.0 and row["temperature"] > 0
        assert sorted(k for k in row if k.startswith("shift/")) == sorted(
            f"shift/{c}/{s}/{m}" for c in ("gaussian_noise", "gaussian_blur", "contrast") for s in (1, 5)
            for m in ("accuracy", "nll", "ece")
        )
        per_method = json.loads((output_dir / row["method"] / "results.json").read_text())
        assert per_method["accuracy"] == row["accuracy"]
    by_method = {row["method"]: row for row in comparison["results"]}
    assert by_method["ensemble"]["parameters"] == 2 * by_method["deterministic"]["parameters"]
    # --training_batch reaches every ensemble, and each run records the batch it trained on.
    for method in ("batchensemble", "rank1", "lpbnn", "packed", "dropout"):
        assert by_method[method]["settings"]["method"]["training_batch"] == "split"
    assert by_method["ensemble"]["settings"]["method"]["training_batch"] == "tile"
    assert "disagreement" not in by_method["deterministic"] and by_method["ensemble"]["disagreement"] > 0
    # Bella trains low-rank perturbations of the deterministic network the job trained first.
    bella = by_method["bella"]
    assert bella["settings"]["method"]["pretrained_checkpoint"] == str(output_dir / "deterministic")
    assert 0 < bella["parameters"] < by_method["deterministic"]["parameters"]
    assert bella["trainable_fraction"] == bella["parameters"] / by_method["deterministic"]["parameters"]
    # A run that fails (unknown method) leaves the previous results untouched.
    before = (output_dir / "comparison.json").read_bytes()
    failed = subprocess.run(command + ["--methods=rank1,bogus"], capture_output=True, text=True, env=env, cwd=root)
    assert failed.returncode != 0 and failed.stderr.strip().splitlines()[-1].startswith("error: --methods entries")
    assert (output_dir / "comparison.json").read_bytes() == before


def test_converter_example_runs_and_learns():
    """The README's converter walk-through (examples/convert_models.py) runs and learns."""
    command = [sys.executable, "-m", "examples.convert_models", "--train_examples=1500", "--test_examples=500",
               "--ensemble_size=2", "--noresnet"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "conv2d  Conv2D -> Conv2DRank1" in completed.stdout
    accuracy = float(completed.stdout.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.5, completed.stdout
