"""Trains a converted model on JAX, on one device or data-parallel over two; writes its weights.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python -m tests.data_parallel_run parallel out_dir      # out_dir/<method>.npz, each method

Run by tests/test_data_parallel.py (a process of its own: JAX fixes its device count when it starts).
"""

import os
import sys

import keras
import numpy as np

import rank1_keras as r1


METHODS = ("batchensemble", "rank1")


def main(mode, directory):
    import jax

    if mode == "parallel":
        devices = jax.devices("cpu")
        if len(devices) != 2:
            raise SystemExit(f"expected 2 CPU devices (XLA_FLAGS); got {devices}")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    for method in METHODS:
        train(method, os.path.join(directory, f"{method}.npz"))


def train(method, path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    options = {"train_size": len(x)} if method == "rank1" else {}
    model = r1.convert(plain, method, ensemble_size=4, **options)
    model.compile(keras.optimizers.SGD(0.05), r1.AverageNLL(4))
    initial = [keras.ops.convert_to_numpy(v) for v in model.weights]
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[r1.KLAnnealing(1)])
    np.savez(path, *[keras.ops.convert_to_numpy(v) for v in model.weights], *initial)


if __name__ == "__main__":
    main(*sys.argv[1:])
