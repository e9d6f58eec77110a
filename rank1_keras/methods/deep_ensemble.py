"""Deep ensembles (Lakshminarayanan et al., 2017): K plain networks, probabilities averaged.

The quality ceiling the efficient methods are measured against, at K times
the parameters and training cost. Each member is its own initialisation
(the global seed moves on between builds) and trains on its own data order
(the experiment gives member k the seed `seed + 1000 k`); `inference_model`
joins them with `join_ensemble`.
"""

from rank1_keras.methods.spec import MethodSpec, register_method


class DeepEnsemble(MethodSpec):
    name = "ensemble"
    separate_models = True

    def build(self, build_plain, settings):
        return [build_plain() for _ in range(settings.ensemble_size)]


register_method(DeepEnsemble())
