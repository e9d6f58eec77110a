"""MC dropout (Gal & Ghahramani, 2016): dropout kept on at test time, `num_eval_samples` passes averaged."""

import keras

from rank1_keras.layers.walk import layers_of
from rank1_keras.methods.conversions import LayerConversions, convert_dropout
from rank1_keras.methods.converter import convert
from rank1_keras.methods.spec import MethodSpec, register_method


def _has_dropout(model):
    return bool(layers_of(model, keras.layers.Dropout))


class MCDropoutMethod(MethodSpec):
    """Dropout layers become `MCDropout` (always on); a model without any gets
    `MCDropout(dropout_rate)` after every hidden Dense/Conv layer."""

    name = "dropout"
    conversion = LayerConversions(
        {keras.layers.Dropout: convert_dropout},
        default_training_batch="split",
        converts_batch_norm=False,
        inserts_dropout=True,
    )
    stochastic = True
    settings_fields = ("dropout_rate", "num_eval_samples")

    def training_batch(self, settings):
        # One network trains on each example once, whatever --training_batch says for the ensembles.
        return "split"

    def build(self, build_plain, settings):
        plain = build_plain()
        rate = None if _has_dropout(plain) else settings.dropout_rate
        return [convert(plain, self.name, ensemble_size=1, dropout_rate=rate)]


register_method(MCDropoutMethod())
