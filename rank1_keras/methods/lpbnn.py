"""LP-BNN (Franchi et al., TPAMI 2024): BatchEnsemble whose input-side factors pass through a per-layer VAE.

The decoded r_k replaces r_k in the forward pass; the loss adds w times the
mean over layers of [MSE(decoded, r_k) + KL(N(μ, σ²) ‖ N(0, I))].
"""

from rank1_keras.layers.latent_posterior import (
    Conv1DLatentPosterior,
    Conv2DLatentPosterior,
    DenseLatentPosterior,
    LatentPosteriorMixin,
    LSTMCellLatentPosterior,
)
from rank1_keras.methods.conversions import rank1_style_conversions
from rank1_keras.methods.factors import build_converted
from rank1_keras.methods.spec import MethodSpec, register_method


def _average_latent_loss_over_layers(converted_layers, options):
    """LP-BNN's loss is w times the *mean* over layers of the VAE terms: each
    LP-BNN layer's `latent_loss_weight` (w) is divided by their number (an
    LSTM cell counts as one layer; its term is the mean of its two VAEs)."""
    latent_layers = [getattr(layer, "cell", layer) for layer in converted_layers]
    latent_layers = [layer for layer in latent_layers if isinstance(layer, LatentPosteriorMixin)]
    for layer in latent_layers:
        layer.latent_loss_weight = layer.latent_loss_weight / len(latent_layers)


class LPBNN(MethodSpec):
    name = "lpbnn"
    conversion = rank1_style_conversions(
        DenseLatentPosterior, Conv1DLatentPosterior, Conv2DLatentPosterior, LSTMCellLatentPosterior,
        finalize=_average_latent_loss_over_layers,
    )
    member_rows = True
    settings_fields = ("latent_dim", "latent_loss_weight", "latent_inference", "random_sign_init",
                       "training_batch", "training_likelihood")

    def eval_samples(self, settings):
        # The paper's evaluation decodes the latent means (one pass); sampled latents average passes.
        return settings.num_eval_samples if settings.latent_inference == "sample" else 1

    def build(self, build_plain, settings):
        return build_converted(
            self.name, build_plain, settings, point_factors=True,
            latent_dim=settings.latent_dim, latent_loss_weight=settings.latent_loss_weight,
            inference=settings.latent_inference,
        )


register_method(LPBNN())
