"""How `rank1_keras.convert` rewrites layers: the pieces each method's spec combines.

A conversion takes the original layer, the ensemble size and the user's
options, and returns the new layer plus a function that copies the
original's weights in (run once the clone is built). A method's
`LayerConversions` maps Keras layer classes to conversions.
"""

import dataclasses
import inspect

import keras
import numpy as np

from rank1_keras.layers.dropout import MCDropout
from rank1_keras.layers.normalization import EnsembleBatchNormalization


def _tile(value, ensemble_size):
    return np.tile(np.asarray(value)[None], (ensemble_size,) + (1,) * np.ndim(value))


def _base_arguments(config, names):
    return {name: config[name] for name in names if name in config}


_DENSE_ARGUMENTS = (
    "units activation use_bias kernel_initializer bias_initializer kernel_regularizer "
    "bias_regularizer activity_regularizer kernel_constraint bias_constraint name dtype trainable"
).split()
_CONV_ARGUMENTS = _DENSE_ARGUMENTS[1:] + "filters kernel_size strides padding data_format dilation_rate".split()
_LSTM_CELL_ARGUMENTS = (
    "units activation recurrent_activation use_bias kernel_initializer recurrent_initializer "
    "bias_initializer unit_forget_bias kernel_regularizer recurrent_regularizer bias_regularizer "
    "kernel_constraint recurrent_constraint bias_constraint dropout recurrent_dropout seed"
).split()
_RNN_ARGUMENTS = "return_sequences return_state go_backwards stateful unroll name dtype trainable".split()


def check_plain(layer):
    config = layer.get_config()
    if config.get("lora_rank") or getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"layers: '{layer.name}' is LoRA-enabled or quantized; convert the plain float model instead."
        )
    if config.get("groups", 1) != 1:
        raise ValueError(
            f"layers: '{layer.name}' is a grouped convolution (groups={config['groups']}), which has no "
            "rank-1 counterpart; leave it out of `layers=`."
        )
    return config


def constructor_arguments(layer_class):
    """Explicit constructor argument names of `layer_class` and its rank-1 bases."""
    names = set()
    for klass in layer_class.__mro__:
        if klass in (keras.layers.Layer, keras.layers.LSTMCell, object):
            break
        if "__init__" in vars(klass):
            names.update(inspect.signature(klass.__init__).parameters)
    return names - {"self", "kwargs"} - _STRUCTURAL


# Arguments that come from the original layer (or the converter), never from options.
_STRUCTURAL = set(_DENSE_ARGUMENTS + _CONV_ARGUMENTS + _LSTM_CELL_ARGUMENTS + ["ensemble_size", "rank"])


def _options_for(layer_class, options):
    # Options go to the layers that take them: recurrent_* only to LSTM cells.
    accepted = constructor_arguments(layer_class)
    return {name: value for name, value in options.items() if name in accepted}


def copy_of(variable):
    """A new tensor with `variable`'s value, for another variable to hold.

    `assign(variable)` would hand the converted layer the original's own array
    on JAX, where a compiled step donates its state's buffers: a `predict` or
    `fit` of the converted model would delete the original's weights.
    """
    return keras.ops.copy(variable.value)


def _copy_kernel_and_bias(original, converted, ensemble_size):
    converted.kernel.assign(copy_of(original.kernel))
    if original.use_bias:
        converted.member_factors["bias"].variable.assign(_tile(original.bias.numpy(), ensemble_size))


def convert_dense_or_conv(layer_class):
    def convert_layer(layer, ensemble_size, options):
        config = check_plain(layer)
        names = _DENSE_ARGUMENTS if isinstance(layer, keras.layers.Dense) else _CONV_ARGUMENTS
        new_layer = layer_class(
            ensemble_size=ensemble_size, **_base_arguments(config, names), **_options_for(layer_class, options)
        )
        return new_layer, lambda: _copy_kernel_and_bias(layer, new_layer, ensemble_size)

    return convert_layer


# Bella's layers keep W0 and b frozen: regularizers and constraints on them
# would be constants, and the new layer trains (its perturbation) whatever
# the original's `trainable` was.
_LOW_RANK_DROPPED = {"kernel_regularizer", "bias_regularizer", "kernel_constraint", "bias_constraint", "trainable"}
LOW_RANK_OPTIONS = ("rank", "seed")


def convert_low_rank(layer_class):
    def convert_layer(layer, ensemble_size, options):
        config = check_plain(layer)
        names = _DENSE_ARGUMENTS if isinstance(layer, keras.layers.Dense) else _CONV_ARGUMENTS
        arguments = _base_arguments(config, [name for name in names if name not in _LOW_RANK_DROPPED])
        # `_STRUCTURAL` lists `rank` (the rank-1 convolutions' spatial rank) and
        # `seed` (the LSTM cell's dropout seed), so `_options_for` drops them;
        # here they are the perturbation's rank and the seed of its draws.
        arguments.update({name: options[name] for name in LOW_RANK_OPTIONS if name in options})
        new_layer = layer_class(ensemble_size=ensemble_size, **arguments, **_options_for(layer_class, options))

        def copy_weights():
            new_layer.kernel.assign(copy_of(layer.kernel))
            if layer.use_bias:
                new_layer.bias.assign(copy_of(layer.bias))

        return new_layer, copy_weights

    return convert_layer


def convert_lstm(cell_class):
    def convert_layer(layer, ensemble_size, options):
        config = layer.get_config()
        cell = cell_class(
            ensemble_size=ensemble_size, **_base_arguments(config, _LSTM_CELL_ARGUMENTS), **_options_for(cell_class, options)
        )
        new_layer = keras.layers.RNN(cell, **_base_arguments(config, _RNN_ARGUMENTS))

        def copy_weights():
            cell.kernel.assign(copy_of(layer.cell.kernel))
            cell.recurrent_kernel.assign(copy_of(layer.cell.recurrent_kernel))
            if layer.cell.use_bias:
                cell.member_factors["bias"].variable.assign(_tile(layer.cell.bias.numpy(), ensemble_size))

        return new_layer, copy_weights

    return convert_layer


def per_member_batch_norm(layer, ensemble_size, keep_trainable=True):
    """An `EnsembleBatchNormalization` with `layer`'s arguments (fresh weights).

    `keep_trainable=False` drops the original's `trainable` (a model trained
    from scratch trains every layer).
    """
    config = layer.get_config()
    axis = config["axis"]
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ValueError(f"layers: '{layer.name}' normalises over several axes {axis}; keep it shared.")
        axis = axis[0]
    names = (
        "momentum epsilon center scale beta_initializer gamma_initializer moving_mean_initializer "
        "moving_variance_initializer beta_regularizer gamma_regularizer beta_constraint gamma_constraint "
        "name dtype"
    ).split() + (["trainable"] if keep_trainable else [])
    return EnsembleBatchNormalization(ensemble_size=ensemble_size, axis=axis, **_base_arguments(config, names))


def convert_batch_norm(layer, ensemble_size, options):
    new_layer = per_member_batch_norm(layer, ensemble_size)

    def copy_weights():
        for role in ("gamma", "beta", "moving_mean", "moving_variance"):
            source = getattr(layer, role, None)
            if source is not None:
                getattr(new_layer, role).assign(_tile(source.numpy(), ensemble_size))

    return new_layer, copy_weights


def convert_dropout(layer, ensemble_size, options):
    config = layer.get_config()
    new_layer = MCDropout(**_base_arguments(config, "rate noise_shape seed name dtype trainable".split()))
    return new_layer, lambda: None


@dataclasses.dataclass
class LayerConversions:
    """How one method converts the layers of a plain model (what `rank1_keras.convert` applies).

    Attributes:
        layer_conversions: {Keras layer class: conversion function}.
        layer_classes: the classes the conversions create (for option checks).
        default_training_batch: "tile" or "split".
        converts_batch_norm: whether `batch_norm="per_member"` applies.
        inserts_dropout: whether `dropout_rate` may insert MCDropout layers.
        freezes_unconverted: whether every layer that is not converted is
            frozen (trainable=False; BatchNormalization then runs in inference
            mode), as Bella trains only its perturbations.
        passes_options: option names accepted although `_STRUCTURAL` lists
            them, because the method's conversions pass them on (Bella's `rank`, `seed`).
        finalize: None, or `finalize(converted_layers, options)`, called once
            the clone is built and its weights copied, with the layers the
            conversions created (an LSTM as its new `keras.layers.RNN`).
        copies_weights: whether the original's weights are copied in (False:
            the method trains from scratch, e.g. Packed-Ensembles, whose layers
            change width).
        uses_layer_roles: whether conversions take `role=LayerRole(...)`:
            where the layer sits between the model's inputs and outputs.
        kl_factors: factor names (e.g. "alpha") whose default regularizer is
            a KL divergence to the prior: `convert` scales it by 1/train_size
            and refuses to run without `train_size`.
    """

    layer_conversions: dict
    layer_classes: tuple = ()
    default_training_batch: str = "tile"
    converts_batch_norm: bool = True
    inserts_dropout: bool = False
    freezes_unconverted: bool = False
    passes_options: tuple = ()
    finalize: object = None
    copies_weights: bool = True
    uses_layer_roles: bool = False
    kl_factors: tuple = ()


@dataclasses.dataclass(frozen=True)
class LayerRole:
    """Where a converted layer sits in the model's graph.

    Attributes:
        reads_inputs: its input comes from a model input with no converted
            layer on the way (the first layer of a branch).
        writes_outputs: its output reaches a model output with no converted
            layer on the way (a head: its width is the task's).
    """

    reads_inputs: bool
    writes_outputs: bool


def conversion_for(layer, conversions):
    """The conversion `conversions` (a `LayerConversions`) has for `layer`, or None.

    Exact classes first (Conv1D is not a Conv2D), then subclasses, so a
    user's Dense subclass still converts.
    """
    for layer_class, conversion in conversions.layer_conversions.items():
        if type(layer) is layer_class:
            return conversion
    for layer_class, conversion in conversions.layer_conversions.items():
        if isinstance(layer, layer_class):
            return conversion
    return None


def rank1_style_conversions(dense, conv1d, conv2d, lstm_cell, **attributes):
    """`LayerConversions` of the factor methods: Dense, Conv1D, Conv2D and LSTM to the given classes."""
    return LayerConversions(
        {
            keras.layers.Dense: convert_dense_or_conv(dense),
            keras.layers.Conv1D: convert_dense_or_conv(conv1d),
            keras.layers.Conv2D: convert_dense_or_conv(conv2d),
            keras.layers.LSTM: convert_lstm(lstm_cell),
        },
        layer_classes=(dense, conv1d, conv2d, lstm_cell),
        **attributes,
    )
