"""What stays TensorFlow-only says so in one clear error on JAX and PyTorch, before it does anything."""

import keras
import numpy as np
import pytest

import rank1_keras as r1

pytestmark = pytest.mark.backends("jax", "torch")


def _converted():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    return r1.convert(plain, "batchensemble", ensemble_size=2)


def test_the_serving_export_names_the_backend_it_needs(tmp_path):
    from rank1_keras.tensorflow.export import export_for_serving

    with pytest.raises(RuntimeError, match=rf"export_for_serving runs on the TensorFlow backend only .* "
                                           rf"this process runs Keras on {keras.backend.backend()}\. "
                                           r"Run it with KERAS_BACKEND=tensorflow\."):
        export_for_serving(_converted(), str(tmp_path / "served"))
    assert not (tmp_path / "served").exists()


def test_the_training_loop_and_run_experiment_name_the_backend_they_need(tmp_path):
    from rank1_keras.methods.settings import MethodSettings
    from rank1_keras.tensorflow.training.experiment import run_experiment
    from rank1_keras.tensorflow.training.loop import TrainingSettings, train

    with pytest.raises(RuntimeError, match="the training loop runs on the TensorFlow backend only"):
        train(_converted(), None, TrainingSettings(train_epochs=1))
    with pytest.raises(RuntimeError, match="run_experiment runs on the TensorFlow backend only"):
        run_experiment("digits", MethodSettings("deterministic"), TrainingSettings(train_epochs=1), None,
                       str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_svgd_trainer_names_the_backend_it_needs():
    from rank1_keras.bella import to_bella
    from rank1_keras.tensorflow.training.svgd import SVGDTrainer

    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    with pytest.raises(RuntimeError, match="SVGDTrainer runs on the TensorFlow backend only"):
        SVGDTrainer(to_bella(plain, num_particles=2), train_size=10)
    assert np.isfinite(keras.ops.convert_to_numpy(to_bella(plain, num_particles=2)(np.ones((2, 4), "float32")))).all()


def test_everything_outside_the_tensorflow_folder_imports_without_tensorflow():
    # The layout's promise (README, "Layout"): rank1_keras/tensorflow/ holds every module that needs
    # TensorFlow. A fresh interpreter where `import tensorflow` fails imports all the others.
    import subprocess
    import sys

    script = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['tensorflow'] = None\n"
        "import rank1_keras\n"
        "names = [m.name for m in pkgutil.walk_packages(rank1_keras.__path__, 'rank1_keras.')]\n"
        "core = [n for n in names if not n.startswith('rank1_keras.tensorflow')]\n"
        "for name in core:\n"
        "    importlib.import_module(name)\n"
        "print(len(core), 'tensorflow' in sys.modules and sys.modules['tensorflow'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count, tensorflow_loaded = result.stdout.split()
    assert int(count) > 50 and tensorflow_loaded == "False"
    # and the TensorFlow folder really needs it: its modules fail to import there
    failing = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['tensorflow'] = None; import rank1_keras.tensorflow.training.loop"],
        capture_output=True, text=True, timeout=300,
    )
    assert failing.returncode != 0 and "tensorflow" in failing.stderr
