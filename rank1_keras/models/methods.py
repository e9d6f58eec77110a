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
| lpbnn           | `convert(..., "lpbnn", K)`         | K members, latent means (or samples)|
| bella           | `to_bella(pretrained, particles)`  | particles' probabilities averaged   |

Bella starts from `pretrained_checkpoint` (a finished run's directory, a
checkpoint `.npz`, or a Keras `.weights.h5` / `.keras` file of the same
architecture); `bella_trainer="ensemble"` trains each particle on its own
data order (`training_options` asks `train` for member streams),
`"svgd"` moves the particles with SVGD (a gradient transform).
More methods join with `register_method_builder`.

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
BELLA_TRAINERS = ("ensemble", "svgd")
LATENT_INFERENCE = ("mean", "sample")


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
            or "split" (member k trains on its own block of the batch,
            floor(B/K) or ceil(B/K) examples: K times cheaper steps).
        latent_dim, latent_loss_weight: LP-BNN's VAE latent size and the
            weight of its (layer-averaged) reconstruction + KL loss.
        latent_inference: LP-BNN at evaluation: "mean" (z = mu, one pass, the
            paper's) or "sample" (draw z; `num_eval_samples` passes averaged).
        bella_rank, bella_num_particles: Bella's perturbation rank and number
            of particles (its K).
        bella_trainer: "ensemble" (each particle its own loss and data order)
            or "svgd".
        bella_layers: names of the layers Bella perturbs (empty: every Dense
            and Conv layer).
        bella_prior_stddev: SVGD's isotropic Normal prior on the low-rank
            parameters (None: flat).
        pretrained_checkpoint: where Bella's frozen weights come from (None:
            the freshly built model, only meaningful in tests).
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
    latent_dim: int = 32
    latent_loss_weight: float = 1.0
    latent_inference: str = "mean"
    bella_rank: int = 4
    bella_num_particles: int = 3
    bella_trainer: str = "ensemble"
    bella_layers: tuple = ()
    bella_prior_stddev: float = None
    pretrained_checkpoint: str = None

    def __post_init__(self):
        validation.check_choice(self.method, "method", method_names())
        validation.check_positive_int(self.ensemble_size, "ensemble_size")
        validation.check_positive_int(self.train_size, "train_size")
        validation.check_choice(self.prior, "prior", PRIORS)
        validation.check_positive_finite(self.prior_stddev, "prior_stddev")
        validation.check_positive_finite(self.posterior_initial_stddev, "posterior_initial_stddev")
        validation.check_choice(self.alpha_initializer, "alpha_initializer", FACTOR_INITIALIZERS)
        validation.check_choice(self.gamma_initializer, "gamma_initializer", FACTOR_INITIALIZERS)
        validation.check_rate(self.dropout_rate, "dropout_rate")
        validation.check_positive_int(self.num_eval_samples, "num_eval_samples")
        validation.check_choice(self.training_likelihood, "training_likelihood", TRAINING_LIKELIHOODS)
        validation.check_choice(self.training_batch, "training_batch", TRAINING_BATCHES)
        validation.check_positive_int(self.latent_dim, "latent_dim")
        validation.check_non_negative_finite(self.latent_loss_weight, "latent_loss_weight")
        validation.check_choice(self.latent_inference, "latent_inference", LATENT_INFERENCE)
        validation.check_positive_int(self.bella_rank, "bella_rank")
        validation.check_positive_int(self.bella_num_particles, "bella_num_particles")
        validation.check_choice(self.bella_trainer, "bella_trainer", BELLA_TRAINERS)
        object.__setattr__(self, "bella_layers", tuple(self.bella_layers or ()))
        if self.bella_prior_stddev is not None:
            validation.check_positive_finite(self.bella_prior_stddev, "bella_prior_stddev")
        if self.method == "bella" and self.bella_trainer == "svgd" and self.bella_num_particles < 2:
            raise ValueError(f"bella_trainer='svgd' needs bella_num_particles >= 2; got {self.bella_num_particles}.")
        if not -1.0 <= self.random_sign_init <= 1.0:
            raise ValueError(
                f"random_sign_init must be in [-1, 1] (> 0: P(+1) of random-sign means; <= 0: minus the "
                f"stddev of N(1, sd^2) means); got {self.random_sign_init}."
            )

    @property
    def size(self):
        """K: Bella's particles, else `ensemble_size`."""
        return self.bella_num_particles if self.method == "bella" else self.ensemble_size

    @property
    def effective_training_batch(self):
        """Bella's ensemble trainer feeds each particle its own block ("split")."""
        if self.method == "bella":
            return "split" if self.bella_trainer == "ensemble" else "tile"
        return self.training_batch

    @property
    def members(self):
        """Member rows per example in the training output (K, or 1)."""
        tiled = self.method in _TILED_METHODS and self.effective_training_batch == "tile"
        return self.size if tiled else 1

    @property
    def ensemble_members(self):
        """K for the ensemble methods (tiled or separate models), 1 otherwise."""
        return self.size if self.method in _TILED_METHODS | _SEPARATE_MODEL_METHODS else 1

    @property
    def eval_samples(self):
        """Forward passes at evaluation (1 for the deterministic methods)."""
        sampled_latents = self.method == "lpbnn" and self.latent_inference == "sample"
        return self.num_eval_samples if self.method in _STOCHASTIC_METHODS or sampled_latents else 1


_TILED_METHODS = {"batchensemble", "rank1", "lpbnn", "bella"}
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
        extra = {}
        if method_name == "lpbnn":
            extra = {
                "latent_dim": settings.latent_dim,
                "latent_loss_weight": settings.latent_loss_weight,
                "inference": settings.latent_inference,
            }
        if method_name in ("batchensemble", "lpbnn"):
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
                train_size=settings.train_size,
                **rank1_layer_options(settings_for_method),
                **extra,
            )
        ]

    return build


def load_pretrained(model, path):
    """Loads trained weights into `model` from a run directory, a checkpoint or a Keras weights file.

    Every failure is a `CheckpointError` that names `pretrained_checkpoint`
    and, for a training run of another method or architecture, says which.
    """
    import json
    import os

    from rank1_keras.training.checkpoint import CheckpointError, latest_checkpoint, restore_model_weights

    flag = f"pretrained_checkpoint={path}"
    expected = "a deterministic run's --output_dir, its ckpt-*.npz, or a Keras .weights.h5 / .keras file of the same architecture"
    if path.endswith((".weights.h5", ".keras")):
        if not os.path.isfile(path):
            raise CheckpointError(f"{flag} does not exist; pass {expected}.")
        try:
            if path.endswith(".weights.h5"):
                model.load_weights(path)
            else:
                model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
        except Exception as error:  # h5py, zip and Keras' own errors: the file is not these weights
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(
                f"{flag} could not be loaded into this architecture ({type(error).__name__}: {first_line}); "
                f"pass {expected}."
            ) from error
        return model
    run_dir = None
    if os.path.isdir(path):
        run_dir = path
        directory = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
        checkpoint = latest_checkpoint(directory)
        if checkpoint is None:
            raise CheckpointError(f"{flag} holds no readable checkpoint; pass {expected}.")
        path = checkpoint
    if not path.endswith(".npz") or not os.path.exists(path):
        raise ValueError(f"{flag} must be {expected}.")
    try:
        restore_model_weights(path, model)
    except CheckpointError as error:
        trained = ""
        settings_path = os.path.join(run_dir or os.path.dirname(os.path.dirname(os.path.abspath(path))), "run_settings.json")
        if os.path.isfile(settings_path):
            with open(settings_path, encoding="utf-8") as stream:
                method = json.load(stream).get("method", {}).get("method")
            trained = f" It is a --method={method} run."
        raise CheckpointError(
            f"{flag} does not fit the plain network Bella perturbs: {error}{trained} Pass {expected}."
        ) from error
    return model


def _bella(build_plain, settings):
    from rank1_keras.bella import to_bella

    base = build_plain()
    if settings.pretrained_checkpoint:
        load_pretrained(base, settings.pretrained_checkpoint)
    return [
        to_bella(
            base,
            num_particles=settings.bella_num_particles,
            rank=settings.bella_rank,
            layers=list(settings.bella_layers) or None,
            training_batch=settings.effective_training_batch,
        )
    ]


def training_options(model, settings):
    """Extra `rank1_keras.training.loop.train` arguments the method needs.

    Bella-ensemble: one data order per particle (`member_streams`);
    Bella-SVGD: the SVGD transform of the particles' gradients.
    """
    if settings.method != "bella":
        return {}
    if settings.bella_trainer == "ensemble":
        return {"member_streams": settings.bella_num_particles}
    import tensorflow as tf

    from rank1_keras.bella import particle_variables
    from rank1_keras.training import svgd

    particles = particle_variables(model)

    def transform(variables, gradients):
        return svgd.transform_gradients(
            variables,
            gradients,
            particles,
            settings.train_size,
            prior_stddev=settings.bella_prior_stddev,
            # The loop's loss averages the particles' NLLs (AverageNLL).
            loss_gradient_scale=float(settings.bella_num_particles),
            num_replicas=tf.distribute.get_strategy().num_replicas_in_sync,
        )

    return {"gradient_transform": transform}


_BUILDERS = {
    "deterministic": _deterministic,
    "dropout": _dropout,
    "ensemble": _ensemble,
    "batchensemble": _converted("batchensemble"),
    "rank1": _converted("rank1"),
    "lpbnn": _converted("lpbnn"),
    "bella": _bella,
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
