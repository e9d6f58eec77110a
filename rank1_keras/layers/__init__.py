"""Ensemble layers: rank-1 Bayesian (stochastic factors), BatchEnsemble (point factors), LP-BNN, Bella, Packed-Ensembles, heads."""

from rank1_keras.layers.convolutional import (
    Conv1DBatchEnsemble,
    Conv1DRank1,
    Conv2DBatchEnsemble,
    Conv2DRank1,
)
from rank1_keras.layers.dense import DenseBatchEnsemble, DenseRank1
from rank1_keras.layers.gaussian import GaussianParameters
from rank1_keras.layers.latent_posterior import (
    Conv1DLatentPosterior,
    Conv2DLatentPosterior,
    DenseLatentPosterior,
    LatentPosterior,
    LatentPosteriorMixin,
    LSTMCellLatentPosterior,
)
from rank1_keras.layers.rank1_mechanics import MemberFactor, MemberRows, Rank1Mixin
from rank1_keras.layers.low_rank import (
    Conv1DLowRankEnsemble,
    Conv2DLowRankEnsemble,
    DenseLowRankEnsemble,
    LowRankEnsembleMixin,
)
from rank1_keras.layers.packed import Conv1DPackedEnsemble, Conv2DPackedEnsemble, DensePackedEnsemble
from rank1_keras.layers.recurrent import LSTMCellBatchEnsemble, LSTMCellRank1

__all__ = [
    "Conv1DBatchEnsemble",
    "Conv1DPackedEnsemble",
    "Conv2DPackedEnsemble",
    "DensePackedEnsemble",
    "Conv1DRank1",
    "Conv2DBatchEnsemble",
    "Conv2DRank1",
    "DenseBatchEnsemble",
    "DenseRank1",
    "GaussianParameters",
    "LSTMCellBatchEnsemble",
    "LSTMCellRank1",
    "MemberFactor",
    "MemberRows",
    "Rank1Mixin",
    "Conv1DLatentPosterior",
    "Conv2DLatentPosterior",
    "DenseLatentPosterior",
    "LatentPosterior",
    "LatentPosteriorMixin",
    "LSTMCellLatentPosterior",
    "Conv1DLowRankEnsemble",
    "Conv2DLowRankEnsemble",
    "DenseLowRankEnsemble",
    "LowRankEnsembleMixin",
]
