"""The cross-backend run: rank-1 layers with fixed weights and fixed noise, on the current Keras backend.

    KERAS_BACKEND=jax python -m tests.cross_backend_run OUT.npz

`tests/test_cross_backend.py` runs this module once per backend (TensorFlow,
JAX, PyTorch), each in its own process, and compares the files.

Every weight is set from NumPy (`RandomState` seeded by the case and the
weight's name), so the three processes hold the same float32 weights. The
sampled factors need the same noise too, and `keras.random` cannot give it:
its streams are the backend's own (TensorFlow's stateless Philox, JAX's
threefry, PyTorch's generator), so one seed draws different numbers on each
backend. `portable_noise()` therefore swaps `keras.random.normal` for NumPy
noise keyed by the seed value the layer's `SeedGenerator` hands out (it
still calls `SeedGenerator.next()`, advancing the generator exactly as
`keras.random` does). Everything else, the draw loc + scale * eps, the
per-member or per-example selection, the rank-1 maths and the KL, is the
library's own code on each backend.

Written to OUT.npz, per case: the outputs in training mode (sampled factors)
and at inference, the layer losses (the KL terms) of each call, how many
noise tensors each call drew, and the weights as the layer holds them.
"""

import contextlib
import sys
import zlib

import keras
import numpy as np

K = 3  # ensemble size
B = 2  # examples per member
TRAIN_SIZE = 1000  # N: the KL regularizers carry 1 / N
PRIOR_MEAN, PRIOR_STDDEV = 1.0, 0.1


@contextlib.contextmanager
def portable_noise(draws):
    """`keras.random.normal` gives NumPy noise keyed by the seed, the same on every backend.

    Appends (seed, shape) to `draws` for every draw. Any `keras.random.uniform`
    call (Cauchy factors, dropout) fails, so nothing random slips through unpinned.
    """
    original_normal, original_uniform = keras.random.normal, keras.random.uniform

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        if not isinstance(seed, keras.random.SeedGenerator):
            raise AssertionError(f"the layers draw with their SeedGenerator; got seed={seed!r}")
        seed_value = tuple(int(v) for v in keras.ops.convert_to_numpy(seed.next()))
        draws.append((seed_value, tuple(int(d) for d in shape)))
        rng = np.random.RandomState([seed_value[0] % 2**32, seed_value[1] % 2**32, 20240601])
        values = mean + stddev * rng.standard_normal(tuple(shape)).astype(np.float32)
        return keras.ops.convert_to_tensor(values.astype(np.float32), dtype=dtype or "float32")

    def uniform(*args, **kwargs):
        raise AssertionError("keras.random.uniform is not pinned by the cross-backend run")

    keras.random.normal, keras.random.uniform = normal, uniform
    try:
        yield
    finally:
        keras.random.normal, keras.random.uniform = original_normal, original_uniform


def _weight_values(case, variable):
    """Fixed values for one weight, from its case and name (not the backend or creation order)."""
    name = variable.name
    rng = np.random.RandomState(zlib.crc32(f"{case}/{name}".encode()))
    shape = tuple(variable.shape)
    if name == "kl_weight":
        return np.array(0.5 if case == "dense" else 1.0, np.float32)
    if name.endswith("_unconstrained_scale"):
        # softplus of [-3, -0.5]: scales 0.05 to 0.47, samples far from the means.
        return rng.uniform(-3.0, -0.5, shape).astype(np.float32)
    if name.endswith("_loc") or name in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma"):
        return (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    return (0.5 * rng.standard_normal(shape)).astype(np.float32)  # kernels, biases


def _kl_regularizers():
    from rank1_keras.probability.regularizers import NormalKLDivergence

    def kl():
        return NormalKLDivergence(PRIOR_MEAN, PRIOR_STDDEV, scale_factor=1.0 / TRAIN_SIZE)

    return kl


def cases():
    """name -> (layer or RNN to call, the rank-1 layer, input)."""
    from rank1_keras.layers import Conv2DRank1, DenseBatchEnsemble, DenseRank1, LSTMCellRank1

    kl = _kl_regularizers()
    rng = np.random.RandomState(0)

    def dense_input():
        return rng.standard_normal((K * B, 4)).astype(np.float32)

    built = {}
    dense = DenseRank1(5, ensemble_size=K, activation="tanh", inference="mean", seed=7,
                       alpha_regularizer=kl(), gamma_regularizer=kl())
    built["dense"] = (dense, dense, dense_input())
    # Additive, a draw per example, sampling at inference as well (the default).
    dense_additive = DenseRank1(5, ensemble_size=K, use_additive_perturbation=True, sample_per_example=True,
                                seed=8, alpha_regularizer=kl(), gamma_regularizer=kl())
    built["dense_additive_per_example"] = (dense_additive, dense_additive, dense_input())
    conv = Conv2DRank1(4, 3, ensemble_size=K, padding="same", strides=2, activation="relu", inference="mean",
                       seed=9, alpha_regularizer=kl(), gamma_regularizer=kl())
    built["conv2d"] = (conv, conv, rng.standard_normal((K * B, 6, 5, 3)).astype(np.float32))
    cell = LSTMCellRank1(3, ensemble_size=K, inference="mean", seed=10,
                         **{f"{name}_regularizer": kl() for name in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")})
    rnn = keras.layers.RNN(cell, return_sequences=True)
    built["lstm"] = (rnn, cell, rng.standard_normal((K * B, 4, 2)).astype(np.float32))
    batch_ensemble = DenseBatchEnsemble(5, ensemble_size=K, activation="relu", seed=11)
    built["dense_batch_ensemble"] = (batch_ensemble, batch_ensemble, dense_input())
    return built


def _total_loss(layer):
    losses = layer.losses
    if not losses:
        return np.float64(0.0)
    return np.float64(sum(float(keras.ops.convert_to_numpy(loss)) for loss in losses))


def run():
    """Every case's arrays, keyed "<case>/<what>"."""
    keras.utils.set_random_seed(1234)  # the initial weights are overwritten; this pins anything else
    results = {"backend": np.array(keras.backend.backend())}
    for case, (layer, rank1_layer, x) in cases().items():
        layer.build(x.shape)
        names = [v.name for v in layer.weights]
        for variable in layer.weights:
            variable.assign(_weight_values(case, variable))
        results[f"{case}/weight_names"] = np.array(names)
        for variable in layer.weights:
            results[f"{case}/weight/{variable.name}"] = keras.ops.convert_to_numpy(variable.value)
        results[f"{case}/input"] = x
        for mode, training in (("train", True), ("infer", False)):
            draws = []
            with portable_noise(draws):
                y = layer(x, training=training)
            results[f"{case}/{mode}"] = keras.ops.convert_to_numpy(y)
            results[f"{case}/{mode}_loss"] = _total_loss(layer)
            results[f"{case}/{mode}_loss_count"] = np.int64(len(layer.losses))
            # One row per noise tensor drawn: the seed it was keyed by, and its size.
            results[f"{case}/{mode}_draws"] = np.array(
                [seed + (int(np.prod(shape)),) for seed, shape in draws], np.int64
            ).reshape(-1, 3)
        results[f"{case}/seed_state"] = keras.ops.convert_to_numpy(rank1_layer.factor_seed_generator.state).astype(np.int64)
    return results


def main(argv):
    if len(argv) != 2:
        raise SystemExit(f"usage: KERAS_BACKEND=<backend> python -m tests.cross_backend_run OUT.npz; got {argv[1:]}")
    np.savez(argv[1], **run())


if __name__ == "__main__":
    main(sys.argv)
