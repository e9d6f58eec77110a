"""Rank-1 BNNs (Dusenberry et al., ICML 2020): BatchEnsemble with a K-component mixture posterior on r and s.

    q(r) = (1/K) Σ_k N(μ_k, σ_k²),   prior N(1, σ_p²) or Cauchy(1, σ_p)

Member k's rows draw from component k; the KL to the prior, scaled by 1/N,
joins the loss, so training minimises the per-example negative ELBO.
Evaluation averages `num_eval_samples` draws per member.
"""

from rank1_keras.layers import Conv1DRank1, Conv2DRank1, DenseRank1, LSTMCellRank1
from rank1_keras.methods.conversions import rank1_style_conversions
from rank1_keras.methods.factors import build_converted
from rank1_keras.methods.spec import MethodSpec, register_method


class Rank1BNN(MethodSpec):
    name = "rank1"
    conversion = rank1_style_conversions(
        DenseRank1, Conv1DRank1, Conv2DRank1, LSTMCellRank1,
        kl_factors=("alpha", "gamma", "recurrent_alpha", "recurrent_gamma"),
    )
    member_rows = True
    stochastic = True
    settings_fields = ("prior", "prior_mean", "prior_stddev", "alpha_initializer", "gamma_initializer",
                       "random_sign_init", "posterior_initial_stddev", "use_additive_perturbation",
                       "num_eval_samples", "training_batch", "training_likelihood")

    def build(self, build_plain, settings):
        return build_converted(self.name, build_plain, settings)


register_method(Rank1BNN())
