"""Bella: Bayesian low-rank learning (Doan et al., AAAI 2025).

A pre-trained network is frozen; each of `num_particles` particles owns a
rank-`rank` perturbation W0 + (scale/rank) A_i B_i of the selected Dense and
Conv layers (`rank1_keras.layers.DenseLowRankEnsemble`, ...). Particle i's
network is the frozen network with its perturbations; prediction averages
the particles' probabilities.

* Bella-ensemble: compile the converted model with `AverageNLL(num_particles)`
  and `fit` it; each particle follows its own task-loss gradient.
* Bella-SVGD: wrap it in `rank1_keras.training.svgd.SVGDTrainer`, which moves
  the particles with Stein variational gradient descent.

    bella = to_bella(pretrained, num_particles=3, rank=4)
    bella.compile("adam", rank1_keras.AverageNLL(3))
    bella.fit(x, y)
    probabilities = bella.predict(x)            # particle average
"""

import dataclasses

import numpy as np

from rank1_keras import validation
from rank1_keras.convert import convert
from rank1_keras.layers.low_rank import low_rank_layers


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
