"""Packed-Ensembles (Laurent et al., ICLR 2023): K narrow independent members packed into one network.

Every Dense / Conv layer becomes its packed counterpart
(`rank1_keras.layers.packed`): member k owns its own kernel of width
ceil(α·width / (K·γ))·γ (α the width factor, γ the groups of each member's
kernel), except the heads, which keep the task's width (classes,
regression targets). The first layer of each branch sees the whole input
(one group), as the paper's. Members are blocks of rows like every ensemble
of the package, so tiling, averaging, the losses, `member_outputs` and the
export are BatchEnsemble's. Nothing is shared and nothing is copied: a
packed model trains from scratch, and with α = 2, γ = 1, K = 4 it has about
the original network's parameters, a quarter of a deep ensemble's.
BatchNormalization becomes per-member batch norm of the new width.

    converted = convert(model, "packed", ensemble_size=4, width_factor=2.0, groups=1)
"""

import math

import keras

from rank1_keras import validation
from rank1_keras.methods.converter import convert
from rank1_keras.layers.packed import Conv1DPackedEnsemble, Conv2DPackedEnsemble, DensePackedEnsemble
from rank1_keras.methods.conversions import (
    _CONV_ARGUMENTS,
    _DENSE_ARGUMENTS,
    LayerConversions,
    _base_arguments,
    check_plain,
    per_member_batch_norm,
)
from rank1_keras.methods.spec import MethodSpec, register_method

PACKED_OPTIONS = ("width_factor", "groups")
# Arguments of the original layer that do not carry over: the width is the
# packed one, and a fresh model's layers all train.
_DROPPED = {"units", "filters", "trainable"}


def member_width(width, ensemble_size, width_factor, groups):
    """One member's width for an original `width`: ceil(α·width / (K·γ))·γ, at least γ."""
    return max(1, math.ceil(width_factor * width / (ensemble_size * groups))) * groups


def _packed_options(options):
    width_factor = validation.check_positive_finite(options.get("width_factor", 2.0), "width_factor")
    groups = validation.check_positive_int(options.get("groups", 1), "groups")
    return width_factor, groups


def _convert_packed(layer_class):
    def convert_layer(layer, ensemble_size, options, role):
        config = check_plain(layer)
        width_factor, groups = _packed_options(options)
        is_dense = isinstance(layer, keras.layers.Dense)
        arguments = _base_arguments(config, [n for n in (_DENSE_ARGUMENTS if is_dense else _CONV_ARGUMENTS)
                                             if n not in _DROPPED])
        width = config["units"] if is_dense else config["filters"]
        if not role.writes_outputs:  # heads keep the task's width
            width = member_width(width, ensemble_size, width_factor, groups)
        # A branch's first layer sees the raw input, a head's width is the task's: one group for both.
        layer_groups = 1 if role.reads_inputs or role.writes_outputs else groups
        new_layer = layer_class(width, ensemble_size=ensemble_size, groups=layer_groups, **arguments)
        return new_layer, lambda: None

    return convert_layer


def _fresh_batch_norm(layer, ensemble_size, options, role=None):
    return per_member_batch_norm(layer, ensemble_size, keep_trainable=False), lambda: None


def _refuse_lstm(layer, ensemble_size, options, role=None):
    raise ValueError(
        f"layers: '{layer.name}' is an LSTM, which has no packed counterpart yet; leave it out of `layers=` "
        "(it is then shared by the members) or use method='batchensemble' or 'rank1'."
    )


class PackedEnsembles(MethodSpec):
    name = "packed"
    conversion = LayerConversions(
        {
            keras.layers.Dense: _convert_packed(DensePackedEnsemble),
            keras.layers.Conv1D: _convert_packed(Conv1DPackedEnsemble),
            keras.layers.Conv2D: _convert_packed(Conv2DPackedEnsemble),
            keras.layers.BatchNormalization: _fresh_batch_norm,
            keras.layers.LSTM: _refuse_lstm,
        },
        layer_classes=(DensePackedEnsemble, Conv1DPackedEnsemble, Conv2DPackedEnsemble),
        converts_batch_norm=False,  # its own conversion: fresh per-member statistics of the packed width
        passes_options=PACKED_OPTIONS,
        copies_weights=False,
        uses_layer_roles=True,
    )
    member_rows = True
    settings_fields = ("ensemble_size", "packed_width_factor", "packed_groups", "training_batch",
                       "training_likelihood")

    def build(self, build_plain, settings):
        return [
            convert(
                build_plain(),
                self.name,
                settings.ensemble_size,
                training_batch=settings.effective_training_batch,
                width_factor=settings.packed_width_factor,
                groups=settings.packed_groups,
            )
        ]


register_method(PackedEnsembles())
