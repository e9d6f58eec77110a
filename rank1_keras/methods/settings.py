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
Each method is one `MethodSpec` in `rank1_keras.methods` (one file per
method); more join with `rank1_keras.methods.register_method`.

Example:

    settings = MethodSettings(method="rank1", ensemble_size=4, train_size=50000)
    (model,) = build_method_models(lambda: wide_resnet(28, 10), settings)
"""

import dataclasses

from rank1_keras import validation
from rank1_keras.methods.converter import join_ensemble
from rank1_keras.methods.spec import method_spec

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
            Default -0.5, N(1, 0.5^2): random signs (0.5, the rank-1 paper's
            CIFAR setting) measured worse in docs/ensemble_gap.md.
        posterior_initial_stddev: the posterior scales' starting value.
        use_additive_perturbation: W_k = W + r_k s_k^T instead of W o r_k s_k^T.
        dropout_rate: MC dropout rate (method "dropout").
        num_eval_samples: forward passes averaged at evaluation for the
            stochastic methods (dropout, rank1).
        training_likelihood: "average" or "mixture" ensemble NLL in training.
        training_batch: "tile" (every member sees the whole batch, the papers')
            or "split" (member k trains on its own block of the batch,
            floor(B/K) or ceil(B/K) examples: K times cheaper steps). None
            (default): the method's own default, its conversion's
            `default_training_batch` ("tile" for the ensembles, the better
            NLL in docs/ensemble_gap.md; "split" for MC dropout), so that
            `dataclasses.replace(settings, method=...)` takes the new
            method's. `resolved()` fills it in; a run records that.
        latent_dim, latent_loss_weight: LP-BNN's VAE latent size and the
            weight of its (layer-averaged) reconstruction + KL loss.
        latent_inference: LP-BNN at evaluation: "mean" (z = mu, one pass, the
            paper's) or "sample" (draw z; `num_eval_samples` passes averaged).
        packed_width_factor, packed_groups: Packed-Ensembles' α (the packed
            network is α times as wide as the original, each of the K members
            α/K) and γ (groups of each member's kernels).
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
    random_sign_init: float = -0.5
    posterior_initial_stddev: float = 1e-3
    use_additive_perturbation: bool = False
    dropout_rate: float = 0.1
    num_eval_samples: int = 1
    training_likelihood: str = "average"
    training_batch: str = None
    latent_dim: int = 32
    latent_loss_weight: float = 1.0
    latent_inference: str = "mean"
    packed_width_factor: float = 2.0
    packed_groups: int = 1
    bella_rank: int = 4
    bella_num_particles: int = 3
    bella_trainer: str = "ensemble"
    bella_layers: tuple = ()
    bella_prior_stddev: float = None
    pretrained_checkpoint: str = None

    def __post_init__(self):
        spec = method_spec(self.method)  # a ValueError naming the methods
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
        if self.training_batch is not None:
            validation.check_choice(self.training_batch, "training_batch", TRAINING_BATCHES)
        validation.check_positive_int(self.latent_dim, "latent_dim")
        validation.check_non_negative_finite(self.latent_loss_weight, "latent_loss_weight")
        validation.check_choice(self.latent_inference, "latent_inference", LATENT_INFERENCE)
        validation.check_positive_finite(self.packed_width_factor, "packed_width_factor")
        validation.check_positive_int(self.packed_groups, "packed_groups")
        validation.check_positive_int(self.bella_rank, "bella_rank")
        validation.check_positive_int(self.bella_num_particles, "bella_num_particles")
        validation.check_choice(self.bella_trainer, "bella_trainer", BELLA_TRAINERS)
        object.__setattr__(self, "bella_layers", tuple(self.bella_layers or ()))
        if self.bella_prior_stddev is not None:
            validation.check_positive_finite(self.bella_prior_stddev, "bella_prior_stddev")
        if not -1.0 <= self.random_sign_init <= 1.0:
            raise ValueError(
                f"random_sign_init must be in [-1, 1] (> 0: P(+1) of random-sign means; <= 0: minus the "
                f"stddev of N(1, sd^2) means); got {self.random_sign_init}."
            )
        spec.check(self)

    @property
    def spec(self):
        """The method's `MethodSpec`."""
        return method_spec(self.method)

    @property
    def size(self):
        """K: the members (Bella: particles) the method averages."""
        return self.spec.size(self)

    @property
    def effective_training_batch(self):
        """"tile" or "split", as the method feeds its members (Bella's ensemble trainer: "split")."""
        return self.spec.training_batch(self)

    def resolved(self):
        """A copy with `training_batch` set to what the method will use: what a run records and resumes by."""
        return dataclasses.replace(self, training_batch=self.effective_training_batch)

    @property
    def members(self):
        """Member rows per example in the training output (K, or 1)."""
        tiled = self.spec.member_rows and self.effective_training_batch == "tile"
        return self.size if tiled else 1

    @property
    def ensemble_members(self):
        """K for the ensemble methods (members in one model or separate models), 1 otherwise."""
        return self.size if self.spec.member_rows or self.spec.separate_models else 1

    @property
    def eval_samples(self):
        """Forward passes at evaluation (1 for the deterministic methods)."""
        return self.spec.eval_samples(self)


def training_options(model, settings):
    """Extra `rank1_keras.tensorflow.training.loop.train` arguments the method needs (its spec's `training_options`)."""
    return settings.spec.training_options(model, settings)


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
    return settings.spec.build(build_plain, settings)


def inference_model(models):
    """One model whose `predict` is the method's answer (joins a deep ensemble)."""
    return models[0] if len(models) == 1 else join_ensemble(models, training_output="average")
