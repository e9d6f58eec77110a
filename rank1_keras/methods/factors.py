"""The rank-1 factors' options, from `MethodSettings`: shared by BatchEnsemble, rank-1 and LP-BNN.

`factor_layer_options(settings)` gives the `convert` options of the factor
layers (initializers and KL regularizers of r, s and an LSTM's recurrent
r, s); `build_converted` converts a fresh plain model with them.
"""

import dataclasses

from rank1_keras.methods.converter import convert
from rank1_keras.probability import initializers, regularizers

TRAINABLE_FAMILIES = ("trainable_normal", "trainable_cauchy")


def _mean_initializer(random_sign_init):
    if random_sign_init > 0:
        return initializers.RandomSign(random_sign_init)
    return initializers.factor_mean_normal(stddev=-random_sign_init or 0.5)


def _factor_initializer(family, settings):
    mean_initializer = _mean_initializer(settings.random_sign_init)
    if family == "trainable_normal":
        return initializers.TrainableNormal(mean_initializer, initial_stddev=settings.posterior_initial_stddev)
    if family == "trainable_cauchy":
        return initializers.TrainableCauchy(mean_initializer, initial_scale=settings.posterior_initial_stddev)
    if family == "random_sign":
        return mean_initializer
    return "ones"


def _factor_regularizer(family, settings):
    if family not in TRAINABLE_FAMILIES:
        return None  # point factors (BatchEnsemble) carry no KL and no weight decay
    scale_factor = 1.0 / settings.train_size
    if settings.prior == "normal":
        return regularizers.NormalKLDivergence(settings.prior_mean, settings.prior_stddev, scale_factor)
    return regularizers.CauchyKLDivergence(settings.prior_mean, settings.prior_stddev, scale_factor)


def factor_layer_options(settings, point_factors=False):
    """The `convert` options of the rank-1 / BatchEnsemble layers for `settings`.

    `point_factors`: the method's factors are plain vectors (BatchEnsemble,
    LP-BNN), so a trainable family means its mean's initializer.
    """
    if point_factors:
        families = ["random_sign" if family in TRAINABLE_FAMILIES else family
                    for family in (settings.alpha_initializer, settings.gamma_initializer)]
        settings = dataclasses.replace(settings, alpha_initializer=families[0], gamma_initializer=families[1])
    options = {"use_additive_perturbation": settings.use_additive_perturbation}
    # An LSTM cell's recurrent factors follow the input-side and output-side
    # settings (convert passes them to LSTM cells only).
    sides = (
        ("alpha", settings.alpha_initializer),
        ("gamma", settings.gamma_initializer),
        ("recurrent_alpha", settings.alpha_initializer),
        ("recurrent_gamma", settings.gamma_initializer),
    )
    for side, family in sides:
        options[f"{side}_initializer"] = _factor_initializer(family, settings)
        options[f"{side}_regularizer"] = _factor_regularizer(family, settings)
    return options


def build_converted(method, build_plain, settings, point_factors=False, **options):
    """`[convert(build_plain(), method, ...)]` with the settings' ensemble size, batch and factor options."""
    return [
        convert(
            build_plain(),
            method,
            settings.ensemble_size,
            training_batch=settings.effective_training_batch,
            train_size=settings.train_size,
            **factor_layer_options(settings, point_factors),
            **options,
        )
    ]
