"""Tests for RandomVariable and the rank-1 initializers.

References are closed forms or float64 NumPy computations written here,
independently of the library code.
"""

import math

import keras
import numpy as np
import pytest

from rank1_keras.probability import distributions, initializers
from rank1_keras.probability.initializers import RandomSign, TrainableCauchy, TrainableNormal
from rank1_keras.probability.random_variable import RandomVariable
from tests.backend_utils import gradients, numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _softplus(x):
    x = np.asarray(x, np.float64)
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _normal_log_pdf(x, loc, scale):
    x, loc, scale = (np.asarray(a, np.float64) for a in (x, loc, scale))
    return -0.5 * np.log(2.0 * np.pi) - np.log(scale) - 0.5 * ((x - loc) / scale) ** 2


def _cauchy_log_pdf(x, loc, scale):
    x, loc, scale = (np.asarray(a, np.float64) for a in (x, loc, scale))
    return -np.log(np.pi * scale) - np.log1p(((x - loc) / scale) ** 2)


def _standard_normal(shape, seed):
    """The standard noise keras.random draws for `seed` (an int, or a fresh SeedGenerator(seed))."""
    return numpy(keras.random.normal(shape, seed=seed))


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _built(initializer, shape=(4, 5), name="alpha"):
    layer = keras.layers.Layer()
    initializer.build(layer, name, shape)
    return layer, initializer


# ---------------------------------------------------------------------------
# RandomVariable
# ---------------------------------------------------------------------------


@pytest.fixture
def normal_rv():
    loc = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.25]], np.float32)
    scale = np.array([[1.0, 0.5, 2.0], [0.25, 3.0, 1.5]], np.float32)
    value = np.array([[0.1, -0.2, 0.3], [1.4, 2.0, -1.0]], np.float32)
    distribution = distributions.normal(loc, scale, event_ndims=2)
    return RandomVariable(distribution, value=value), loc, scale, value


def test_value_and_distribution_are_the_given_ones(normal_rv):
    rv, loc, scale, value = normal_rv
    np.testing.assert_array_equal(numpy(rv.value), value)
    np.testing.assert_array_equal(rv.numpy(), value)
    np.testing.assert_array_equal(np.asarray(rv), value)
    assert np.asarray(rv, dtype=np.float64).dtype == np.float64
    np.testing.assert_allclose(numpy(rv.distribution.mean()), loc)
    np.testing.assert_allclose(numpy(rv.distribution.stddev()), scale)
    assert _dtype(rv) == "float32"
    assert rv.sample_shape == ()


def test_log_prob_of_value_matches_numpy(normal_rv):
    rv, loc, scale, value = normal_rv
    expected = _normal_log_pdf(value, loc, scale).sum()
    np.testing.assert_allclose(float(numpy(rv.log_prob())), expected, rtol=1e-6)
    other = value + 0.5
    expected_other = _normal_log_pdf(other, loc, scale).sum()
    np.testing.assert_allclose(float(numpy(rv.log_prob(other))), expected_other, rtol=1e-6)


@pytest.mark.parametrize("seed", [7, "generator"])
def test_drawn_value_uses_the_seed_and_sample_shape(seed):
    loc, scale = np.array([0.0, 10.0], np.float32), np.array([1.0, 2.0], np.float32)
    distribution = distributions.normal(loc, scale)

    def make_seed():  # an int, or a fresh generator with the same state each time
        return 7 if seed == 7 else keras.random.SeedGenerator(7)

    rv = RandomVariable(distribution, sample_shape=(3,), seed=make_seed())
    # loc + scale * (the standard noise keras.random gives for that seed), in float32.
    expected = loc + scale * _standard_normal((3, 2), make_seed())
    np.testing.assert_array_equal(numpy(rv.value), expected)
    assert rv.sample_shape == (3,)
    assert tuple(rv.value.shape) == (3, 2)


def test_drawn_value_has_the_distribution_moments():
    distribution = distributions.normal(np.float32(2.0), np.float32(0.5))
    rv = RandomVariable(distribution, sample_shape=(100_000,), seed=keras.random.SeedGenerator(1))
    values = rv.numpy().astype(np.float64)
    # 5 standard errors of the mean and of the sample stddev.
    assert abs(values.mean() - 2.0) < 5 * 0.5 / math.sqrt(values.size)
    assert abs(values.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * values.size)


def test_sample_draws_new_values_and_leaves_value_unchanged(normal_rv):
    rv, loc, scale, value = normal_rv
    draws = numpy(rv.sample((2,), seed=keras.random.SeedGenerator(3)))
    np.testing.assert_array_equal(draws, loc + scale * _standard_normal((2, 2, 3), keras.random.SeedGenerator(3)))
    assert draws.shape == (2, 2, 3)
    assert not np.allclose(draws[0], draws[1])
    np.testing.assert_array_equal(numpy(rv.value), value)
    # Without a seed: fresh draws each time.
    assert not np.allclose(numpy(rv.sample()), numpy(rv.sample()))


def test_arithmetic_delegates_to_the_value(normal_rv):
    rv, _, _, v = normal_rv
    v64 = v.astype(np.float64)
    m = np.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.25]], np.float32)
    cases = {
        "add": (rv + 1.5, v64 + 1.5),
        "radd": (1.5 + rv, 1.5 + v64),
        "sub": (rv - 2.0, v64 - 2.0),
        "rsub": (2.0 - rv, 2.0 - v64),
        "mul": (rv * 3.0, v64 * 3.0),
        "rmul": (3.0 * rv, 3.0 * v64),
        "truediv": (rv / 4.0, v64 / 4.0),
        "rtruediv": (4.0 / rv, 4.0 / v64),
        "pow": (rv**2, v64**2),
        "rpow": (2.0**rv, 2.0**v64),
        "matmul": (rv @ m, v64 @ m.astype(np.float64)),
        "rmatmul": (m.tolist() @ rv, m.astype(np.float64) @ v64),  # list: uses __rmatmul__
        "neg": (-rv, -v64),
        "abs": (abs(rv), np.abs(v64)),
        "getitem": (rv[1, 1:], v64[1, 1:]),
        "rv_plus_rv": (rv + rv, 2.0 * v64),
        "rv_times_tensor": (rv * keras.ops.convert_to_tensor(v), v64 * v64),
        "tensor_times_rv": (keras.ops.convert_to_tensor(v) * rv, v64 * v64),
    }
    for name, (got, expected) in cases.items():
        np.testing.assert_allclose(numpy(got), expected, rtol=1e-6, err_msg=name)


def test_scalar_random_variable_converts_to_float():
    rv = RandomVariable(distributions.normal(0.0, 1.0), value=0.5)
    assert float(rv) == 0.5
    assert float(rv + 1.0) == 1.5


@pytest.mark.backends("tensorflow")
def test_convert_to_tensor_and_tf_ops(normal_rv):
    import tensorflow as tf

    rv, _, _, v = normal_rv
    tensor = tf.convert_to_tensor(rv)
    assert isinstance(tensor, tf.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), v)
    np.testing.assert_allclose(tf.reduce_sum(rv).numpy(), v.astype(np.float64).sum(), rtol=1e-6)
    np.testing.assert_allclose(tf.exp(rv).numpy(), np.exp(v.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(
        tf.linalg.matmul(rv, rv, transpose_b=True).numpy(), v.astype(np.float64) @ v.T, rtol=1e-6
    )


def test_keras_ops_accept_a_random_variable(normal_rv):
    rv, _, _, v = normal_rv
    v64 = v.astype(np.float64)
    np.testing.assert_allclose(numpy(keras.ops.add(rv, 1.0)), v64 + 1.0, rtol=1e-6)
    np.testing.assert_allclose(numpy(keras.ops.sum(rv)), v64.sum(), rtol=1e-6)
    np.testing.assert_allclose(numpy(keras.ops.matmul(rv, keras.ops.transpose(rv))), v64 @ v64.T, rtol=1e-6)
    np.testing.assert_allclose(numpy(keras.ops.tanh(rv)), np.tanh(v64), rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rv), v64, rtol=0)


def test_gradients_flow_through_the_value_to_the_parameters():
    loc = keras.Variable(np.array([0.5, -1.0, 2.0], np.float32))
    scale = keras.Variable(np.array([1.0, 0.5, 2.0], np.float32))
    weights = keras.ops.convert_to_tensor(np.array([1.0, -2.0, 3.0], np.float32))

    def draw():
        return RandomVariable(distributions.normal(loc, scale), seed=5)

    grad_loc, grad_scale = gradients(lambda: keras.ops.sum(draw() * weights), [loc, scale])
    # The same int seed gives the same draw outside the gradient computation.
    eps = (draw().numpy().astype(np.float64) - numpy(loc)) / numpy(scale)
    np.testing.assert_allclose(numpy(grad_loc), numpy(weights), rtol=1e-6)
    np.testing.assert_allclose(numpy(grad_scale), numpy(weights) * eps, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# TrainableNormal / TrainableCauchy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TrainableNormal, TrainableCauchy])
def test_trainable_variables_are_the_layer_weights(cls):
    layer, init = _built(cls(), shape=(3, 6))
    assert len(layer.weights) == 2
    assert {id(w) for w in layer.weights} == {id(v) for v in init.variables}
    assert {id(w) for w in layer.trainable_weights} == {id(v) for v in init.variables}
    assert init.parameters["loc"] is init.loc
    for variable in init.variables:
        assert tuple(variable.shape) == (3, 6)
    assert init.shape == (3, 6)
    assert init.built


@pytest.mark.parametrize("stddev", [1e-3, 0.05, 0.3, 2.0])
def test_trainable_normal_initial_scale_is_initial_stddev(stddev):
    _, init = _built(TrainableNormal(initial_stddev=stddev), shape=(4, 5))
    raw = numpy(init.parameters["unconstrained_scale"])
    np.testing.assert_allclose(_softplus(raw), stddev, rtol=0, atol=1e-7 + 1e-7 * stddev)
    np.testing.assert_allclose(numpy(init.scale), stddev, rtol=0, atol=1e-7 + 1e-7 * stddev)
    np.testing.assert_allclose(numpy(init.distribution().stddev()), stddev, rtol=0, atol=1e-7 + 1e-7 * stddev)


@pytest.mark.parametrize("scale", [1e-3, 0.2])
def test_trainable_cauchy_initial_scale(scale):
    _, init = _built(TrainableCauchy(initial_scale=scale), shape=(2, 3))
    raw = numpy(init.parameters["unconstrained_scale"])
    np.testing.assert_allclose(_softplus(raw), scale, rtol=0, atol=1e-7 + 1e-7 * scale)
    distribution = init.distribution()
    base = distribution.distribution
    if distributions.uses_tfp():
        import tensorflow_probability as tfp

        assert isinstance(base, tfp.distributions.Cauchy)
    else:
        assert isinstance(base, distributions.Cauchy)
    np.testing.assert_allclose(numpy(base.scale), scale, rtol=1e-6)


@pytest.mark.parametrize("cls", [TrainableNormal, TrainableCauchy])
def test_random_sign_mean_initializer_gives_exact_signs(cls):
    _, ones = _built(cls(RandomSign(positive_probability=1.0)), shape=(4, 7))
    np.testing.assert_array_equal(numpy(ones.loc), np.ones((4, 7)))
    _, minus = _built(cls(RandomSign(positive_probability=0.0)), shape=(4, 7))
    np.testing.assert_array_equal(numpy(minus.loc), -np.ones((4, 7)))


def test_string_and_keras_mean_initializers():
    _, init = _built(TrainableNormal("ones"), shape=(2, 3))
    np.testing.assert_array_equal(numpy(init.loc), np.ones((2, 3)))
    _, init = _built(TrainableNormal(keras.initializers.Constant(0.25)), shape=(2, 3))
    np.testing.assert_array_equal(numpy(init.loc), np.full((2, 3), 0.25))
    _, init = _built(TrainableNormal("random_sign"), shape=(8, 64))
    assert set(np.unique(numpy(init.loc))) == {-1.0, 1.0}


@pytest.mark.parametrize("cls", [TrainableNormal, TrainableCauchy])
def test_default_mean_initializer_is_normal_one_half(cls):
    _, init = _built(cls(seed=123), shape=(4, 4096))
    loc = numpy(init.loc).astype(np.float64)
    n = loc.size
    assert abs(loc.mean() - 1.0) < 5 * 0.5 / math.sqrt(n)
    assert abs(loc.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * n)
    # Roughly Gaussian: about 68.3% within one stddev of the mean.
    within = np.mean(np.abs(loc - 1.0) < 0.5)
    assert abs(within - 0.6827) < 5 * math.sqrt(0.6827 * 0.3173 / n)


def test_seeded_default_mean_initializer_is_reproducible():
    _, a = _built(TrainableNormal(seed=5), shape=(3, 4))
    _, b = _built(TrainableNormal(seed=5), shape=(3, 4))
    _, c = _built(TrainableNormal(seed=6), shape=(3, 4))
    np.testing.assert_array_equal(numpy(a.loc), numpy(b.loc))
    assert not np.allclose(numpy(a.loc), numpy(c.loc))


def test_call_returns_a_fresh_random_variable_with_the_posterior():
    _, init = _built(TrainableNormal(initial_stddev=0.3, seed=1), shape=(4, 5))
    rv1, rv2 = init(), init()
    assert isinstance(rv1, RandomVariable)
    assert not np.allclose(rv1.numpy(), rv2.numpy())
    np.testing.assert_allclose(numpy(rv1.distribution.mean()), numpy(init.loc))
    np.testing.assert_allclose(numpy(rv1.distribution.stddev()), 0.3, rtol=1e-6)
    assert tuple(rv1.distribution.event_shape) == (4, 5)
    # A seeded call is loc + scale * (keras.random's standard noise for that seed).
    loc, scale = numpy(init.loc), numpy(init.scale)
    np.testing.assert_array_equal(
        init(sample_shape=(2,), seed=keras.random.SeedGenerator(9)).numpy(),
        loc + scale * _standard_normal((2, 4, 5), keras.random.SeedGenerator(9)),
    )
    # Same shape argument is accepted, another one is rejected.
    init(shape=(4, 5))
    with pytest.raises(ValueError, match="shape"):
        init(shape=(5, 4))


def test_log_prob_of_trainable_normal_matches_numpy():
    _, init = _built(TrainableNormal(initial_stddev=0.2, seed=2), shape=(3, 4))
    rv = init(seed=1)
    expected = _normal_log_pdf(rv.numpy(), numpy(init.loc), 0.2).sum()
    np.testing.assert_allclose(float(numpy(rv.log_prob())), expected, rtol=1e-5)


def test_log_prob_of_trainable_cauchy_matches_numpy():
    _, init = _built(TrainableCauchy(initial_scale=0.2, seed=2), shape=(3, 4))
    rv = init(seed=1)
    expected = _cauchy_log_pdf(rv.numpy(), numpy(init.loc), 0.2).sum()
    np.testing.assert_allclose(float(numpy(rv.log_prob())), expected, rtol=1e-5)


def test_sample_moments_of_trainable_normal():
    _, init = _built(TrainableNormal(RandomSign(1.0), initial_stddev=0.3), shape=(2, 3))
    samples = init(sample_shape=(50_000,), seed=4).numpy().astype(np.float64)
    n = samples.shape[0]
    np.testing.assert_allclose(samples.mean(0), 1.0, atol=5 * 0.3 / math.sqrt(n))
    np.testing.assert_allclose(samples.std(0), 0.3, atol=5 * 0.3 / math.sqrt(2 * n))


@pytest.mark.parametrize("cls", [TrainableNormal, TrainableCauchy])
def test_reparameterised_gradients_reach_loc_and_scale(cls):
    layer, init = _built(cls(seed=3), shape=(3, 4))
    # Start from a non-trivial scale so the gradient is well away from zero.
    init.parameters["unconstrained_scale"].assign(np.full((3, 4), -0.5, np.float32))
    weights = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    weights_tensor = keras.ops.convert_to_tensor(weights)
    loc, raw = init.parameters["loc"], init.parameters["unconstrained_scale"]
    grad_loc, grad_raw = gradients(lambda: keras.ops.sum(init(seed=2) * weights_tensor), [loc, raw])
    assert grad_loc is not None and grad_raw is not None
    grad_loc, grad_raw = numpy(grad_loc), numpy(grad_raw)
    # z = loc + softplus(raw) * eps, so dL/dloc = w, dL/draw = w * eps * sigmoid(raw).
    # The int seed gives the same draw again outside the gradient computation.
    scale = _softplus(numpy(raw))
    eps = (init(seed=2).numpy().astype(np.float64) - numpy(loc)) / scale
    np.testing.assert_allclose(grad_loc, weights, rtol=1e-6)
    np.testing.assert_allclose(grad_raw, weights * eps * _sigmoid(numpy(raw)), rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(grad_raw[weights != 0]) > 0)


def test_build_twice_and_call_unbuilt_raise():
    init = TrainableNormal()
    with pytest.raises(ValueError, match="built"):
        init()
    layer, init = _built(init)
    with pytest.raises(ValueError, match="already built"):
        init.build(layer, "beta", (4, 5))


def test_trainable_normal_rejects_bad_initial_stddev_naming_it():
    # The user's argument is `initial_stddev`; the message must name it.
    for bad in [0.0, -1.0, float("inf"), float("nan")]:
        with pytest.raises(ValueError, match="initial_stddev"):
            TrainableNormal(initial_stddev=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_trainable_cauchy_rejects_bad_initial_scale_naming_it(bad):
    with pytest.raises(ValueError, match="initial_scale"):
        TrainableCauchy(initial_scale=bad)


# ---------------------------------------------------------------------------
# RandomSign
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_random_sign_frequency(p):
    values = numpy(RandomSign(positive_probability=p, seed=17)((100_000,)))
    assert set(np.unique(values)) <= {-1.0, 1.0}
    assert set(np.unique(values)) == {-1.0, 1.0}
    n = values.size
    frequency = np.mean(values == 1.0)
    assert abs(frequency - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_random_sign_extremes_dtype_and_determinism():
    np.testing.assert_array_equal(numpy(RandomSign(1.0)((3, 4))), np.ones((3, 4)))
    np.testing.assert_array_equal(numpy(RandomSign(0.0)((3, 4))), -np.ones((3, 4)))
    init = RandomSign(0.5, seed=3)
    a, b = numpy(init((50,))), numpy(init((50,)))
    np.testing.assert_array_equal(a, b)
    c = numpy(RandomSign(0.5, seed=4)((50,)))
    assert not np.array_equal(a, c)


# JAX runs with 64-bit types off (jax_enable_x64), so no float64 tensor exists there to ask for.
@pytest.mark.backends("tensorflow", "torch")
def test_random_sign_honours_a_float64_dtype():
    values = RandomSign(0.5, seed=3)((4, 4), dtype="float64")
    assert _dtype(values) == "float64"
    assert set(np.unique(numpy(values))) <= {-1.0, 1.0}


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_random_sign_rejects_bad_probability(bad):
    with pytest.raises(ValueError, match="positive_probability"):
        RandomSign(positive_probability=bad)


# ---------------------------------------------------------------------------
# get / serialisation
# ---------------------------------------------------------------------------


def test_get_by_string():
    normal = initializers.get("trainable_normal")
    assert type(normal) is TrainableNormal
    assert normal.initial_scale == 1e-3
    assert type(initializers.get("trainable_cauchy")) is TrainableCauchy
    sign = initializers.get("random_sign")
    assert type(sign) is RandomSign and sign.positive_probability == 0.5
    ones = initializers.get("ones")
    np.testing.assert_array_equal(numpy(ones((2, 2))), np.ones((2, 2)))
    assert isinstance(initializers.get("glorot_uniform"), keras.initializers.GlorotUniform)
    assert initializers.get(None) is None
    # Each string lookup returns a new trainable instance.
    assert initializers.get("trainable_normal") is not initializers.get("trainable_normal")


def test_get_by_dict():
    config = initializers.serialize(TrainableNormal(RandomSign(0.7, seed=3), initial_stddev=0.05, seed=9))
    init = initializers.get(config)
    assert type(init) is TrainableNormal
    assert init.initial_scale == 0.05 and init.seed == 9
    assert type(init.loc_initializer) is RandomSign
    assert init.loc_initializer.positive_probability == 0.7
    sign = initializers.get(initializers.serialize(RandomSign(0.2, seed=1)))
    assert type(sign) is RandomSign and sign.positive_probability == 0.2 and sign.seed == 1


@pytest.mark.parametrize("cls", [TrainableNormal, TrainableCauchy])
def test_get_clones_a_trainable_instance(cls):
    original = cls(RandomSign(1.0), 0.25, seed=4)
    layer, original = _built(original, shape=(2, 3))
    clone = initializers.get(original)
    assert type(clone) is cls
    assert clone is not original
    assert clone.get_config() == original.get_config()
    assert not clone.built
    other_layer, clone = _built(clone, shape=(2, 3))
    # Separate variables, on separate layers.
    assert not {id(v) for v in clone.variables} & {id(v) for v in original.variables}
    clone.loc.assign(np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(numpy(original.loc), np.ones((2, 3)))
    assert len(layer.weights) == 2 and len(other_layer.weights) == 2


@pytest.mark.parametrize(
    "initializer",
    [
        TrainableNormal(RandomSign(0.7, seed=3), initial_stddev=0.05, seed=9),
        TrainableNormal(),
        TrainableCauchy(keras.initializers.Constant(0.5), initial_scale=0.02, seed=2),
        RandomSign(0.4, seed=8),
    ],
)
def test_serialization_round_trip(initializer):
    config = keras.saving.serialize_keras_object(initializer)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(initializer)
    assert restored.get_config() == initializer.get_config()
    if isinstance(initializer, RandomSign):
        np.testing.assert_array_equal(numpy(restored((64,))), numpy(initializer((64,))))


def test_round_trip_reproduces_seeded_means():
    original = TrainableNormal(RandomSign(0.5, seed=21), initial_stddev=0.1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    _, a = _built(original, shape=(4, 16))
    _, b = _built(restored, shape=(4, 16))
    np.testing.assert_array_equal(numpy(a.loc), numpy(b.loc))
    np.testing.assert_allclose(numpy(b.scale), 0.1, rtol=1e-6)


@pytest.mark.parametrize("identifier", ["no_such_initializer", 42])
def test_get_unknown_raises_value_error_naming_the_argument(identifier):
    with pytest.raises(ValueError, match="alpha_initializer"):
        initializers.get(identifier, "alpha_initializer")
    with pytest.raises(ValueError, match="initializer"):
        initializers.get(identifier)


def test_get_unknown_class_in_a_config_dict_raises_value_error_naming_the_argument():
    # An unknown class name is an unknown identifier too (documented: ValueError
    # naming `argument_name`), whether given as a string or in a config dict.
    with pytest.raises(ValueError, match="alpha_initializer"):
        initializers.get({"class_name": "NoSuchInit", "config": {}}, "alpha_initializer")


def test_get_known_class_with_bad_config_reports_the_bad_argument():
    config = initializers.serialize(RandomSign(0.5))
    config["config"]["positive_probability"] = 2.0
    with pytest.raises(ValueError, match="positive_probability"):
        initializers.get(config, "alpha_initializer")


def test_factor_mean_normal_draws_its_stddev_and_names_a_bad_one():
    values = keras.ops.convert_to_numpy(initializers.factor_mean_normal(stddev=0.25, seed=7)((4, 4096))).astype(np.float64)
    n = values.size
    assert abs(values.mean() - 1.0) < 5 * 0.25 / math.sqrt(n)
    assert abs(values.std() - 0.25) < 5 * 0.25 / math.sqrt(2 * n)
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="stddev"):
            initializers.factor_mean_normal(stddev=bad)
