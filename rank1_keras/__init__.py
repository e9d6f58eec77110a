"""rank1_keras: rank-1 Bayesian neural networks and efficient ensembles for Keras 3.

    import rank1_keras as r1
    layer = r1.layers.DenseRank1(10, ensemble_size=4)
"""

from rank1_keras import callbacks, layers, losses
from rank1_keras.models import ensemble
from rank1_keras.probability import initializers, regularizers
from rank1_keras.callbacks import KLAnnealing, TerminateOnNonFinite
from rank1_keras.convert import conversion_summary, convert, fold_members, join_ensemble, member_outputs, set_mc_dropout
from rank1_keras.models.ensemble import AverageMembers, TileEnsemble
from rank1_keras.losses import AverageNLL, MixtureNLL
from rank1_keras.probability.random_variable import RandomVariable

__version__ = "0.1.0"

__all__ = [
    "conversion_summary",
    "convert",
    "fold_members",
    "join_ensemble",
    "member_outputs",
    "set_mc_dropout",
    "AverageMembers",
    "AverageNLL",
    "KLAnnealing",
    "MixtureNLL",
    "RandomVariable",
    "TerminateOnNonFinite",
    "TileEnsemble",
    "callbacks",
    "ensemble",
    "initializers",
    "layers",
    "losses",
    "regularizers",
]
