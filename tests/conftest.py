import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


# The edward2 reference script runs in a subprocess under TF_USE_LEGACY_KERAS=1;
# importing it here (doctest collection) would switch tf.keras to Keras 2.
collect_ignore = ["edward2_reference.py"]


BACKEND = keras.backend.backend()


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` selects: the slow marks added here count
def pytest_collection_modifyitems(config, items):
    """Keeps the tests that run on this Keras backend: a module's `backends(...)` marker
    (unmarked: TensorFlow only). The others are deselected, not skipped: nothing counts as
    passing that did not run. `slow_off_tensorflow` tests are `slow` on JAX and PyTorch."""
    kept, dropped = [], []
    for item in items:
        if BACKEND != "tensorflow" and item.get_closest_marker("slow_off_tensorflow") is not None:
            item.add_marker(pytest.mark.slow)
        marker = item.get_closest_marker("backends")
        backends = marker.args if marker is not None else ("tensorflow",)
        (kept if BACKEND in backends else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
