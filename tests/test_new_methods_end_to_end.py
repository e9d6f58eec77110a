"""End-to-end tests of LP-BNN and Bella: `run_experiment` on every task kind, and the binaries.

* In process, per task kind (CIFAR-10 under `tfds.testing.mock_data` with a
  WRN-10-1, MIMIC from CSV files, the embedded JapaneseVowels LSTM task): a
  deterministic run trained once (module-scoped), then LP-BNN (K=2),
  Bella-ensemble and Bella-SVGD (2 particles each) starting from it. Checked:
  the shared result/file checks of `tests/test_binaries.py`, Bella's
  trainable fraction against a hand count, Bella's frozen weights (low-rank
  W0 and bias, every unconverted layer, batch-norm statistics included) equal
  to the deterministic run's final weights, and trained perturbations that
  are non-zero and differ between particles; LP-BNN's VAE term in the loss
  and `latent_dim` in its layers.
* Unit level: `member_stream_dataset` gives every stream its own order of the
  whole epoch; LP-BNN's `latent_loss_weight` scales the loss the loop trains on.
* As subprocesses (started in the background before the in-process tests):
  `baselines.embedded --method=bella` without `--pretrained_checkpoint`,
  `baselines.embedded --method=lpbnn`, and `baselines.compare` with bella
  listed before deterministic.
"""

import contextlib
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from baselines.export import load_trained_models
from rank1_keras.layers.latent_posterior import LatentPosteriorMixin
from rank1_keras.layers.low_rank import LowRankEnsembleMixin, low_rank_layers
from rank1_keras.methods.settings import MethodSettings, build_method_models
from rank1_keras.runs.checkpoint import read_header
from rank1_keras.tensorflow.training.experiment import run_experiment
from rank1_keras.tensorflow.training.loop import TrainData, TrainingSettings, epoch_dataset, member_stream_dataset, train
from rank1_keras.tensorflow.training.tasks import TaskOptions, plain_builder
from tests.test_binaries import (
    BATCH,
    CORRUPTIONS,
    MOCK_EXAMPLES,
    SEVERITIES,
    TEST_EXAMPLES,
    TINY_TRAINING,
    _Binary,
    _cifar_options,
    _write_mimic,
    check_result,
    tfds_mock,
)

K = 2  # LP-BNN members and Bella particles
BELLA_RANK = 2
LATENT_DIM = 3  # not the default 32: it must reach the layers
LATENT_LOSS_WEIGHT = 0.5


# --------------------------------------------------------------------------
# Task kinds: how to run one experiment and what `check_result` expects.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class TaskKind:
    dataset: str
    options: object  # method name -> context manager yielding TaskOptions
    expected: dict  # check_result keyword arguments
    det_dir: str = None
    det_result: dict = None

    def run(self, settings, output_dir):
        with self.options(settings.method) as options:
            return run_experiment(self.dataset, settings, TINY_TRAINING, options, output_dir)


def _cifar10(tmp_path_factory):
    @contextlib.contextmanager
    def options(method):
        with tfds_mock(tmp_path_factory.mktemp("cifar10")) as data_dir:
            yield _cifar_options(data_dir, method)

    return TaskKind(
        "cifar10",
        options,
        dict(
            num_classes=10,
            train_examples=MOCK_EXAMPLES,
            test_examples=TEST_EXAMPLES,
            ood=("cifar100",),
            shifts=[(c, s) for c in CORRUPTIONS for s in SEVERITIES],
        ),
    )


def _mimic(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("mimic") / "data")
    counts = _write_mimic(data_dir)
    task_options = TaskOptions(data_dir=data_dir, lstm_units=8)
    return TaskKind(
        "mimic",
        lambda method: contextlib.nullcontext(task_options),
        dict(num_classes=2, train_examples=counts["train"], test_examples=counts["test"], validation=True),
    )


def _japanese_vowels(tmp_path_factory):
    # All 210 training series: the training set is sorted by class, so
    # `train_examples=N` would drop classes (and change the model's output).
    # Training is 2 steps of 8 whatever its size.
    task_options = TaskOptions(lstm_units=8)
    return TaskKind(
        "japanese_vowels",
        lambda method: contextlib.nullcontext(task_options),
        dict(num_classes=7, train_examples=210, test_examples=291, ood=("held_out_speakers",)),
    )


KINDS = {"cifar10": _cifar10, "mimic": _mimic, "japanese_vowels": _japanese_vowels}


# The tfds mock with a Wide ResNet is the slowest kind: it runs with the slow tests.
@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.slow) if name == "cifar10" else name
                                        for name in sorted(KINDS)])
def kind(request, tmp_path_factory):
    """A task kind with its deterministic run, trained once per module."""
    task_kind = KINDS[request.param](tmp_path_factory)
    task_kind.det_dir = str(tmp_path_factory.mktemp(f"{request.param}_runs") / "deterministic")
    task_kind.det_result = task_kind.run(MethodSettings(method="deterministic"), task_kind.det_dir)
    return task_kind


def _check(result, output_dir, kind, method, members):
    """`check_result` (which also checks the checkpoint's member rows per example)."""
    check_result(result, output_dir, dataset=kind.dataset, method=method, members=members, **kind.expected)
    # Every model row trains on the requested batch (Bella-ensemble: each particle its own BATCH examples).
    assert [logs["replica_batch_size"] for logs in result["final_train_logs"]] == [BATCH]


def _latest_header(run_dir):
    directory = os.path.join(run_dir, "checkpoints")
    with open(os.path.join(directory, "latest"), encoding="utf-8") as stream:
        return read_header(os.path.join(directory, stream.read().strip()))


def _run_settings(run_dir):
    with open(os.path.join(run_dir, "run_settings.json"), encoding="utf-8") as stream:
        return json.load(stream)


def _plain(run_settings):
    task_options = TaskOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in run_settings["task"].items()})
    return plain_builder(run_settings["model_spec"], task_options)()


def _weighted_layers(model):
    """{name: layer} of the layers holding weights, inside nested models too (a converted model's members)."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = _weighted_layers(layer)
        else:
            inner = {layer.name: layer} if layer.weights else {}
        assert not set(inner) & set(found), sorted(set(inner) & set(found))
        found.update(inner)
    return found


# --------------------------------------------------------------------------
# run_experiment on every task kind.
# --------------------------------------------------------------------------


def test_deterministic_baseline(kind):
    _check(kind.det_result, kind.det_dir, kind, "deterministic", members=1)
    assert kind.det_result["final_train_logs"][0]["regularization"] == 0.0  # no L2, no method loss
    assert _latest_header(kind.det_dir)["metadata"]["fingerprint"]["member_streams"] == 1


# The LP-BNN WRN's training step takes ~25 s to trace on an idle core (~1 min loaded).
@pytest.mark.parametrize(
    "kind", [pytest.param("cifar10", marks=pytest.mark.slow), "japanese_vowels", "mimic"], indirect=True
)
def test_lpbnn(kind, tmp_path):
    output_dir = str(tmp_path / "lpbnn")
    settings = MethodSettings(
        method="lpbnn", ensemble_size=K, latent_dim=LATENT_DIM, latent_loss_weight=LATENT_LOSS_WEIGHT
    )
    result = kind.run(settings, output_dir)
    _check(result, output_dir, kind, "lpbnn", members=K)
    assert result["ensemble_size"] == K
    # The VAE term is trained on: the only extra loss (l2 = 0) and positive.
    assert result["final_train_logs"][0]["regularization"] > 0.0
    assert result["parameters"] > kind.det_result["parameters"]
    fingerprint = _latest_header(output_dir)["metadata"]["fingerprint"]
    assert fingerprint["members"] == K and fingerprint["member_streams"] == 1

    # The trained model, rebuilt from run_settings.json: latent_dim and the
    # layer-averaged loss weight reached every LP-BNN layer (LSTM cells included).
    (model,), run_settings = load_trained_models(output_dir)
    assert run_settings["method"]["latent_dim"] == LATENT_DIM
    latent_layers = [layer for layer in model._flatten_layers() if isinstance(layer, LatentPosteriorMixin)]
    plain = _plain(run_settings)
    convertible = [
        layer for layer in plain.layers
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D, keras.layers.Conv1D, keras.layers.LSTM))
    ]
    assert len(latent_layers) == len(convertible) > 0
    for layer in latent_layers:
        assert layer.latent_dim == LATENT_DIM
        assert layer.latent_loss_weight == pytest.approx(LATENT_LOSS_WEIGHT / len(latent_layers))
        for name, posterior in layer.latent_posteriors.items():
            width = int(layer.member_factors[name].variable.shape[-1])  # the encoded (K, d) table
            assert tuple(posterior.encoder_kernel.shape) == (width, LATENT_DIM), (layer.name, name)
            assert tuple(posterior.mean_kernel.shape) == (LATENT_DIM, LATENT_DIM)
            assert tuple(posterior.log_variance_kernel.shape) == (LATENT_DIM, LATENT_DIM)
            assert tuple(posterior.decoder_kernel.shape) == (LATENT_DIM, width)
            assert tuple(posterior.decoder_bias.shape) == (width,)
    # A forward pass in training adds one VAE term per LP-BNN layer.
    model(np.ones((2,) + tuple(size or 3 for size in model.input_shape[1:]), np.float32), training=True)
    assert len(model.losses) == len(latent_layers)

    # Bella given this run as its frozen network: one error naming Bella's flag and the run's method.
    from rank1_keras.methods.bella import load_pretrained
    from rank1_keras.runs.checkpoint import CheckpointError

    with pytest.raises(CheckpointError) as error:
        load_pretrained(plain, output_dir)
    message = str(error.value)
    assert message.startswith(f"pretrained_checkpoint={output_dir} does not fit the plain network"), message
    assert "It is a --method=lpbnn run" in message and "--output_dir" not in message.replace("deterministic run's --output_dir", "")


def _hand_count(plain, particles, rank):
    """K x (A: kernel shape without its output axis x r, B: r x outputs) per Dense/Conv layer."""
    total = 0
    for layer in plain.layers:
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)):
            shape = tuple(layer.kernel.shape)
            total += particles * (int(np.prod(shape[:-1])) * rank + rank * shape[-1])
    return total


def _perturbations(layer):
    """(K, ...) per-particle kernel perturbations (scale/r) A_k B_k, in the kernel's shape."""
    a = layer.input_factor.numpy()
    b = layer.output_factor.numpy()
    deltas = [np.tensordot(a[k], b[k], axes=1) * layer.perturbation_factor for k in range(layer.ensemble_size)]
    return np.stack(deltas)


@pytest.mark.parametrize("trainer", ["ensemble", "svgd"])
def test_bella(kind, tmp_path, trainer):
    output_dir = str(tmp_path / f"bella_{trainer}")
    settings = MethodSettings(
        method="bella",
        bella_trainer=trainer,
        bella_num_particles=K,
        bella_rank=BELLA_RANK,
        pretrained_checkpoint=kind.det_dir,
    )
    result = kind.run(settings, output_dir)
    _check(result, output_dir, kind, "bella", members=K)
    assert result["ensemble_size"] == K
    fingerprint = _latest_header(output_dir)["metadata"]["fingerprint"]
    # Ensemble: one data order per particle, one row per example; SVGD: tiled rows.
    assert (fingerprint["member_streams"], fingerprint["members"]) == ((K, 1) if trainer == "ensemble" else (1, K))

    (bella,), run_settings = load_trained_models(output_dir)
    assert run_settings["method"]["pretrained_checkpoint"] == kind.det_dir
    (det,), det_settings = load_trained_models(kind.det_dir)
    base = _plain(run_settings)

    # Trainable fraction: the Bella model's trainable weights over the base's parameters.
    trainable = sum(int(np.prod(v.shape)) for v in bella.trainable_weights)
    assert trainable == _hand_count(base, K, BELLA_RANK) == result["parameters"]
    assert result["trainable_fraction"] == trainable / base.count_params()
    assert result["trainable_fraction_per_particle"] == (trainable // K) / base.count_params()
    assert 0.0 < result["trainable_fraction"] < 1.0

    # Frozen weights after training are the deterministic run's final weights.
    det_layers, bella_layers = _weighted_layers(det), _weighted_layers(bella)
    assert set(det_layers) == set(bella_layers)
    converted = low_rank_layers(bella)
    assert {layer.name for layer in converted} == {
        layer.name for layer in base.layers
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D))
    }
    for name, layer in bella_layers.items():
        plain = det_layers[name]
        if isinstance(layer, LowRankEnsembleMixin):
            np.testing.assert_array_equal(layer.kernel.numpy(), plain.kernel.numpy(), err_msg=name)
            assert (layer.bias is None) == (plain.bias is None), name
            if plain.bias is not None:
                np.testing.assert_array_equal(layer.bias.numpy(), plain.bias.numpy(), err_msg=name)
            assert not layer.kernel.trainable
        else:
            assert not layer.trainable_weights, name
            assert [v.path.split("/")[-1] for v in layer.weights] == [v.path.split("/")[-1] for v in plain.weights]
            for variable, expected in zip(layer.weights, plain.weights):
                np.testing.assert_array_equal(variable.numpy(), expected.numpy(), err_msg=variable.path)
    # ... and those differ from the initial weights (same seed): the check sees the pre-training.
    keras.utils.set_random_seed(det_settings["seed"])
    initial = _weighted_layers(_plain(det_settings))
    for layer in converted:
        assert not np.array_equal(det_layers[layer.name].kernel.numpy(), initial[layer.name].kernel.numpy()), layer.name
    batch_norms = [layer for layer in det.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in batch_norms:  # the moving statistics moved in the deterministic run, not in Bella's
        assert not np.array_equal(layer.moving_mean.numpy(), initial[layer.name].moving_mean.numpy()), layer.name

    # The particles' perturbations trained: non-zero, and different per particle.
    for layer in converted:
        deltas = _perturbations(layer)
        assert deltas.shape == (K,) + tuple(layer.kernel.shape)
        for k in range(K):
            assert np.abs(deltas[k]).max() > 0.0, (layer.name, k)
        assert not np.allclose(deltas[0], deltas[1]), layer.name


# --------------------------------------------------------------------------
# Unit level: member streams, LP-BNN's loss.
# --------------------------------------------------------------------------


def test_member_streams_give_each_particle_its_own_epoch_order():
    examples, batch, streams = 12, 4, 3
    features = np.arange(examples, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    data = TrainData(tf.data.Dataset.from_tensor_slices((features, np.arange(examples, dtype=np.int32))), examples)

    def epoch(seed=5, number=0):
        return [
            (f.numpy(), y.numpy())
            for f, y in member_stream_dataset(data, number, batch, seed=seed, member_streams=streams)
        ]

    batches = epoch()
    assert len(batches) == examples // batch
    for f, y in batches:
        assert f.shape == (batch, streams, 2) and y.shape == (batch, streams)
        np.testing.assert_array_equal(f[..., 0], y)  # features stay with their labels
        np.testing.assert_array_equal(f[..., 1], y)
    first = batches[0][1]
    assert len({tuple(first[:, m]) for m in range(streams)}) == streams  # 3 different orders
    orders = np.concatenate([y for _, y in batches], axis=0)  # (examples, streams)
    for m in range(streams):
        np.testing.assert_array_equal(np.sort(orders[:, m]), np.arange(examples))  # a permutation of the set
        # Stream m is the epoch a deep-ensemble member with seed + 1000 m would see.
        alone = np.concatenate([y.numpy() for _, y in epoch_dataset(data, 0, batch, 5 + 1000 * m)])
        np.testing.assert_array_equal(orders[:, m], alone)
    assert len({tuple(orders[:, m]) for m in range(streams)}) == streams
    # Seeded: the same call gives the same batches; another epoch another order.
    again = epoch()
    for (f, y), (f2, y2) in zip(batches, again):
        np.testing.assert_array_equal(f, f2)
        np.testing.assert_array_equal(y, y2)
    later = np.concatenate([y for _, y in epoch(number=1)], axis=0)
    assert not np.array_equal(later, orders)


def _mlp():
    inputs = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(hidden))


def _lpbnn(weight, latent_dim=4):
    keras.utils.set_random_seed(7)
    settings = MethodSettings(method="lpbnn", ensemble_size=K, latent_dim=latent_dim, latent_loss_weight=weight)
    (model,) = build_method_models(_mlp, settings)
    return model, settings


def test_lpbnn_latent_loss_weight_and_latent_dim_reach_the_training_loss():
    x = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    y = np.arange(16, dtype=np.int32) % 3
    data = TrainData(tf.data.Dataset.from_tensor_slices((x, y)), 16)
    training = TrainingSettings(train_epochs=1, steps_per_epoch=1, per_replica_batch_size=8, verbose=0)

    losses, regularization = {}, {}
    for weight in (0.0, 1.0, 2.5):
        model, settings = _lpbnn(weight)
        # latent_dim reaches each layer: its VAE's weights by role.
        layers = [layer for layer in model._flatten_layers() if isinstance(layer, LatentPosteriorMixin)]
        assert sorted(layer.name for layer in layers) == ["head", "hidden"]
        for layer in layers:
            (posterior,) = layer.latent_posteriors.values()
            width = int(layer.kernel.shape[0])  # alpha scales the inputs
            assert tuple(posterior.encoder_kernel.shape) == (width, 4)
            assert tuple(posterior.mean_kernel.shape) == (4, 4)
            assert tuple(posterior.decoder_kernel.shape) == (4, width)
        keras.utils.set_random_seed(11)
        model(x[:4], training=True)
        assert len(model.losses) == 2
        losses[weight] = float(sum(float(loss) for loss in model.losses))
        if weight in (0.0, 1.0):
            # The loop's extra loss is the model's losses: here the VAE term alone.
            keras.utils.set_random_seed(7)
            (model,) = build_method_models(_mlp, settings)
            record = train(model, data, training, members=settings.members)
            regularization[weight] = record.logs["regularization"]
    assert losses[0.0] == 0.0 and losses[1.0] > 0.0
    assert losses[2.5] == pytest.approx(2.5 * losses[1.0], rel=1e-5)
    assert regularization[0.0] == 0.0 and regularization[1.0] > 0.0
    # A different latent_dim gives other shapes.
    model, _ = _lpbnn(1.0, latent_dim=2)
    head = next(layer for layer in model._flatten_layers() if layer.name == "head")
    assert tuple(head.latent_posteriors["alpha"].mean_kernel.shape) == (2, 2)


# --------------------------------------------------------------------------
# The binaries, as subprocesses started before the in-process tests.
# --------------------------------------------------------------------------

TINY_FLAGS = [
    "--dataset=digits", "--train_epochs=1", "--steps_per_epoch=2", "--per_core_batch_size=16", "--ood=false",
    "--corruptions=", "--verbose=0",
]


class BinaryRuns:
    def __init__(self, base):
        self.base = str(base)
        self.output_dirs = {}
        cases = {
            "bella_without_checkpoint": ("baselines.embedded", ["--dataset=digits", "--method=bella"]),
            "lpbnn": (
                "baselines.embedded",
                TINY_FLAGS + ["--method=lpbnn", f"--ensemble_size={K}", "--latent_dim=5", "--latent_loss_weight=0.25"],
            ),
            "compare_bella_first": (
                "baselines.compare", TINY_FLAGS + ["--methods=bella,deterministic", "--bella_num_particles=2"]
            ),
        }
        self.runs = {}
        for case, (module, flags) in cases.items():
            output_dir = os.path.join(self.base, case, "output")
            self.output_dirs[case] = output_dir
            self.runs[case] = _Binary(
                os.path.join(self.base, case, "logs"), module, flags + [f"--output_dir={output_dir}"]
            )

    def result(self, case):
        return self.runs[case].wait()

    def stop(self):
        for run in self.runs.values():
            run.stop()


@pytest.fixture(scope="module")
def binary_runs(tmp_path_factory):
    runs = BinaryRuns(tmp_path_factory.mktemp("binaries"))
    yield runs
    runs.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_binaries_early(request):
    """Starts the subprocesses before the in-process tests when any binary test is selected."""
    if any(
        getattr(item, "module", None) is request.module and "binary_runs" in getattr(item, "fixturenames", ())
        for item in request.session.items
    ):
        request.getfixturevalue("binary_runs")


def _last_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no stderr"
    return lines[-1]


def test_bella_binary_needs_a_pretrained_checkpoint(binary_runs):
    returncode, stdout, stderr = binary_runs.result("bella_without_checkpoint")
    last = _last_line(stderr)
    assert returncode == 1, stderr[-3000:]
    assert last.startswith("error:") and "--pretrained_checkpoint" in last, last
    assert "Traceback" not in stderr
    assert not os.path.exists(binary_runs.output_dirs["bella_without_checkpoint"])  # nothing written


def test_lpbnn_binary_trains_and_prints_its_row(binary_runs):
    returncode, stdout, stderr = binary_runs.result("lpbnn")
    assert returncode == 0, stderr[-3000:]
    rows = [line for line in stdout.splitlines() if line.startswith("| lpbnn |")]
    assert len(rows) == 1, stdout[-3000:]
    # The LP-BNN flags reached the run.
    settings = _run_settings(binary_runs.output_dirs["lpbnn"])
    assert settings["dataset"] == "digits"
    expected = {"method": "lpbnn", "ensemble_size": K, "latent_dim": 5, "latent_loss_weight": 0.25}
    assert {key: settings["method"][key] for key in expected} == expected
    with open(os.path.join(binary_runs.output_dirs["lpbnn"], "results.json"), encoding="utf-8") as stream:
        result = json.load(stream)
    assert result["method"] == "lpbnn" and result["ensemble_size"] == K
    assert result["final_train_logs"][0]["regularization"] > 0.0


def test_compare_needs_deterministic_before_bella(binary_runs):
    returncode, stdout, stderr = binary_runs.result("compare_bella_first")
    last = _last_line(stderr)
    assert returncode == 1, stderr[-3000:]
    assert last.startswith("error:"), last
    assert "deterministic before bella" in last and "--pretrained_checkpoint" in last, last
    assert "Traceback" not in stderr
    output_dir = binary_runs.output_dirs["compare_bella_first"]
    assert not os.path.exists(os.path.join(output_dir, "bella"))  # failed before any run
    assert not os.path.exists(os.path.join(output_dir, "deterministic"))
