"""Bella (Doan et al., AAAI 2025): low-rank perturbations of a frozen pre-trained network.

Particle i owns W_i = W0 + (α/r) B_i A_i on the perturbed layers; W0 comes
from `pretrained_checkpoint` (a finished run's directory, a checkpoint
`.npz`, or a Keras `.weights.h5` / `.keras` file of the same architecture).
`bella_trainer="ensemble"` trains each particle on its own data order (the
loop's member streams); `"svgd"` moves the particles with SVGD (a gradient
transform over their concatenated low-rank parameters).

`to_bella(model, num_particles, rank)` converts a trained model directly
(`rank1_keras.bella` is its public home); `particle_variables`,
`trainable_fraction` read a Bella model back.
"""

import dataclasses
import json
import os

import keras
import numpy as np

from rank1_keras import validation
from rank1_keras.layers.low_rank import low_rank_layers

from rank1_keras.layers.low_rank import Conv1DLowRankEnsemble, Conv2DLowRankEnsemble, DenseLowRankEnsemble
from rank1_keras.methods.conversions import LOW_RANK_OPTIONS, LayerConversions, convert_low_rank
from rank1_keras.methods.converter import convert
from rank1_keras.methods.spec import MethodSpec, register_method
from rank1_keras.methods.svgd import transform_gradients


def to_bella(
    model,
    num_particles=3,
    rank=4,
    layers=None,
    perturbation_scale=None,
    seed=None,
    training_batch="tile",
):
    """Converts a (pre-trained) Sequential or functional model into a Bella model.

    A thin entry point over `rank1_keras.convert(model, "bella", ...)`: the
    selected Dense / Conv1D / Conv2D layers become low-rank ensemble layers
    whose frozen W0 and bias are copied from `model`; every other layer is
    cloned with its weights and frozen (trainable=False, so BatchNormalization
    runs in inference mode and its moving statistics stay put). Only the
    perturbations A, B train. Because B starts at zero, every particle of the
    fresh model reproduces `model`.

    Args:
        model: a built Sequential or functional `keras.Model` (e.g. a
            `keras.applications` network with its weights loaded).
        num_particles: the number of particles (ensemble members), >= 1.
            SVGD needs at least 2.
        rank: the rank of every perturbation.
        layers: which layers get perturbations: None (every Dense, Conv1D and
            Conv2D), or a list of layer names and/or classes. Bella's official
            code perturbs only the MLP projections of a ViT.
        perturbation_scale: LoRA's alpha; the perturbation is scaled by
            perturbation_scale / rank. None means `rank` (a factor of 1).
        seed: seed of the initial A draws (None: Keras' global seed generator,
            which `keras.utils.set_random_seed` fixes).
        training_batch: "tile" (every particle sees every example) or "split"
            (particle i trains on its own block of the batch: independent
            data for a Bella-ensemble and K times cheaper steps).

    Returns:
        A functional `keras.Model` with `model`'s inputs. In training it
        returns the particles' rows (K*B, block order) for
        `rank1_keras.AverageNLL(num_particles)`; at inference the average of
        the particles' outputs (probabilities, when the last layer is a softmax).

    Example:

    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8, activation="relu")(inputs)
    >>> base = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    >>> bella = to_bella(base, num_particles=3, rank=2)
    >>> bella.predict(np.ones((5, 4)), verbose=0).shape
    (5, 3)
    >>> sum(int(np.prod(v.shape)) for v in bella.trainable_weights)   # 3 x (4*2 + 2*8 + 8*2 + 2*3)
    138
    """
    num_particles = validation.check_positive_int(num_particles, "num_particles")
    rank = validation.check_positive_int(rank, "rank")
    options = {"rank": rank, "seed": seed}
    if perturbation_scale is not None:
        options["perturbation_scale"] = perturbation_scale
    converted = convert(
        model,
        "bella",
        ensemble_size=num_particles,
        layers=layers,
        training_batch=training_batch,
        **options,
    )
    if not low_rank_layers(converted):
        raise ValueError(
            f"layers={layers!r} selects no Dense, Conv1D or Conv2D layer of the model, so no "
            "perturbation would train; name at least one such layer (or pass layers=None)."
        )
    return converted


def particle_variables(bella_model):
    """The trainable low-rank factors of every Bella layer: [A_1, B_1, A_2, B_2, ...].

    Each has a leading particle axis; particle i's parameters are the i-th
    slices, in this order.
    """
    return [variable for layer in low_rank_layers(bella_model) for variable in layer.perturbation_variables]


def num_particles(bella_model):
    """The number of particles of a Bella model (checked equal across its layers)."""
    sizes = {layer.ensemble_size for layer in low_rank_layers(bella_model)}
    if not sizes:
        raise ValueError(f"bella_model '{bella_model.name}' has no low-rank ensemble layer; build it with to_bella.")
    if len(sizes) > 1:
        raise ValueError(f"bella_model '{bella_model.name}' mixes ensemble sizes {sorted(sizes)}.")
    return sizes.pop()


@dataclasses.dataclass(frozen=True)
class TrainableFraction:
    """Trainable parameters of a Bella model relative to its base network.

    Attributes:
        trainable_parameters: trainable parameters of the Bella model (all particles).
        parameters_per_particle: trainable_parameters / num_particles.
        base_parameters: all parameters of the base model (`count_params()`).
        num_particles: the number of particles.
    """

    trainable_parameters: int
    parameters_per_particle: int
    base_parameters: int
    num_particles: int

    @property
    def total(self):
        """trainable_parameters / base_parameters."""
        return self.trainable_parameters / self.base_parameters

    @property
    def per_particle(self):
        """parameters_per_particle / base_parameters (the paper's ~0.4% on ViT-B/32)."""
        return self.parameters_per_particle / self.base_parameters

    def __str__(self):
        return (
            f"trainable: {self.trainable_parameters:,} ({100 * self.total:.3f}% of the base's "
            f"{self.base_parameters:,}); per particle: {self.parameters_per_particle:,} "
            f"({100 * self.per_particle:.3f}%), {self.num_particles} particles"
        )


def trainable_fraction(bella_model, base_model):
    """Trainable parameters of `bella_model` over the parameters of `base_model`.

    Returns a `TrainableFraction` with `total` (all particles) and
    `per_particle` fractions and the counts behind them.
    """
    trainable = int(sum(int(np.prod(v.shape)) for v in bella_model.trainable_weights))
    particles = num_particles(bella_model)
    return TrainableFraction(
        trainable_parameters=trainable,
        parameters_per_particle=trainable // particles,
        base_parameters=int(base_model.count_params()),
        num_particles=particles,
    )


def load_pretrained(model, path):
    """Loads trained weights into `model` from a run directory, a checkpoint or a Keras weights file.

    Every failure is a `CheckpointError` that names `pretrained_checkpoint`
    and, for a training run of another method or architecture, says which.
    """
    from rank1_keras.runs.checkpoint import CheckpointError, latest_checkpoint
    from rank1_keras.runs.directory_lock import DirectoryLock

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
        # A run still training there is refused (naming it), not read half-way.
        with DirectoryLock(path, "Bella run reading its pretrained network", argument="--pretrained_checkpoint",
                           create=False, read_only_ok=True):
            directory = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
            checkpoint = latest_checkpoint(directory)
            if checkpoint is None:
                raise CheckpointError(f"{flag} holds no readable checkpoint; pass {expected}.")
            return _restore_pretrained(model, checkpoint, flag, expected, run_dir)
    if not path.endswith(".npz") or not os.path.exists(path):
        raise ValueError(f"{flag} must be {expected}.")
    return _restore_pretrained(model, path, flag, expected, run_dir)


def _restore_pretrained(model, path, flag, expected, run_dir):
    from rank1_keras.runs.checkpoint import CheckpointError, restore_model_weights

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


class Bella(MethodSpec):
    name = "bella"
    conversion = LayerConversions(
        {
            keras.layers.Dense: convert_low_rank(DenseLowRankEnsemble),
            keras.layers.Conv1D: convert_low_rank(Conv1DLowRankEnsemble),
            keras.layers.Conv2D: convert_low_rank(Conv2DLowRankEnsemble),
        },
        layer_classes=(DenseLowRankEnsemble, Conv1DLowRankEnsemble, Conv2DLowRankEnsemble),
        converts_batch_norm=False,
        freezes_unconverted=True,
        passes_options=LOW_RANK_OPTIONS,
    )
    member_rows = True
    settings_fields = ("bella_rank", "bella_num_particles", "bella_trainer", "bella_layers", "bella_prior_stddev",
                       "pretrained_checkpoint")

    def size(self, settings):
        return settings.bella_num_particles

    def training_batch(self, settings):
        # The ensemble trainer feeds each particle its own block of the batch (its own data order).
        return "split" if settings.bella_trainer == "ensemble" else "tile"

    def check(self, settings):
        if settings.bella_trainer == "svgd" and settings.bella_num_particles < 2:
            raise ValueError(f"bella_trainer='svgd' needs bella_num_particles >= 2; got {settings.bella_num_particles}.")

    def build(self, build_plain, settings):
        base = build_plain()
        if settings.pretrained_checkpoint:
            load_pretrained(base, settings.pretrained_checkpoint)
        return [
            to_bella(
                base,
                num_particles=settings.bella_num_particles,
                rank=settings.bella_rank,
                layers=list(settings.bella_layers) or None,
                training_batch=self.training_batch(settings),
            )
        ]

    def training_options(self, model, settings):
        """Bella-ensemble: one data order per particle; Bella-SVGD: the SVGD transform of the particles' gradients."""
        if settings.bella_trainer == "ensemble":
            return {"member_streams": settings.bella_num_particles}
        import tensorflow as tf

        particles = particle_variables(model)

        def transform(variables, gradients):
            return transform_gradients(
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


register_method(Bella())
