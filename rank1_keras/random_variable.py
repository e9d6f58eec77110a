"""Edward2-style random variables backed by `tensorflow_probability`.

A `RandomVariable` pairs a TFP distribution with one value drawn from it. It
converts to a tensor wherever TensorFlow or Keras expects one, so layer code can
do arithmetic with it directly, while regularizers can still read the
distribution to compute a KL term.
"""

import tensorflow as tf


class RandomVariable:
    """A TFP distribution together with a value drawn from it.

    The value is drawn once, at construction (or given), so every use of the
    random variable in one forward pass sees the same sample. Drawing is
    reparameterised whenever the distribution supports it, so gradients flow
    from the value to the distribution's parameters.

    Args:
        distribution: a `tfp.distributions.Distribution`.
        sample_shape: shape of the sample to draw when `value` is not given,
            prepended to the distribution's batch and event shape.
        value: an optional tensor to use as the value instead of a draw.
        seed: an optional stateless seed (int32 tensor of shape `(2,)`) for the
            draw; `None` uses TensorFlow's global generator.

    Example:

    >>> import tensorflow_probability as tfp
    >>> rv = RandomVariable(tfp.distributions.Normal(0.0, 1.0), value=0.5)
    >>> float(rv + 1.0)
    1.5
    """

    def __init__(self, distribution, sample_shape=(), value=None, seed=None):
        self._distribution = distribution
        self._sample_shape = tuple(sample_shape)
        if value is None:
            value = distribution.sample(self._sample_shape, seed=seed)
        else:
            value = tf.convert_to_tensor(value, dtype=distribution.dtype)
        self._value = value

    @property
    def distribution(self):
        """The `tfp.distributions.Distribution` the value was drawn from."""
        return self._distribution

    @property
    def value(self):
        """The drawn (or given) value, a `tf.Tensor`."""
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
        return self._distribution.sample(sample_shape, seed=seed)

    def log_prob(self, x=None):
        """Log density of `x` (default: of the value) under the distribution."""
        return self._distribution.log_prob(self._value if x is None else x)

    def numpy(self):
        return self._value.numpy()

    def __tf_tensor__(self, dtype=None, name=None):
        return tf.convert_to_tensor(self._value, dtype=dtype, name=name)

    def __array__(self, dtype=None, copy=None):
        array = self._value.numpy()
        return array if dtype is None else array.astype(dtype)

    def __float__(self):
        return float(self._value)

    def __repr__(self):
        return (
            f"<RandomVariable distribution={self._distribution.name} "
            f"shape={self._value.shape} dtype={self._value.dtype.name}>"
        )

    # Arithmetic delegates to the value so a random variable reads like the
    # tensor it stands for (Edward2 semantics).
    def __neg__(self):
        return -self._value

    def __abs__(self):
        return tf.abs(self._value)

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
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "matmul": lambda a, b: tf.linalg.matmul(a, b),
}.items():
    _forward, _reflected = _binary_operator(_operator)
    setattr(RandomVariable, f"__{_name}__", _forward)
    setattr(RandomVariable, f"__r{_name}__", _reflected)


tf.register_tensor_conversion_function(
    RandomVariable,
    lambda rv, dtype=None, name=None, as_ref=False: tf.convert_to_tensor(
        rv.value, dtype=dtype, name=name
    ),
)
