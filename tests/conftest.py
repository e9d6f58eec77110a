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
