"""BatchEnsemble (Wen et al., ICLR 2020): shared W, member k's point factors r_k, s_k.

    y_k = φ(((x ∘ r_k) W) ∘ s_k + b_k)

The deterministic limit of the rank-1 layer, built from the same mechanics
(`rank1_keras.layers`): factors are plain trainable vectors, with no KL and
no weight decay.
"""

from rank1_keras.layers import (
    Conv1DBatchEnsemble,
    Conv2DBatchEnsemble,
    DenseBatchEnsemble,
    LSTMCellBatchEnsemble,
)
from rank1_keras.methods.conversions import rank1_style_conversions
from rank1_keras.methods.factors import build_converted
from rank1_keras.methods.spec import MethodSpec, register_method


class BatchEnsemble(MethodSpec):
    name = "batchensemble"
    conversion = rank1_style_conversions(DenseBatchEnsemble, Conv1DBatchEnsemble, Conv2DBatchEnsemble, LSTMCellBatchEnsemble)
    member_rows = True
    settings_fields = ("alpha_initializer", "gamma_initializer", "random_sign_init", "use_additive_perturbation",
                       "training_batch", "training_likelihood")

    def build(self, build_plain, settings):
        return build_converted(self.name, build_plain, settings, point_factors=True)


register_method(BatchEnsemble())
