"""Initializers for rank-1 factors, in the Edward2 style.

Two kinds live here:

* Deterministic Keras initializers (`RandomSign`, plus Keras' own `"ones"`),
  used for the point-estimate factors of BatchEnsemble.
* Trainable initializers (`TrainableNormal`, `TrainableCauchy`). Instead of
  returning a tensor once, they create their variational parameters as
  weights *of the layer that uses them* (`layer.add_weight`, so the variables
  are tracked, saved, checkpointed and mirrored by distribution strategies
  like any other weight) and return a fresh `RandomVariable` on every call.
  A factor of shape `(ensemble_size, dim)` is the K-component mixture
  posterior of the paper: row k is member k's component.

Every initializer is serialisable and can be named by string, like Keras
built-ins: `get("trainable_normal")`, `get("random_sign")`.
"""

import math
import random

import keras

from rank1_keras import validation
from rank1_keras.probability import distributions
from rank1_keras.probability.random_variable import RandomVariable

_PACKAGE = "rank1_keras"


def _inverse_softplus(x):
    # log(exp(x) - 1), written with expm1 so tiny scales (1e-3) keep precision.
    return math.log(math.expm1(x))


def factor_mean_normal(stddev=0.5, seed=None):
    """The default start of every rank-1 / BatchEnsemble factor (or its mean): N(1, stddev^2), stddev 0.5.

    Centred on one, so each member starts near the shared weights, yet
    spread, so members differ from the first step. The gap benchmark
    (docs/ensemble_gap.md) measures random signs worse: +0.017 (BatchEnsemble)
    and +0.111 (rank-1) validation NLL on Fashion-MNIST, 3 seeds.
    """
    stddev = validation.check_positive_finite(stddev, "stddev")
    return keras.initializers.RandomNormal(mean=1.0, stddev=stddev, seed=seed)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomSign(keras.initializers.Initializer):
    """Initializer of independent random signs: +1 with `positive_probability`.

    The paper's "random sign init" of the rank-1 factors: each entry is +1
    with probability p and -1 otherwise, so members start from different
    sign patterns of the shared weight.

    Args:
        positive_probability: probability p in [0, 1] of drawing +1.
        seed: optional integer seed.

    Example:

    >>> init = RandomSign(positive_probability=1.0)
    >>> init((2, 3)).numpy().tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(self, positive_probability=0.5, seed=None):
        self.positive_probability = validation.check_probability(
            positive_probability, "positive_probability"
        )
        self.seed = seed
        # Like Keras' random initializers: a fixed integer seed gives the same
        # values on every call; without one, draw a seed from Python's
        # generator, which `keras.utils.set_random_seed` makes reproducible.
        self._draw_seed = seed if seed is not None else random.randint(1, 2**30)

    def __call__(self, shape, dtype=None):
        dtype = dtype or keras.config.floatx()
        uniform = keras.random.uniform(shape, dtype=dtype, seed=self._draw_seed)
        # uniform < p has probability p; map {True, False} to {+1, -1}.
        return 2.0 * keras.ops.cast(uniform < self.positive_probability, dtype) - 1.0

    def get_config(self):
        return {"positive_probability": self.positive_probability, "seed": self.seed}


class TrainableInitializer:
    """Base class of initializers that own variational parameters.

    Life cycle, driven by the layer that uses the initializer:

    1. `build(layer, name, shape)` creates the parameters with
       `layer.add_weight` (once).
    2. `distribution()` returns the current posterior (`rank1_keras.probability.distributions`:
       TFP's on TensorFlow), with event shape `shape`.
    3. `__call__(shape, dtype, sample_shape=(), seed=None)` returns a
       `RandomVariable` with a fresh, reparameterised draw (`seed`: a
       `keras.random.SeedGenerator`, as the layer that owns the factor passes).

    Subclasses implement `_build_parameters` and `distribution`.
    """

    def __init__(self):
        self.shape = None
        self.parameters = {}

    @property
    def built(self):
        return self.shape is not None

    @property
    def variables(self):
        """The variational parameters (Keras variables) this initializer owns."""
        return list(self.parameters.values())

    def build(self, layer, name, shape, dtype=None):
        if self.built:
            raise ValueError(
                f"{type(self).__name__} was already built with shape "
                f"{self.shape}; an instance serves one weight of one layer."
            )
        self.shape = tuple(int(d) for d in shape)
        self.parameters = self._build_parameters(layer, name, self.shape, dtype)

    def __call__(self, shape=None, dtype=None, sample_shape=(), seed=None):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} must be built by a layer "
                "(`build(layer, name, shape)`) before it is called."
            )
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(
                f"{type(self).__name__} was built with shape {self.shape}; "
                f"got shape={tuple(shape)}."
            )
        return RandomVariable(self.distribution(), sample_shape=sample_shape, seed=seed)

    def _build_parameters(self, layer, name, shape, dtype):
        raise NotImplementedError

    def distribution(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _TrainableLocationScale(TrainableInitializer):
    """A trainable location-scale family: loc free, scale = softplus(raw)."""

    family = None  # distributions.normal or distributions.cauchy

    def __init__(self, loc_initializer=None, initial_scale=1e-3, seed=None):
        super().__init__()
        self.seed = seed
        self.loc_initializer = (
            factor_mean_normal(seed=seed)
            if loc_initializer is None
            else get(loc_initializer, "loc_initializer")
        )
        self.initial_scale = validation.check_positive_finite(
            initial_scale, "initial_scale"
        )

    def _build_parameters(self, layer, name, shape, dtype):
        loc = layer.add_weight(
            name=f"{name}_loc",
            shape=shape,
            initializer=self.loc_initializer,
            dtype=dtype,
            trainable=True,
        )
        # Scales are parameterised through softplus of a negative raw value so
        # a fresh layer starts with tiny, strictly positive scales (no NaN).
        unconstrained_scale = layer.add_weight(
            name=f"{name}_unconstrained_scale",
            shape=shape,
            initializer=keras.initializers.Constant(
                _inverse_softplus(self.initial_scale)
            ),
            dtype=dtype,
            trainable=True,
        )
        return {"loc": loc, "unconstrained_scale": unconstrained_scale}

    @property
    def loc(self):
        return self.parameters["loc"]

    @property
    def scale(self):
        return keras.ops.softplus(self.parameters["unconstrained_scale"])

    def distribution(self):
        family = type(self).family
        return family(keras.ops.convert_to_tensor(self.loc), self.scale, event_ndims=len(self.shape))

    def get_config(self):
        return {
            "loc_initializer": keras.saving.serialize_keras_object(
                self.loc_initializer
            ),
            "initial_scale": self.initial_scale,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TrainableNormal(_TrainableLocationScale):
    """Trainable Normal posterior N(mean, softplus(rho)^2) per entry.

    Args:
        mean_initializer: initializer of the means; default N(1, 0.5^2), the
            paper's initialisation around one. Pass
            `RandomSign(positive_probability=p)` (or `"random_sign"`) for the
            paper's random-sign init.
        initial_stddev: the posterior stddev at initialisation (tiny, 1e-3).
        seed: seed of the default mean initializer.

    Example:

    >>> layer = keras.layers.Layer()
    >>> init = TrainableNormal(initial_stddev=1e-3)
    >>> init.build(layer, "alpha", (4, 8))
    >>> rv = init()             # RandomVariable, value shape (4, 8)
    >>> tuple(rv.distribution.event_shape)
    (4, 8)
    """

    family = distributions.normal

    def __init__(self, mean_initializer=None, initial_stddev=1e-3, seed=None):
        validation.check_positive_finite(initial_stddev, "initial_stddev")
        super().__init__(
            loc_initializer=mean_initializer, initial_scale=initial_stddev, seed=seed
        )

    def get_config(self):
        config = super().get_config()
        return {
            "mean_initializer": config["loc_initializer"],
            "initial_stddev": config["initial_scale"],
            "seed": config["seed"],
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TrainableCauchy(_TrainableLocationScale):
    """Trainable Cauchy posterior Cauchy(loc, softplus(rho)) per entry.

    Heavy-tailed factors; pair it with `CauchyKLDivergence` (Monte-Carlo KL).

    Args:
        loc_initializer: initializer of the locations; default N(1, 0.5^2).
        initial_scale: the scale at initialisation (tiny, 1e-3).
        seed: seed of the default location initializer.
    """

    family = distributions.cauchy


_ALIASES = {
    "trainable_normal": TrainableNormal,
    "trainable_cauchy": TrainableCauchy,
    "random_sign": RandomSign,
}


def serialize(initializer):
    return keras.saving.serialize_keras_object(initializer)


def get(identifier, argument_name="initializer"):
    """Returns an initializer from a name, a config dict or an instance.

    Our own names (`"trainable_normal"`, `"trainable_cauchy"`,
    `"random_sign"`) come first, then every Keras initializer name. A
    trainable initializer instance is cloned, because it owns the variables
    of exactly one weight.

    Raises:
        ValueError: naming `argument_name` when the identifier is unknown.
    """
    if isinstance(identifier, TrainableInitializer):
        return type(identifier).from_config(identifier.get_config())
    return validation.resolve_identifier(
        identifier, argument_name, _ALIASES, keras.initializers.get, examples="'ones' or 'glorot_uniform'"
    )
