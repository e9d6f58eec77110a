"""The distributions behind the random variables, on every Keras backend.

On TensorFlow they are `tensorflow_probability` distributions (Edward2's
design: a random variable carries a TFP distribution, so every TFP method is
at hand). On JAX and PyTorch they are the classes below: the same maths (the
few families and methods rank-1 factors need) in `keras.ops`, with TFP's
method names, so the code that uses them is one.

Draws never come from the distribution's own sampler: `reparameterized`
turns standard noise drawn with `keras.random` (the layer's `SeedGenerator`)
into a value, loc + scale * eps for a Normal, loc + scale * tan(pi (u - 1/2))
for a Cauchy. The same weights and the same seed therefore give the same
numbers again on one backend; across backends only the noise differs
(`keras.random` uses each backend's own generator, so one seed draws other
numbers on TensorFlow, JAX and PyTorch), and given the same noise the
backends agree (tests/test_cross_backend.py).

    q = normal(loc, scale, event_ndims=2)      # TFP on TensorFlow, `Normal` elsewhere
    value = reparameterized(q, (), seed_generator)
    kl = kl_divergence(q, normal(1.0 + 0 * loc, 0.1 + 0 * loc, event_ndims=2))
"""

import math

import keras
import numpy as np
from keras import ops

_LOG_PI = math.log(math.pi)
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def uses_tfp():
    """Whether distributions are TFP's: on the TensorFlow backend."""
    return keras.backend.backend() == "tensorflow"


class _LocationScale:
    """A location-scale family (independent entries) in keras.ops, with TFP's method names."""

    name = None

    def __init__(self, loc, scale):
        self.loc = ops.convert_to_tensor(loc)
        self.scale = ops.cast(ops.convert_to_tensor(scale), self.loc.dtype)

    @property
    def dtype(self):
        return self.loc.dtype

    @property
    def batch_shape(self):
        return tuple(np.broadcast_shapes(tuple(ops.shape(self.loc)), tuple(ops.shape(self.scale))))

    @property
    def event_shape(self):
        return ()


class Normal(_LocationScale):
    """N(loc, scale^2) per entry."""

    name = "Normal"

    def log_prob(self, value):
        z = (ops.convert_to_tensor(value, self.dtype) - self.loc) / self.scale
        return -0.5 * z * z - ops.log(self.scale) - _HALF_LOG_TWO_PI

    def mean(self):
        return self.loc + ops.zeros_like(self.scale)

    def mode(self):
        return self.mean()

    def stddev(self):
        return self.scale + ops.zeros_like(self.loc)

    def variance(self):
        return ops.square(self.stddev())


class Cauchy(_LocationScale):
    """Cauchy(loc, scale) per entry (no mean or variance; its mode is loc)."""

    name = "Cauchy"

    def log_prob(self, value):
        z = (ops.convert_to_tensor(value, self.dtype) - self.loc) / self.scale
        return -_LOG_PI - ops.log(self.scale) - ops.log1p(z * z)

    def mode(self):
        return self.loc + ops.zeros_like(self.scale)


class InverseGamma:
    """InverseGamma(concentration, scale): density b^a / Gamma(a) v^(-a-1) exp(-b / v)."""

    name = "InverseGamma"

    def __init__(self, concentration, scale):
        self.concentration = ops.convert_to_tensor(concentration)
        self.scale = ops.cast(ops.convert_to_tensor(scale), self.concentration.dtype)

    def log_prob(self, value):
        a, b = self.concentration, self.scale
        value = ops.convert_to_tensor(value, a.dtype)
        return a * ops.log(b) - _log_gamma(a) - (a + 1.0) * ops.log(value) - b / value


def _log_gamma(x):
    """log Gamma(x) for x > 0 (Lanczos, g = 7, 9 terms: float32-exact in our range)."""
    coefficients = (0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
                    -176.61503916999185, 12.507343278686905, -0.13857109526572012,
                    9.9843695780195716e-6, 1.5056327351493116e-7)
    x = x - 1.0
    series = coefficients[0] + sum(c / (x + i) for i, c in enumerate(coefficients[1:], start=1))
    t = x + 7.5
    return _HALF_LOG_TWO_PI + (x + 0.5) * ops.log(t) - t + ops.log(series)


class Independent:
    """Treats the last `reinterpreted_batch_ndims` axes of `distribution` as one event (log_prob sums them)."""

    def __init__(self, distribution, reinterpreted_batch_ndims):
        self.distribution = distribution
        self.reinterpreted_batch_ndims = int(reinterpreted_batch_ndims)
        self.name = f"Independent{distribution.name}"

    @property
    def dtype(self):
        return self.distribution.dtype

    @property
    def event_shape(self):
        shape = self.distribution.batch_shape
        return tuple(shape[len(shape) - self.reinterpreted_batch_ndims:])

    def _sum_event(self, value):
        if not self.reinterpreted_batch_ndims:
            return value
        return ops.sum(value, axis=tuple(range(-self.reinterpreted_batch_ndims, 0)))

    def log_prob(self, value):
        return self._sum_event(self.distribution.log_prob(value))

    def __getattr__(self, name):  # mean, mode, stddev, variance: those of the entries
        if name in ("mean", "mode", "stddev", "variance"):
            return getattr(self.distribution, name)
        raise AttributeError(name)


# -- what the layers and regularizers call ---------------------------------------


def _family(name, event_ndims, **parameters):
    if uses_tfp():
        import tensorflow_probability as tfp

        base = getattr(tfp.distributions, name)(**parameters)
        return tfp.distributions.Independent(base, reinterpreted_batch_ndims=event_ndims)
    return Independent({"Normal": Normal, "Cauchy": Cauchy}[name](**parameters), event_ndims)


def normal(loc, scale, event_ndims=0):
    """N(loc, scale^2) entries, the last `event_ndims` axes one event: TFP's on TensorFlow."""
    return _family("Normal", event_ndims, loc=loc, scale=scale)


def cauchy(loc, scale, event_ndims=0):
    """Cauchy(loc, scale) entries, the last `event_ndims` axes one event: TFP's on TensorFlow."""
    return _family("Cauchy", event_ndims, loc=loc, scale=scale)


def inverse_gamma(concentration, scale):
    if uses_tfp():
        import tensorflow_probability as tfp

        return tfp.distributions.InverseGamma(concentration, scale)
    return InverseGamma(concentration, scale)


def _entries(distribution):
    """The per-entry distribution under any `Independent` wrapper (ours or TFP's)."""
    while hasattr(distribution, "reinterpreted_batch_ndims"):
        distribution = distribution.distribution
    return distribution


def family_name(distribution):
    """"Normal", "Cauchy", ...: the family of the entries."""
    entries = _entries(distribution)
    return type(entries).__name__


def reparameterized(distribution, sample_shape, seed):
    """A draw of `sample_shape` + the distribution's shape from standard noise of `keras.random`.

    `seed`: a `keras.random.SeedGenerator` (or an int). Gradients flow to the
    location and scale. Normal and Cauchy entries (also under `Independent`).
    """
    entries = _entries(distribution)
    loc, scale = ops.convert_to_tensor(entries.loc), ops.convert_to_tensor(entries.scale)
    shape = tuple(sample_shape) + tuple(np.broadcast_shapes(tuple(ops.shape(loc)), tuple(ops.shape(scale))))
    family = type(entries).__name__
    if family == "Normal":
        return loc + scale * keras.random.normal(shape, dtype=loc.dtype, seed=seed)
    if family == "Cauchy":
        # Open interval (0, 1): tan(pi (u - 1/2)) stays finite.
        tiny = 1e-7 if loc.dtype == "float32" else 1e-15
        uniform = keras.random.uniform(shape, minval=tiny, maxval=1.0 - tiny, dtype=loc.dtype, seed=seed)
        return loc + scale * ops.tan(math.pi * (uniform - 0.5))
    raise ValueError(f"reparameterized draws support Normal and Cauchy entries; got {family}.")


def kl_divergence(posterior, prior):
    """KL(posterior || prior), closed form for Normal entries (summed over each event).

    Raises NotImplementedError for other families (use a Monte-Carlo estimate).
    """
    if uses_tfp():
        import tensorflow_probability as tfp

        return tfp.distributions.kl_divergence(posterior, prior)
    return _normal_kl(posterior, prior)


def _normal_kl(posterior, prior):
    """The keras.ops closed form behind `kl_divergence` on JAX and PyTorch."""
    q, p = _entries(posterior), _entries(prior)
    if not (isinstance(q, Normal) and isinstance(p, Normal)):
        raise NotImplementedError(f"no closed-form KL between {type(q).__name__} and {type(p).__name__}.")
    # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    ratio = ops.square(q.scale / p.scale)
    per_entry = 0.5 * (ratio + ops.square((q.loc - p.loc) / p.scale) - 1.0 - ops.log(ratio))
    return posterior._sum_event(per_entry) if isinstance(posterior, Independent) else per_entry
