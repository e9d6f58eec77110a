"""Bella: Bayesian low-rank learning (Doan et al., AAAI 2025).

A pre-trained network is frozen; each of `num_particles` particles owns a
rank-`rank` perturbation W0 + (scale/rank) A_i B_i of the selected Dense and
Conv layers (`rank1_keras.layers.DenseLowRankEnsemble`, ...). Particle i's
network is the frozen network with its perturbations; prediction averages
the particles' probabilities.

* Bella-ensemble: compile the converted model with `AverageNLL(num_particles)`
  and `fit` it; each particle follows its own task-loss gradient.
* Bella-SVGD: wrap it in `rank1_keras.tensorflow.training.svgd.SVGDTrainer`, which moves
  the particles with Stein variational gradient descent.

    bella = to_bella(pretrained, num_particles=3, rank=4)
    bella.compile("adam", rank1_keras.AverageNLL(3))
    bella.fit(x, y, callbacks=[rank1_keras.TerminateOnNonFinite()])   # stops at NaN, keeps good weights
    probabilities = bella.predict(x)            # particle average
"""

from rank1_keras.methods.bella import (
    TrainableFraction,
    num_particles,
    particle_variables,
    to_bella,
    trainable_fraction,
)

__all__ = [
    "TrainableFraction",
    "num_particles",
    "particle_variables",
    "to_bella",
    "trainable_fraction",
]
