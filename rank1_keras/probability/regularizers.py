"""KL-divergence regularizers for rank-1 factors, in the Edward2 style.

Unlike Keras regularizers, which receive a weight tensor, these receive the
`RandomVariable` returned by a trainable initializer and return
`scale_factor * KL(q || p)`, where q is the random variable's distribution and
p the prior. For a factor of shape `(ensemble_size, dim)` the KL is summed over
all entries, i.e. over the K mixture components: sum_k KL(q_k || p), which is
what the rank-1 objective adds per layer (Dusenberry et al., 2020).

`scale_factor` carries 1/N (N = number of training examples), so the total
loss per example is NLL + KL / N.
"""

import math

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.probability import distributions
from rank1_keras.probability.random_variable import RandomVariable

_PACKAGE = "rank1_keras"


class KLDivergenceRegularizer(keras.regularizers.Regularizer):
    """Base class: checks the input and scales the KL by `scale_factor`."""

    def __init__(self, scale_factor=1.0):
        self.scale_factor = validation.check_non_negative_finite(
            scale_factor, "scale_factor"
        )

    def __call__(self, random_variable):
        if not isinstance(random_variable, RandomVariable):
            raise ValueError(
                f"{type(self).__name__} expects a RandomVariable (the output of a "
                "trainable initializer such as 'trainable_normal'); got "
                f"{type(random_variable).__name__}. Use it as the regularizer of "
                "a factor whose initializer is trainable."
            )
        return self.scale_factor * self.kl_divergence(random_variable)

    def kl_divergence(self, random_variable):
        raise NotImplementedError

    def _prior(self, family, event_shape, dtype, **parameters):
        """`family` (distributions.normal, .cauchy) with `parameters` broadcast to `event_shape`."""
        broadcast = {key: ops.broadcast_to(ops.cast(value, dtype), tuple(event_shape))
                     for key, value in parameters.items()}
        return family(**broadcast, event_ndims=len(event_shape))


def _monte_carlo_kl(random_variable, prior):
    """log q(z) - log p(z) on the random variable's own sample(s) z.

    An unbiased estimate of KL(q || p); with several draws (per-example
    sampling) it is averaged over them.
    """
    z = random_variable.value
    log_ratio = random_variable.distribution.log_prob(z) - prior.log_prob(z)
    return ops.mean(log_ratio)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NormalKLDivergence(KLDivergenceRegularizer):
    """Closed-form KL(q || N(mean, stddev^2)) for a Normal posterior q.

    Per entry, KL(N(mu, s^2) || N(m, t^2)) = log(t/s) + (s^2 + (mu - m)^2)/(2 t^2) - 1/2,
    summed over the entries of the factor.

    Args:
        mean: prior mean (1.0: rank-1 factors are centred at one).
        stddev: prior stddev, positive and finite (0.1 on CIFAR in the paper).
        scale_factor: multiplies the KL; set it to 1/N.

    Example:

    >>> regularizer = NormalKLDivergence(mean=1.0, stddev=0.1, scale_factor=1 / 50000)
    """

    def __init__(self, mean=1.0, stddev=0.1, scale_factor=1.0):
        super().__init__(scale_factor)
        self.mean = validation.check_finite(mean, "mean")
        self.stddev = validation.check_positive_finite(stddev, "stddev")

    def kl_divergence(self, random_variable):
        posterior = random_variable.distribution
        prior = self._prior(
            distributions.normal, posterior.event_shape, posterior.dtype, loc=self.mean, scale=self.stddev
        )
        try:
            # Summed, so a hand-made RandomVariable with a batch shape also gives a scalar.
            return ops.sum(distributions.kl_divergence(posterior, prior))
        except NotImplementedError as error:
            raise ValueError(
                f"NormalKLDivergence has a closed form only for a Normal posterior; "
                f"got {posterior.name}. Use 'cauchy_kl_divergence' (Monte-Carlo) "
                "or a 'trainable_normal' initializer."
            ) from error

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "scale_factor": self.scale_factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CauchyKLDivergence(KLDivergenceRegularizer):
    """Monte-Carlo KL(q || Cauchy(loc, scale)): log q(z) - log p(z) on the sample z.

    The Cauchy prior's heavy tails helped rank-1 BNNs under distribution
    shift. No closed form exists, so the estimate uses the very sample the
    forward pass used (reparameterised, so it has gradients).

    Args:
        loc: prior location (1.0).
        scale: prior scale, positive and finite.
        scale_factor: multiplies the KL; set it to 1/N.
    """

    def __init__(self, loc=1.0, scale=0.1, scale_factor=1.0):
        super().__init__(scale_factor)
        self.loc = validation.check_finite(loc, "loc")
        self.scale = validation.check_positive_finite(scale, "scale")

    def kl_divergence(self, random_variable):
        posterior = random_variable.distribution
        prior = self._prior(
            distributions.cauchy, posterior.event_shape, posterior.dtype, loc=self.loc, scale=self.scale
        )
        return _monte_carlo_kl(random_variable, prior)

    def get_config(self):
        return {"loc": self.loc, "scale": self.scale, "scale_factor": self.scale_factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HierarchicalNormalKLDivergence(KLDivergenceRegularizer):
    """KL to a hierarchical Normal prior whose variance is learned (empirical Bayes).

    The prior over the n entries w_i of a factor is

        v ~ InverseGamma(variance_concentration, variance_scale)
        w_i | v ~ N(mean, v),

    and instead of fixing v, each call sets it to its MAP value given the
    current posterior (Wu et al., 2018):

        v* = (sum_i [s_i^2 + (mu_i - mean)^2] + 2 * variance_scale)
             / (n + 2 * variance_concentration + 2),

    returning scale_factor * (KL(q || N(mean, v*)) - log p(v*)). So the prior's
    scale adapts to the posterior under the hyper-prior, the paper's
    hierarchical-prior variant. The deviation is measured from `mean` (one
    for rank-1 factors), not from zero.

    Args:
        mean: prior mean of the entries.
        variance_concentration: InverseGamma concentration (alpha > 0).
        variance_scale: InverseGamma scale (beta > 0).
        scale_factor: multiplies the result; set it to 1/N.
    """

    def __init__(
        self, mean=1.0, variance_concentration=2.01, variance_scale=0.101, scale_factor=1.0
    ):
        super().__init__(scale_factor)
        self.mean = validation.check_finite(mean, "mean")
        self.variance_concentration = validation.check_positive_finite(
            variance_concentration, "variance_concentration"
        )
        self.variance_scale = validation.check_positive_finite(
            variance_scale, "variance_scale"
        )

    def prior_variance(self, random_variable):
        """The MAP prior variance v* for the given posterior."""
        posterior = random_variable.distribution
        squared_deviation = ops.sum(posterior.variance() + ops.square(posterior.mean() - self.mean))
        num_entries = float(math.prod(tuple(posterior.event_shape)))
        return (squared_deviation + 2.0 * self.variance_scale) / (
            num_entries + 2.0 * self.variance_concentration + 2.0
        )

    def kl_divergence(self, random_variable):
        posterior = random_variable.distribution
        variance = self.prior_variance(random_variable)
        prior = self._prior(
            distributions.normal, posterior.event_shape, posterior.dtype, loc=self.mean, scale=ops.sqrt(variance)
        )
        hyperprior = distributions.inverse_gamma(
            ops.cast(self.variance_concentration, posterior.dtype), ops.cast(self.variance_scale, posterior.dtype)
        )
        return distributions.kl_divergence(posterior, prior) - hyperprior.log_prob(variance)

    def get_config(self):
        return {
            "mean": self.mean,
            "variance_concentration": self.variance_concentration,
            "variance_scale": self.variance_scale,
            "scale_factor": self.scale_factor,
        }


_ALIASES = {
    "normal_kl_divergence": NormalKLDivergence,
    "cauchy_kl_divergence": CauchyKLDivergence,
    "hierarchical_normal_kl_divergence": HierarchicalNormalKLDivergence,
}


def serialize(regularizer):
    return keras.saving.serialize_keras_object(regularizer)


def get(identifier, argument_name="regularizer"):
    """Returns a regularizer from a name, a config dict or an instance.

    Our KL names come first (`"normal_kl_divergence"`,
    `"cauchy_kl_divergence"`, `"hierarchical_normal_kl_divergence"`), then
    every Keras regularizer name ("l2", ...).

    Raises:
        ValueError: naming `argument_name` when the identifier is unknown.
    """
    return validation.resolve_identifier(
        identifier, argument_name, _ALIASES, keras.regularizers.get, examples="'l2'"
    )


def is_kl_regularizer(regularizer):
    return isinstance(regularizer, KLDivergenceRegularizer)
