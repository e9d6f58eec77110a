"""Edward2-style random variables: a distribution and one value drawn from it.

A `RandomVariable` pairs a distribution (`rank1_keras.probability.distributions`: TFP's on
TensorFlow, the same maths in `keras.ops` on JAX and PyTorch) with one value.
Layer code does arithmetic with it as with the tensor it stands for, while
regularizers read the distribution to compute a KL term. On TensorFlow it
also converts to a tensor wherever TensorFlow expects one.
"""

import keras
from keras import ops

from rank1_keras.probability import distributions


class RandomVariable:
    """A distribution together with a value drawn from it.

    The value is drawn once, at construction (or given), so every use of the
    random variable in one forward pass sees the same sample. The draw is
    reparameterised (`distributions.reparameterized`: standard noise from
    `keras.random`), so gradients flow from the value to the distribution's
    parameters, and the same seed gives the same value again (on one
    backend: each backend's `keras.random` has its own generator).

    Args:
        distribution: a distribution from `rank1_keras.probability.distributions` (on
            TensorFlow, any `tfp.distributions.Distribution`).
        sample_shape: shape of the sample to draw when `value` is not given,
            prepended to the distribution's batch and event shape.
        value: an optional tensor to use as the value instead of a draw.
        seed: a `keras.random.SeedGenerator` or an int for the draw (None:
            Keras' global generator).

    Example:

    >>> from rank1_keras.probability import distributions
    >>> rv = RandomVariable(distributions.normal(0.0, 1.0), value=0.5)
    >>> float(rv + 1.0)
    1.5
    """

    def __init__(self, distribution, sample_shape=(), value=None, seed=None):
        self._distribution = distribution
        self._sample_shape = tuple(sample_shape)
        if value is None:
            value = distributions.reparameterized(distribution, self._sample_shape, seed)
        else:
            value = ops.convert_to_tensor(value, dtype=distribution.dtype)
        self._value = value

    @property
    def distribution(self):
        """The distribution the value was drawn from."""
        return self._distribution

    @property
    def value(self):
        """The drawn (or given) value, a backend tensor."""
        return self._value

    @property
    def sample_shape(self):
        return self._sample_shape

    @property
    def shape(self):
        return self._value.shape

    @property
    def dtype(self):
        return self._value.dtype

    def sample(self, sample_shape=(), seed=None):
        """Draws new values from the distribution; `value` is unchanged."""
        return distributions.reparameterized(self._distribution, sample_shape, seed)

    def log_prob(self, x=None):
        """Log density of `x` (default: of the value) under the distribution."""
        return self._distribution.log_prob(self._value if x is None else x)

    def numpy(self):
        return ops.convert_to_numpy(self._value)

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __jax_array__(self):
        return self._value

    def __float__(self):
        return float(self.numpy())

    def __repr__(self):
        return (
            f"<RandomVariable distribution={self._distribution.name} "
            f"shape={tuple(self._value.shape)} dtype={keras.backend.standardize_dtype(self._value.dtype)}>"
        )

    # Arithmetic delegates to the value so a random variable reads like the
    # tensor it stands for (Edward2 semantics).
    def __neg__(self):
        return -self._value

    def __abs__(self):
        return ops.abs(self._value)

    def __getitem__(self, key):
        return self._value[key]


def _binary_operator(operator):
    def forward(self, other):
        return operator(self._value, _as_tensor(other))

    def reflected(self, other):
        return operator(_as_tensor(other), self._value)

    return forward, reflected


def _as_tensor(x):
    return x.value if isinstance(x, RandomVariable) else x


for _name, _operator in {
    "add": ops.add,
    "sub": ops.subtract,
    "mul": ops.multiply,
    "truediv": ops.divide,
    "pow": ops.power,
    "matmul": ops.matmul,
}.items():
    _forward, _reflected = _binary_operator(_operator)
    setattr(RandomVariable, f"__{_name}__", _forward)
    setattr(RandomVariable, f"__r{_name}__", _reflected)


if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    def _tf_tensor(self, dtype=None, name=None):
        return tf.convert_to_tensor(self._value, dtype=dtype, name=name)

    RandomVariable.__tf_tensor__ = _tf_tensor
    tf.register_tensor_conversion_function(
        RandomVariable,
        lambda rv, dtype=None, name=None, as_ref=False: tf.convert_to_tensor(rv.value, dtype=dtype, name=name),
    )
