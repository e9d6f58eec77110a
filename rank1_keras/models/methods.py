"""Every method from one plain architecture.

An architecture is written once as a plain Keras model (`wide_resnet`,
`resnet50`, `lstm_classifier`, `small_cnn`); `build_method_models` turns it
into the method the user picks:

| method          | models returned                    | at inference                        |
|-----------------|------------------------------------|-------------------------------------|
| deterministic   | the plain model                    | one pass                            |
| dropout         | `convert(..., "dropout")`          | MC dropout on, `num_eval_samples`   |
| ensemble        | K plain models, each its own init  | `join_ensemble`: probabilities avg. |
| batchensemble   | `convert(..., "batchensemble", K)` | K members tiled inside, averaged    |
| rank1           | `convert(..., "rank1", K)`         | K members x `num_eval_samples`      |

Later methods (LP-BNN, Bella) join with `register_method_builder`.

Example:

    settings = MethodSettings(method="rank1", ensemble_size=4, train_size=50000)
    (model,) = build_method_models(lambda: wide_resnet(28, 10), settings)
"""

import dataclasses

import keras

from rank1_keras import initializers, regularizers, validation
from rank1_keras.convert import convert, join_ensemble

PRIORS = ("normal", "cauchy")
FACTOR_INITIALIZERS = ("trainable_normal", "trainable_cauchy", "random_sign", "ones")
TRAINING_LIKELIHOODS = ("average", "mixture")
TRAINING_BATCHES = ("tile", "split")


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """What picks and parametrises a method (the binaries' method flags).

    Attributes:
        method: a name in `method_names()`.
        ensemble_size: K members (mixture components); 1 for deterministic
            and dropout.
        train_size: N, the number of training examples: the rank-1 KL is
            scaled by 1/N so the objective is per example.
        prior: "normal" or "cauchy" prior on the rank-1 factors.
        prior_mean, prior_stddev: the prior's location and stddev (Normal) or
            scale (Cauchy). Centre 1 for multiplicative factors.
        alpha_initializer, gamma_initializer: the input-side (r) and output-side
            (s) factor families: "trainable_normal" / "trainable_cauchy"
            (rank-1 posteriors), "random_sign" or "ones" (BatchEnsemble points).
        random_sign_init: factor means start at +/-1 with P(+1) = value when
            > 0, else at N(1, |value|^2) (uncertainty-baselines' convention).
        posterior_initial_stddev: the posterior scales' starting value.
        use_additive_perturbation: W_k = W + r_k s_k^T instead of W o r_k s_k^T.
        dropout_rate: MC dropout rate (method "dropout").
        num_eval_samples: forward passes averaged at evaluation for the
            stochastic methods (dropout, rank1).
        training_likelihood: "average" or "mixture" ensemble NLL in training.
        training_batch: "tile" (every member sees the whole batch, the papers')
            or "split" (member k trains on its own B/K examples: K times
            cheaper steps; the batch must divide by K).
    """

    method: str = "deterministic"
    ensemble_size: int = 4
    train_size: int = 50000
    prior: str = "normal"
    prior_mean: float = 1.0
    prior_stddev: float = 0.1
    alpha_initializer: str = "trainable_normal"
    gamma_initializer: str = "trainable_normal"
    random_sign_init: float = 0.5
    posterior_initial_stddev: float = 1e-3
    use_additive_perturbation: bool = False
    dropout_rate: float = 0.1
    num_eval_samples: int = 1
    training_likelihood: str = "average"
    training_batch: str = "tile"

    def __post_init__(self):
        validation.check_choice(self.method, "method", method_names())
        validation.check_positive_int(self.ensemble_size, "ensemble_size")
        validation.check_positive_int(self.train_size, "train_size")
        validation.check_choice(self.prior, "prior", PRIORS)
        validation.check_positive_finite(self.prior_stddev, "prior_stddev")
        validation.check_positive_finite(self.posterior_initial_stddev, "posterior_initial_stddev")
        validation.check_choice(self.alpha_initializer, "alpha_initializer", FACTOR_INITIALIZERS)
        validation.check_choice(self.gamma_initializer, "gamma_initializer", FACTOR_INITIALIZERS)
        validation.check_probability(self.dropout_rate, "dropout_rate")
        validation.check_positive_int(self.num_eval_samples, "num_eval_samples")
        validation.check_choice(self.training_likelihood, "training_likelihood", TRAINING_LIKELIHOODS)
        validation.check_choice(self.training_batch, "training_batch", TRAINING_BATCHES)
        if not -1.0 <= self.random_sign_init <= 1.0:
            raise ValueError(
                f"random_sign_init must be in [-1, 1] (> 0: P(+1) of random-sign means; <= 0: minus the "
                f"stddev of N(1, sd^2) means); got {self.random_sign_init}."
            )

    @property
    def members(self):
        """Member rows per example in the training output (K, or 1)."""
        tiled = self.method in _TILED_METHODS and self.training_batch == "tile"
        return self.ensemble_size if tiled else 1

    def check_batch_size(self, batch_size, name="per_core_batch_size"):
        """Split training gives each member B/K examples: B must divide by K."""
        if self.method in _TILED_METHODS and self.training_batch == "split" and batch_size % self.ensemble_size:
            raise ValueError(
                f"{name}={batch_size} must be divisible by ensemble_size={self.ensemble_size} with "
                "training_batch='split' (each member trains on its own B/K examples)."
            )

    @property
    def ensemble_members(self):
        """K for the ensemble methods (tiled or separate models), 1 otherwise."""
        return self.ensemble_size if self.method in _TILED_METHODS | _SEPARATE_MODEL_METHODS else 1

    @property
    def eval_samples(self):
        """Forward passes at evaluation (1 for the deterministic methods)."""
        return self.num_eval_samples if self.method in _STOCHASTIC_METHODS else 1


_TILED_METHODS = {"batchensemble", "rank1"}
_STOCHASTIC_METHODS = {"dropout", "rank1"}
_SEPARATE_MODEL_METHODS = {"ensemble"}


def _mean_initializer(random_sign_init):
    if random_sign_init > 0:
        return initializers.RandomSign(random_sign_init)
    return keras.initializers.RandomNormal(1.0, -random_sign_init or 0.5)


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
    if family not in ("trainable_normal", "trainable_cauchy"):
        return None  # point factors (BatchEnsemble) carry no KL and no weight decay
    scale_factor = 1.0 / settings.train_size
    if settings.prior == "normal":
        return regularizers.NormalKLDivergence(settings.prior_mean, settings.prior_stddev, scale_factor)
    return regularizers.CauchyKLDivergence(settings.prior_mean, settings.prior_stddev, scale_factor)


def rank1_layer_options(settings):
    """The `convert` options of the rank-1 / BatchEnsemble layers for `settings`."""
    options = {"use_additive_perturbation": settings.use_additive_perturbation}
    for side, family in (("alpha", settings.alpha_initializer), ("gamma", settings.gamma_initializer)):
        options[f"{side}_initializer"] = _factor_initializer(family, settings)
        options[f"{side}_regularizer"] = _factor_regularizer(family, settings)
    return options


def _has_dropout(model):
    return any(isinstance(layer, keras.layers.Dropout) for layer in model._flatten_layers(include_self=False))


def _deterministic(build_plain, settings):
    return [build_plain()]


def _dropout(build_plain, settings):
    plain = build_plain()
    # Models with Dropout layers keep them (now always on); others get MC
    # dropout inserted after every hidden Dense/Conv layer.
    rate = None if _has_dropout(plain) else settings.dropout_rate
    return [convert(plain, "dropout", ensemble_size=1, dropout_rate=rate)]


def _ensemble(build_plain, settings):
    # Independent initialisations: the global seed moves on between builds.
    return [build_plain() for _ in range(settings.ensemble_size)]


def _converted(method_name):
    def build(build_plain, settings):
        settings_for_method = settings
        if method_name == "batchensemble":
            families = [
                "random_sign" if f.startswith("trainable") else f
                for f in (settings.alpha_initializer, settings.gamma_initializer)
            ]
            settings_for_method = dataclasses.replace(
                settings, alpha_initializer=families[0], gamma_initializer=families[1]
            )
        return [
            convert(
                build_plain(),
                method_name,
                settings.ensemble_size,
                training_batch=settings.training_batch,
                **rank1_layer_options(settings_for_method),
            )
        ]

    return build


_BUILDERS = {
    "deterministic": _deterministic,
    "dropout": _dropout,
    "ensemble": _ensemble,
    "batchensemble": _converted("batchensemble"),
    "rank1": _converted("rank1"),
}


def register_method_builder(name, builder, tiled=True, stochastic=False):
    """Adds a method: `builder(build_plain, settings) -> [keras.Model, ...]`.

    `tiled`: the model returns K member rows per example in training;
    `stochastic`: evaluation averages `num_eval_samples` passes.
    """
    _BUILDERS[name] = builder
    (_TILED_METHODS.add if tiled else _TILED_METHODS.discard)(name)
    (_STOCHASTIC_METHODS.add if stochastic else _STOCHASTIC_METHODS.discard)(name)


def method_names():
    return tuple(_BUILDERS)


def build_method_models(build_plain, settings):
    """Builds the models `settings.method` trains.

    Args:
        build_plain: a function returning a fresh plain Keras model (softmax
            outputs), called once per model needed.
        settings: `MethodSettings`.

    Returns:
        A list of models, trained one after another (one, or K for
        "ensemble"); `inference_model` joins them for evaluation.
    """
    return _BUILDERS[settings.method](build_plain, settings)


def inference_model(models):
    """One model whose `predict` is the method's answer (joins a deep ensemble)."""
    return models[0] if len(models) == 1 else join_ensemble(models, training_output="average")
