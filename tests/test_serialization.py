"""Every public layer round-trips: get_config/from_config, .keras files (on every backend, and
from one backend to another), SavedModel (TensorFlow)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from rank1_keras import losses
from rank1_keras.models import ensemble
from tests.backend_utils import numpy
from tests.layer_cases import CASES, build_case_model, case_inputs

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _perturb_weights(model, seed=0):
    # Move every weight off its initial value so a reload that re-initialises
    # anything shows up as a difference.
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        value = numpy(variable)
        variable.assign(value + rng.normal(scale=0.1, size=value.shape).astype(value.dtype))


@pytest.mark.parametrize("name", sorted(CASES))
def test_get_config_from_config_round_trip(name):
    _, layer = build_case_model(name)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # The config is plain JSON, so it survives a text round trip too.
    assert type(layer).from_config(json.loads(json.dumps(config))).get_config() == config


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_file_round_trip_gives_same_outputs(name, tmp_path):
    model, _ = build_case_model(name)
    _perturb_weights(model)
    x = case_inputs(name)
    expected = numpy(model(x, training=False))
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(restored(x, training=False)), expected, rtol=1e-6, atol=1e-6)
    assert [v.name for v in restored.weights] == [v.name for v in model.weights]
    for before, after in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(numpy(before), numpy(after))


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_model_export_gives_same_outputs(name, tmp_path):
    import tensorflow as tf

    model, _ = build_case_model(name)
    _perturb_weights(model)
    x = case_inputs(name)
    expected = model(x, training=False).numpy()
    path = str(tmp_path / "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    restored = tf.saved_model.load(path)
    np.testing.assert_allclose(restored.serve(x).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.backends("tensorflow")
def test_saved_model_runs_in_a_fresh_process_without_the_package(tmp_path):
    """Exports of every layer load with plain TensorFlow, rank1_keras unimportable."""
    expected = {}
    for name in sorted(CASES):
        model, _ = build_case_model(name)
        _perturb_weights(model)
        x = case_inputs(name)
        expected[name] = model(x, training=False).numpy()
        model.export(str(tmp_path / name), format="tf_saved_model", verbose=False)
        np.save(tmp_path / f"{name}_input.npy", x)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["rank1_keras"] = None  # any import of the package now fails
        import numpy as np, tensorflow as tf
        for name in {sorted(CASES)!r}:
            loaded = tf.saved_model.load(r"{tmp_path}/" + name)
            x = np.load(r"{tmp_path}/" + name + "_input.npy")
            np.save(r"{tmp_path}/" + name + "_output.npy", loaded.serve(x).numpy())
        print("loaded", len({sorted(CASES)!r}))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name, value in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}_output.npy"), value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ensemble.TileEnsemble(3),
        lambda: ensemble.AverageMembers(3),
    ],
)
def test_ensemble_layers_round_trip(make, tmp_path):
    layer = make()
    assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    inputs = keras.Input((4,))
    outputs = ensemble.AverageMembers(3)(keras.layers.Softmax()(ensemble.TileEnsemble(3)(inputs)))
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(numpy(keras.saving.load_model(path)(x)), numpy(model(x)), rtol=1e-6)


@pytest.mark.parametrize("loss_class", [losses.AverageNLL, losses.MixtureNLL])
def test_losses_round_trip(loss_class):
    loss = loss_class(ensemble_size=3, from_logits=True)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, loss_class)
    assert restored.get_config() == loss.get_config()


def test_seeded_models_are_reproducible():
    """Same global seed -> same weights and the same sampled factors in training."""
    outputs = []
    for _ in range(2):
        keras.utils.set_random_seed(99)
        inputs = keras.Input((6,))
        from rank1_keras.layers import DenseRank1

        layer = DenseRank1(5, ensemble_size=3, alpha_initializer=__import__("rank1_keras").initializers.TrainableNormal(initial_stddev=0.2))
        model = keras.Model(inputs, layer(ensemble.TileEnsemble(3)(inputs)))
        x = np.ones((2, 6), "float32")
        outputs.append([numpy(model(x, training=True)) for _ in range(2)])
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    # ... while successive draws within a run differ.
    assert np.abs(outputs[0][0] - outputs[0][1]).max() > 1e-3


# One backend loads every case model another backend saved, checks its outputs, and saves it again.
_LOAD_AND_SAVE = r"""
import os, sys
import keras, numpy as np
from tests.backend_utils import numpy
from tests.layer_cases import CASES, case_inputs

source, target = sys.argv[1], sys.argv[2]
os.makedirs(target)
for name in sorted(CASES):
    model = keras.saving.load_model(os.path.join(source, name + ".keras"))
    np.save(os.path.join(target, name + ".npy"), numpy(model(case_inputs(name), training=False)))
    model.save(os.path.join(target, name + ".keras"))
"""


def _load_and_save(backend, source, target):
    completed = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_SAVE, str(source), str(target)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=600,
    )
    assert completed.returncode == 0, f"KERAS_BACKEND={backend}:\n{completed.stderr[-3000:]}"


@pytest.mark.backends("tensorflow")
def test_a_model_saved_under_one_backend_loads_under_another_with_the_same_outputs(tmp_path):
    """Every layer's .keras file goes TensorFlow -> JAX -> PyTorch -> TensorFlow, each backend loading
    the file the previous one wrote, with the same outputs at every hop."""
    expected = {}
    os.makedirs(tmp_path / "tensorflow")
    for name in sorted(CASES):
        model, _ = build_case_model(name)
        _perturb_weights(model)
        expected[name] = numpy(model(case_inputs(name), training=False))
        model.save(str(tmp_path / "tensorflow" / f"{name}.keras"))
    _load_and_save("jax", tmp_path / "tensorflow", tmp_path / "jax")
    _load_and_save("torch", tmp_path / "jax", tmp_path / "torch")
    for name in sorted(CASES):
        back = keras.saving.load_model(str(tmp_path / "torch" / f"{name}.keras"))
        outputs = {"jax": np.load(tmp_path / "jax" / f"{name}.npy"), "torch": np.load(tmp_path / "torch" / f"{name}.npy"),
                   "tensorflow again": numpy(back(case_inputs(name), training=False))}
        for backend, output in outputs.items():
            np.testing.assert_allclose(output, expected[name], rtol=1e-5, atol=1e-5, err_msg=f"{name} on {backend}")
