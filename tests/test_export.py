"""`export_for_serving`: a SavedModel whose serving signature returns probabilities and uncertainty."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rank1_keras import metrics
from rank1_keras.convert import member_outputs
from rank1_keras.export import export_for_serving
from rank1_keras.models import MethodSettings, build_method_models, inference_model, small_cnn

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
    path = export_for_serving(model, str(tmp_path / method))
    served = _serve(path, X)
    np.testing.assert_allclose(served["probabilities"], model.predict(X, verbose=0), atol=1e-6)
    rows = (member_outputs(model) if members > 1 else model).predict(X, verbose=0)
    expected_members = rows.reshape(members, len(X), 3).transpose(1, 0, 2)
    np.testing.assert_allclose(served["member_probabilities"], expected_members, atol=1e-6)
    member_view = served["member_probabilities"].transpose(1, 0, 2).astype("float64")
    np.testing.assert_allclose(served["predictive_entropy"], metrics.predictive_entropy(member_view.mean(0)), atol=1e-5)
    np.testing.assert_allclose(served["mutual_information"], metrics.mutual_information(member_view), atol=1e-5)
    np.testing.assert_array_equal(served["predicted_class"], served["probabilities"].argmax(-1))
    np.testing.assert_allclose(served["confidence"], served["probabilities"].max(-1), atol=0)
    one = _serve(path, X[:1])
    np.testing.assert_allclose(one["probabilities"], served["probabilities"][:1], atol=1e-6)


def test_rank1_samples_like_the_keras_model_from_the_saved_random_state(tmp_path):
    model = _model("rank1")
    states = [v.numpy().copy() for v in _seed_states(model)]
    assert states
    path = export_for_serving(model, str(tmp_path / "rank1"), num_samples=2)
    served = _serve(path, X)
    rows_model = member_outputs(model)
    for variable, state in zip(_seed_states(model), states):
        variable.assign(state)
    passes = [rows_model(X, training=False).numpy().reshape(2, len(X), 3) for _ in range(2)]
    expected = np.concatenate(passes, axis=0)  # (S*K, B, C), sample-major as exported
    np.testing.assert_allclose(served["member_probabilities"], expected.transpose(1, 0, 2), atol=1e-5)
    np.testing.assert_allclose(served["probabilities"], expected.mean(0), atol=1e-5)
    assert served["mutual_information"].min() > 0  # sampled members disagree a little


def test_fresh_load_without_the_package_answers_the_same(tmp_path):
    model = _model("rank1")
    path = export_for_serving(model, str(tmp_path / "rank1"), num_samples=3)
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
