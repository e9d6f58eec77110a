"""`export_for_serving`: a SavedModel whose serving signature returns probabilities and uncertainty."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rank1_keras import metrics, post_processing
from rank1_keras.convert import member_outputs
from rank1_keras.methods import method_names
from rank1_keras.methods.settings import MethodSettings, build_method_models, inference_model
from rank1_keras.models import small_cnn
from rank1_keras.models.ensemble import AverageMembers
from rank1_keras.tensorflow.export import ServingInput, export_for_serving, reset_seed_generators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.random.default_rng(0).uniform(size=(6, 12, 12, 1)).astype("float32")


def _model(method, ensemble_size=2):
    keras.utils.set_random_seed(0)
    settings = MethodSettings(method, ensemble_size=ensemble_size, random_sign_init=-0.5)
    return inference_model(build_method_models(lambda: small_cnn((12, 12, 1), 3), settings))


def _serve(path, inputs):
    outputs = tf.saved_model.load(path).signatures["serving_default"](inputs=tf.constant(inputs))
    return {name: value.numpy() for name, value in outputs.items()}


def _seed_states(model):
    return [v for v in model.variables if "seed_generator_state" in v.path]


@pytest.mark.parametrize("method, members", [("deterministic", 1), ("batchensemble", 2), ("ensemble", 2)])
def test_deterministic_methods_equal_the_keras_model(tmp_path, method, members):
    model = _model(method)
    path = export_for_serving(model, str(tmp_path / method), seed=None)
    served = _serve(path, X)
    np.testing.assert_allclose(served["probabilities"], model.predict(X, verbose=0), atol=1e-6)
    outputs = (member_outputs(model) if members > 1 else model).predict(X, verbose=0)
    expected_members = outputs.reshape(len(X), members, 3)  # (B, K, C), or (B, 1, C) for one model
    np.testing.assert_allclose(served["member_probabilities"], expected_members, atol=1e-6)
    member_view = served["member_probabilities"].transpose(1, 0, 2).astype("float64")
    np.testing.assert_allclose(served["predictive_entropy"], metrics.predictive_entropy(member_view.mean(0)), atol=1e-5)
    np.testing.assert_allclose(served["mutual_information"], metrics.mutual_information(member_view), atol=1e-5)
    np.testing.assert_array_equal(served["predicted_class"], served["probabilities"].argmax(-1))
    np.testing.assert_allclose(served["confidence"], served["probabilities"].max(-1), atol=0)
    one = _serve(path, X[:1])
    np.testing.assert_allclose(one["probabilities"], served["probabilities"][:1], atol=1e-6)


def test_foldable_ensembles_serve_large_requests_as_folded_networks_with_the_same_answers(tmp_path):
    from rank1_keras.models.ensemble import MemberChains
    from rank1_keras.tensorflow.export import FOLDED_FROM_EXAMPLES

    model = _model("batchensemble", ensemble_size=3)
    chains = next(layer for layer in model.layers if isinstance(layer, MemberChains))
    chains.chains_from_batch = 5
    path = export_for_serving(model, str(tmp_path / "batchensemble"), seed=None)
    assert chains.chains_from_batch == 5, "the export leaves the model's own settings as they were"
    # The SavedModel carries the tiled pass and the K folded networks, and picks by request size.
    serving = tf.saved_model.load(path).signatures["serving_default"]
    operations = {node.op for function in serving.graph.as_graph_def().library.function for node in function.node_def}
    operations |= {op.type for op in serving.graph.get_operations()}
    assert operations & {"If", "StatelessIf"}
    x = np.random.default_rng(1).uniform(size=(FOLDED_FROM_EXAMPLES + 3, 12, 12, 1)).astype("float32")
    expected = member_outputs(model).predict(x, verbose=0)
    for rows in (FOLDED_FROM_EXAMPLES - 1, FOLDED_FROM_EXAMPLES, len(x)):
        served = _serve(path, x[:rows])
        np.testing.assert_allclose(served["member_probabilities"], expected[:rows], atol=1e-6)
        np.testing.assert_allclose(served["probabilities"], expected[:rows].mean(1), atol=1e-6)


@pytest.mark.slow  # the seed=None mode; the seeded mode runs in the default suite
def test_rank1_samples_like_the_keras_model_from_the_saved_random_state(tmp_path):
    model = _model("rank1")
    states = [v.numpy().copy() for v in _seed_states(model)]
    assert states
    path = export_for_serving(model, str(tmp_path / "rank1"), num_samples=2, seed=None)
    served = _serve(path, X)
    rows_model = member_outputs(model)
    for variable, state in zip(_seed_states(model), states):
        variable.assign(state)
    passes = [np.moveaxis(rows_model(X, training=False).numpy(), 1, 0) for _ in range(2)]
    expected = np.concatenate(passes, axis=0)  # (S*K, B, C), sample-major as exported
    np.testing.assert_allclose(served["member_probabilities"], expected.transpose(1, 0, 2), atol=1e-5)
    np.testing.assert_allclose(served["probabilities"], expected.mean(0), atol=1e-5)
    assert served["mutual_information"].min() > 0  # sampled members disagree a little


@pytest.mark.slow  # suite time; test_saved_model_cli_show_and_run loads an export in a fresh process too
def test_fresh_load_without_the_package_answers_the_same(tmp_path):
    model = _model("rank1")
    path = export_for_serving(model, str(tmp_path / "rank1"), num_samples=3, seed=None)
    np.save(tmp_path / "x.npy", X)
    script = (
        "import sys; sys.modules['rank1_keras'] = None\n"
        "import numpy as np, tensorflow as tf\n"
        f"x = tf.constant(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "outs = [tf.saved_model.load(sys.argv[1]).signatures['serving_default'](inputs=x) for _ in range(2)]\n"
        "np.save(sys.argv[2], np.stack([o['probabilities'].numpy() for o in outs]))\n"
    )
    result_path = str(tmp_path / "served.npy")
    completed = subprocess.run(
        [sys.executable, "-c", script, path, result_path], cwd=str(tmp_path), capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    first, second = np.load(result_path)
    np.testing.assert_array_equal(first, second)  # two fresh loads, one answer
    np.testing.assert_allclose(first, _serve(path, X)["probabilities"], atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        export_for_serving(_model("deterministic"), "/tmp/unused", num_samples=0)
    inputs = keras.Input((3,))
    two_outputs = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(ValueError, match="one input and one output"):
        export_for_serving(two_outputs, "/tmp/unused")
    for temperature in (0.0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="temperature"):
            export_for_serving(_model("deterministic"), "/tmp/unused", temperature=temperature)


def test_temperature_scales_the_averaged_probabilities_as_the_evaluation_does(tmp_path):
    model = _model("batchensemble")
    plain = _serve(export_for_serving(model, str(tmp_path / "plain"), seed=None), X)
    scaled = _serve(export_for_serving(model, str(tmp_path / "scaled"), seed=None, temperature=2.5), X)
    # The float64 reference the "(T)" columns use, applied to the unscaled export's mean.
    expected = post_processing.apply_temperature_to_probabilities(plain["probabilities"].astype("float64"), 2.5)
    np.testing.assert_allclose(scaled["probabilities"], expected, atol=1e-6)
    assert np.abs(scaled["probabilities"] - plain["probabilities"]).max() > 1e-3  # T = 2.5 softens
    np.testing.assert_allclose(scaled["predictive_entropy"], metrics.predictive_entropy(expected), atol=1e-5)
    np.testing.assert_allclose(scaled["confidence"], expected.max(-1), atol=1e-6)
    np.testing.assert_array_equal(scaled["predicted_class"], plain["predicted_class"])
    # The members and their disagreement are the members' own.
    np.testing.assert_allclose(scaled["member_probabilities"], plain["member_probabilities"], atol=1e-7)
    np.testing.assert_allclose(scaled["mutual_information"], plain["mutual_information"], atol=1e-7)


# -- every method, seeded: the export equals the Keras model replayed from the same seed --

STOCHASTIC = {"dropout", "rank1", "lpbnn"}


def _rows_model(model):
    return member_outputs(model) if any(isinstance(layer, AverageMembers) for layer in model.layers) else model


def keras_member_probabilities(model, inputs, num_samples, seed):
    """(B, M, C) the way the export computes them, from the Keras model, eagerly."""
    rows_model = _rows_model(model)
    reset_seed_generators(rows_model, seed)
    passes = []
    for _ in range(num_samples):
        outputs = rows_model(inputs, training=False).numpy()
        passes.append(outputs.reshape(len(inputs), -1, outputs.shape[-1]))  # (B, K, C); a plain model K = 1
    return np.concatenate(passes, axis=1)


def _check_outputs(served, expected_members, atol=1e-5):
    np.testing.assert_allclose(served["member_probabilities"], expected_members, atol=atol)
    np.testing.assert_allclose(served["probabilities"], expected_members.mean(1), atol=atol)
    members = expected_members.transpose(1, 0, 2).astype("float64")
    np.testing.assert_allclose(served["predictive_entropy"], metrics.predictive_entropy(members.mean(0)), atol=atol)
    np.testing.assert_allclose(served["mutual_information"], metrics.mutual_information(members), atol=atol)
    np.testing.assert_array_equal(served["predicted_class"], served["probabilities"].argmax(-1))
    np.testing.assert_allclose(served["confidence"], served["probabilities"].max(-1), atol=0)


def _method_model(method, build_plain, ensemble_size=2):
    keras.utils.set_random_seed(0)
    settings = MethodSettings(method, ensemble_size=ensemble_size, random_sign_init=-0.5, train_size=100)
    return inference_model(build_method_models(build_plain, settings))


EXPORTABLE = [m for m in method_names() if m != "bella"] + (["bella"] if "bella" in method_names() else [])


@pytest.mark.parametrize("method", EXPORTABLE)
def test_every_method_equals_the_keras_model_from_the_same_seed(tmp_path, method):
    model = _method_model(method, lambda: small_cnn((12, 12, 1), 3))
    num_samples = 2 if method in STOCHASTIC else 1
    path = export_for_serving(model, str(tmp_path / method), num_samples=num_samples, seed=3)
    loaded = tf.saved_model.load(path).signatures["serving_default"]
    for batch in (1, 1000):
        inputs = np.random.default_rng(batch).uniform(size=(batch, 12, 12, 1)).astype("float32")
        served = {k: v.numpy() for k, v in loaded(inputs=tf.constant(inputs)).items()}
        _check_outputs(served, keras_member_probabilities(model, inputs, num_samples, seed=3))
        again = loaded(inputs=tf.constant(inputs))["probabilities"].numpy()
        np.testing.assert_array_equal(again, served["probabilities"])  # seeded: every request alike
    members = served["member_probabilities"].shape[1]
    expected_members = {"deterministic": 1, "dropout": 2, "bella": 3}.get(method, 2 * num_samples)
    assert members == expected_members
    if method in STOCHASTIC:
        assert served["mutual_information"].max() > 0  # the passes differ


def _tiny_wide_resnet():
    from rank1_keras.models import wide_resnet

    return wide_resnet(10, 1, num_classes=3, input_shape=(8, 8, 3))


def _tiny_resnet50():
    from rank1_keras.models import resnet50

    return resnet50(num_classes=3, input_shape=(32, 32, 3), width_multiplier=1 / 16)


@pytest.mark.parametrize(
    "builder, shape, method",
    [
        pytest.param(_tiny_wide_resnet, (8, 8, 3), "rank1", marks=pytest.mark.slow),
        (_tiny_wide_resnet, (8, 8, 3), "ensemble"),
        pytest.param(_tiny_resnet50, (32, 32, 3), "deterministic", marks=pytest.mark.slow),
        pytest.param(_tiny_resnet50, (32, 32, 3), "batchensemble", marks=pytest.mark.slow),
        pytest.param(_tiny_resnet50, (32, 32, 3), "rank1", marks=pytest.mark.slow),
    ],
    ids=["wrn-rank1", "wrn-ensemble", "resnet50-deterministic", "resnet50-batchensemble", "resnet50-rank1"],
)
def test_architectures_export_with_batch_norm_in_inference_mode(tmp_path, builder, shape, method):
    model = _method_model(method, builder)
    path = export_for_serving(model, str(tmp_path / "model"), num_samples=1, seed=0)
    inputs = np.random.default_rng(0).normal(size=(3, *shape)).astype("float32")
    _check_outputs(_serve(path, inputs), keras_member_probabilities(model, inputs, 1, seed=0))


def _lstm():
    from rank1_keras.models import lstm_classifier

    return lstm_classifier(num_features=4, num_classes=3, units=6, hidden_units=5, dropout_rate=0.2)


@pytest.mark.parametrize(
    "method", ["rank1", pytest.param("dropout", marks=pytest.mark.slow), pytest.param("ensemble", marks=pytest.mark.slow)]
)
def test_lstm_with_lengths_equals_the_task_preprocessing(tmp_path, method):
    from rank1_keras.data.sequences import standardise, with_observed_channel

    rng = np.random.default_rng(1)
    raw = rng.normal(2.0, 3.0, size=(5, 7, 3)).astype("float32")
    lengths = np.array([7, 1, 4, 0, 3], "int32")
    raw[2, 1, 0] = np.nan  # a missing value counts as 0, as the loaders do
    (train,), (mean, std) = standardise(with_observed_channel(raw, lengths, 9), [])
    model = _method_model(method, _lstm)
    serving_input = ServingInput.sequences(mean=mean, stddev=std)
    path = export_for_serving(model, str(tmp_path / "lstm"), num_samples=2, seed=1, serving_input=serving_input)
    served = tf.saved_model.load(path).signatures["serving_default"](
        sequences=tf.constant(raw), lengths=tf.constant(lengths)
    )
    served = {k: v.numpy() for k, v in served.items()}
    # The task's arrays are padded to 9 steps; padding is masked, so the answer is the same.
    _check_outputs(served, keras_member_probabilities(model, train, 2, seed=1))
    one = tf.saved_model.load(path).signatures["serving_default"](
        sequences=tf.constant(raw[:1]), lengths=tf.constant(lengths[:1])
    )
    _check_outputs({k: v.numpy() for k, v in one.items()}, keras_member_probabilities(model, train[:1], 2, seed=1))


# -- raw images --------------------------------------------------------------------


def test_uint8_images_are_scaled_and_normalised_in_the_graph(tmp_path):
    from rank1_keras.tensorflow.tfds_images import CIFAR_MEAN, CIFAR_STD, preprocess_cifar

    model = _method_model("batchensemble", lambda: small_cnn((6, 6, 3), 3, padding="same"))
    serving_input = ServingInput.images("uint8", 1 / 255, CIFAR_MEAN, CIFAR_STD)
    path = export_for_serving(model, str(tmp_path / "m"), serving_input=serving_input)
    pixels = np.random.default_rng(2).integers(0, 256, size=(4, 6, 6, 3)).astype("uint8")
    features = np.stack([preprocess_cifar(image, 0, [0, 0], training=False)[0].numpy() for image in pixels])
    _check_outputs(_serve(path, pixels), keras_member_probabilities(model, features, 1, seed=0))


def test_imagenet_style_central_crop_of_any_size_equals_the_evaluation_preprocessing(tmp_path):
    from rank1_keras.tensorflow.tfds_images import CENTRAL_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, preprocess_imagenet

    model = _method_model("deterministic", lambda: small_cnn((16, 16, 3), 3, padding="same"))
    serving_input = ServingInput.images("uint8", 1 / 255, IMAGENET_MEAN, IMAGENET_STD, CENTRAL_CROP_FRACTION)
    path = export_for_serving(model, str(tmp_path / "m"), serving_input=serving_input)
    for height, width in ((30, 41), (16, 16), (57, 20)):
        pixels = np.random.default_rng(height).integers(0, 256, size=(2, height, width, 3)).astype("uint8")
        features = np.stack(
            [preprocess_imagenet(image, 0, [0, 0], training=False, image_size=16)[0].numpy() for image in pixels]
        )
        _check_outputs(_serve(path, pixels), keras_member_probabilities(model, features, 1, seed=0), atol=2e-5)


# -- bad input fails with the expected shape in the message -------------------------


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    model = _method_model("rank1", lambda: small_cnn((12, 12, 1), 3))
    path = str(tmp_path_factory.mktemp("bad") / "m")
    export_for_serving(model, path, serving_input=ServingInput.images())
    return tf.saved_model.load(path).signatures["serving_default"]


@pytest.mark.parametrize(
    "shape", [(2, 13, 12, 1), (2, 12, 12), (2, 12, 12, 3), (0, 12, 12, 1), (12, 12, 1, 1, 1)], ids=str
)
def test_bad_image_shapes_name_the_expected_shape(image_export, shape):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"inputs must have shape \(batch, 12, 12, 1\) and dtype uint8"):
        image_export(inputs=tf.zeros(shape, tf.uint8))


def test_wrong_dtype_is_refused_naming_the_expected_dtype(image_export):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="uint8"):
        image_export(inputs=tf.zeros((2, 12, 12, 1), tf.float32))


def test_bad_lengths_are_refused(tmp_path):
    model = _method_model("deterministic", _lstm)
    path = export_for_serving(model, str(tmp_path / "m"), serving_input=ServingInput.sequences())
    serve = tf.saved_model.load(path).signatures["serving_default"]
    sequences = tf.zeros((2, 5, 3))
    for lengths in ([6, 1], [-1, 2], [1, 2, 3]):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"lengths must hold one value per sequence"):
            serve(sequences=sequences, lengths=tf.constant(lengths, tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"sequences must have shape \(batch, any, 3\)"):
        serve(sequences=tf.zeros((2, 5, 4)), lengths=tf.constant([1, 2], tf.int32))


def test_serving_input_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        ServingInput("text")
    with pytest.raises(ValueError, match="dtype"):
        ServingInput.images(dtype="int16")
    with pytest.raises(ValueError, match="one value per channel"):
        ServingInput.images(mean=(0.5, 0.5), stddev=(1.0,))
    with pytest.raises(ValueError, match="stddev"):
        ServingInput.images(mean=(0.5,), stddev=(0.0,))
    with pytest.raises(ValueError, match="central_crop_fraction"):
        ServingInput.images(central_crop_fraction=1.5)
    with pytest.raises(ValueError, match="channels"):
        export_for_serving(_model("deterministic"), "/tmp/unused", serving_input=ServingInput.images(mean=(0, 0, 0), stddev=(1, 1, 1)))
    with pytest.raises(ValueError, match="seed"):
        export_for_serving(_model("deterministic"), "/tmp/unused", seed=-1)
    assert ServingInput.from_config(ServingInput.sequences((1.0,), (2.0,)).get_config()) == ServingInput.sequences(
        (1.0,), (2.0,)
    )


# -- TensorFlow's own tools ---------------------------------------------------------


def _cli(*arguments):
    completed = subprocess.run(
        ["saved_model_cli", *arguments], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_saved_model_cli_show_and_run(tmp_path):
    model = _method_model("rank1", lambda: small_cnn((12, 12, 1), 3))
    path = export_for_serving(model, str(tmp_path / "rank1"), num_samples=2, seed=5, serving_input=ServingInput.images())
    shown = _cli("show", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default")
    assert "inputs['inputs']" in shown and "DT_UINT8" in shown
    for name in ("probabilities", "predicted_class", "confidence", "predictive_entropy", "mutual_information", "member_probabilities"):
        assert f"outputs['{name}']" in shown
    pixels = np.random.default_rng(4).integers(0, 256, size=(3, 12, 12, 1)).astype("uint8")
    np.save(tmp_path / "pixels.npy", pixels)
    out = tmp_path / "out"
    printed = _cli(
        "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
        "--inputs", f"inputs={tmp_path / 'pixels.npy'}", "--outdir", str(out),
    )
    assert "Result for output key probabilities" in printed
    expected = keras_member_probabilities(model, pixels.astype("float32") / 255, 2, seed=5)
    _check_outputs({name: np.load(out / f"{name}.npy") for name in ("probabilities", "member_probabilities",
                    "predictive_entropy", "mutual_information", "predicted_class", "confidence")}, expected)


# -- baselines/export.py: a trained run, rebuilt from run_settings.json ---------------


@pytest.mark.parametrize("method", ["batchensemble", "ensemble"])
def test_export_binary_serves_the_trained_run(tmp_path, method):
    from baselines.export import export_run
    from rank1_keras.data.digits import DIGITS_MAX_VALUE
    from rank1_keras.tensorflow.training.experiment import run_experiment
    from rank1_keras.tensorflow.training.loop import TrainingSettings
    from rank1_keras.tensorflow.training.tasks import TaskOptions, load_task

    options = TaskOptions(ood=False, corruptions=(), test_examples=200)
    training = TrainingSettings(train_epochs=1, steps_per_epoch=3, per_replica_batch_size=32, optimizer="adam",
                                base_learning_rate=1e-2, verbose=0)
    run = str(tmp_path / "run")
    result = run_experiment("digits", MethodSettings(method, ensemble_size=2), training, options, run)
    exported = export_run(run, str(tmp_path / "export"))
    # No validation split, so no temperature: the export serves the evaluated probabilities unscaled.
    with open(os.path.join(exported, "rank1_keras_export.json")) as stream:
        marker = json.load(stream)
    assert marker["temperature"] == 1.0 and "no validation split" in marker["temperature_source"]
    # Raw digits are the integers 0..16 the task divides by 16.
    task = load_task("digits", options)
    images, labels = (np.stack(column) for column in zip(*task.evaluation.test.dataset.as_numpy_iterator()))
    raw = np.rint(images * DIGITS_MAX_VALUE).astype("uint8")
    served = _serve(exported, raw)
    assert served["member_probabilities"].shape[1] == 2
    np.testing.assert_allclose((served["predicted_class"] == labels).mean(), result["accuracy"], atol=1e-9)
    np.testing.assert_allclose(metrics.negative_log_likelihood(served["probabilities"].astype("float64"), labels), result["nll"], atol=1e-5)
    with pytest.raises(ValueError, match="exists"):
        export_run(run, exported)
    if method == "ensemble":
        return
    # --overwrite replaces an earlier export, and nothing else: not the run itself (whose
    # checkpoints, results and logs it would delete), not another directory, not a file.
    before = sorted(os.listdir(run))
    with pytest.raises(ValueError, match="is not an earlier export"):
        export_run(run, run, overwrite=True)
    assert sorted(os.listdir(run)) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for target in (tmp_path / "notes", tmp_path / "file"):
        with pytest.raises(ValueError, match="is not an earlier export"):
            export_run(run, str(target), overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "mine"
    assert export_run(run, exported, overwrite=True) == exported
    # Files and directories follow the umask (mkstemp/mkdtemp alone would make them 0600/0700).
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(exported).st_mode & 0o777 == 0o777 & ~mask
    assert os.stat(os.path.join(run, "results.json")).st_mode & 0o777 == 0o666 & ~mask
    np.testing.assert_allclose(_serve(exported, raw)["probabilities"], served["probabilities"], atol=1e-6)


def test_export_binary_serves_the_temperature_the_run_fitted_only_for_the_weights_it_evaluated(tmp_path):
    from baselines.export import export_run
    from rank1_keras.data.digits import DIGITS_MAX_VALUE
    from rank1_keras.tensorflow.training.experiment import run_experiment
    from rank1_keras.tensorflow.training.loop import TrainingSettings
    from rank1_keras.tensorflow.training.tasks import TaskOptions, load_task

    options = TaskOptions(ood=False, corruptions=(), test_examples=200, validation_percent=20.0)
    training = TrainingSettings(train_epochs=2, steps_per_epoch=3, per_replica_batch_size=32, optimizer="adam",
                                base_learning_rate=1e-2, verbose=0, keep_checkpoints=2)
    run = str(tmp_path / "run")
    result = run_experiment("digits", MethodSettings("batchensemble", ensemble_size=2), training, options, run)
    # A short run is miscalibrated: its temperature changes the NLL well beyond the tolerance below.
    assert abs(result["nll"] - result["nll_temperature_scaled"]) > 1e-3
    task = load_task("digits", options)
    images, labels = (np.stack(column) for column in zip(*task.evaluation.test.dataset.as_numpy_iterator()))
    served = _serve(export_run(run, str(tmp_path / "calibrated")), np.rint(images * DIGITS_MAX_VALUE).astype("uint8"))
    # The served answer is the evaluation's temperature-scaled one.
    np.testing.assert_allclose(
        metrics.negative_log_likelihood(served["probabilities"].astype("float64"), labels),
        result["nll_temperature_scaled"], atol=1e-5,
    )
    with open(os.path.join(tmp_path / "calibrated", "rank1_keras_export.json")) as stream:
        marker = json.load(stream)
    assert marker["temperature"] == pytest.approx(result["temperature"], abs=1e-12)
    assert "validation split" in marker["temperature_source"]
    # Epoch 1's checkpoint is not what was evaluated: its export is unscaled, and says why.
    first = sorted(glob.glob(os.path.join(run, "checkpoints", "ckpt-*.npz")))[0]
    assert first.endswith("ckpt-00001.npz")
    export_run(first, str(tmp_path / "epoch1"))
    with open(os.path.join(tmp_path / "epoch1", "rank1_keras_export.json")) as stream:
        marker = json.load(stream)
    assert marker["temperature"] == 1.0 and "checkpoints are of epochs [1]" in marker["temperature_source"]
    # By hand, and checked.
    export_run(run, str(tmp_path / "by_hand"), temperature=1.0)
    with open(os.path.join(tmp_path / "by_hand", "rank1_keras_export.json")) as stream:
        assert json.load(stream) == {**marker, "checkpoint": os.path.abspath(run), "temperature_source": "--temperature"}
    with pytest.raises(ValueError, match="temperature"):
        export_run(run, str(tmp_path / "bad"), temperature=0.0)
    assert not os.path.exists(tmp_path / "bad")


@pytest.mark.slow  # a subprocess; the library path of the same errors runs in the default suite
def test_export_binary_reports_bad_checkpoints_in_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "baselines.export", f"--checkpoint={tmp_path}", f"--output_dir={tmp_path / 'x'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 1
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --checkpoint=") and "run_settings.json" in last
    assert not os.path.exists(tmp_path / "x")
