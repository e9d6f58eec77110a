"""Turn any Sequential or functional Keras model into an ensemble or a Bayesian network.

    converted = rank1_keras.convert(model, "rank1", ensemble_size=4)

The converted model takes the same plain inputs as the original, tiles them
K times in block order inside (`TileEnsemble`), runs the converted layers,
and averages the members' outputs (`AverageMembers`): `predict` gives the
ensemble's answer. In training it returns the member rows instead (K*B of
them, or B with `training_batch="split"`), so `model.fit(x, y)` with plain
labels trains with `AverageNLL(K)` or `MixtureNLL(K)`. The per-member
outputs are also reachable at inference through `member_outputs(converted)`.

Methods are registered by name (`register_method`), so later methods join the
same entry point.
"""

import dataclasses
import inspect

import keras
import numpy as np
from keras.src.models.functional import Functional  # the class of functional models

from rank1_keras import initializers as rank1_initializers
from rank1_keras import regularizers as rank1_regularizers
from rank1_keras import validation
from rank1_keras.ensemble import OUTPUT_TYPES, TRAINING_BATCHES, TRAINING_OUTPUTS, AverageMembers, MemberAxis, TileEnsemble
from rank1_keras.layers import (
    Conv1DBatchEnsemble,
    Conv1DRank1,
    Conv2DBatchEnsemble,
    Conv2DRank1,
    DenseBatchEnsemble,
    DenseRank1,
    LSTMCellBatchEnsemble,
    LSTMCellRank1,
)
from rank1_keras.layers.dropout import MCDropout
from rank1_keras.layers.gaussian import GaussianParameters
from rank1_keras.layers.latent_posterior import (
    Conv1DLatentPosterior,
    Conv2DLatentPosterior,
    DenseLatentPosterior,
    LatentPosteriorMixin,
    LSTMCellLatentPosterior,
)
from rank1_keras.layers.low_rank import Conv1DLowRankEnsemble, Conv2DLowRankEnsemble, DenseLowRankEnsemble
from rank1_keras.layers.normalization import EnsembleBatchNormalization

BATCH_NORM_MODES = ("per_member", "shared")
_CORE_SUFFIX = "_members"


# -- layer conversions --------------------------------------------------------
# Each takes the original layer, the ensemble size and the user's options, and
# returns the new layer plus a function that copies the original's weights in.


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


def _check_plain(layer):
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


def _constructor_arguments(layer_class):
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
    accepted = _constructor_arguments(layer_class)
    return {name: value for name, value in options.items() if name in accepted}


def _copy_kernel_and_bias(original, converted, ensemble_size):
    converted.kernel.assign(original.kernel)
    if original.use_bias:
        converted.member_factors["bias"].variable.assign(_tile(original.bias.numpy(), ensemble_size))


def _convert_dense_or_conv(layer_class):
    def convert_layer(layer, ensemble_size, options):
        config = _check_plain(layer)
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
_LOW_RANK_OPTIONS = ("rank", "seed")


def _convert_low_rank(layer_class):
    def convert_layer(layer, ensemble_size, options):
        config = _check_plain(layer)
        names = _DENSE_ARGUMENTS if isinstance(layer, keras.layers.Dense) else _CONV_ARGUMENTS
        arguments = _base_arguments(config, [name for name in names if name not in _LOW_RANK_DROPPED])
        # `_STRUCTURAL` lists `rank` (the rank-1 convolutions' spatial rank) and
        # `seed` (the LSTM cell's dropout seed), so `_options_for` drops them;
        # here they are the perturbation's rank and the seed of its draws.
        arguments.update({name: options[name] for name in _LOW_RANK_OPTIONS if name in options})
        new_layer = layer_class(ensemble_size=ensemble_size, **arguments, **_options_for(layer_class, options))

        def copy_weights():
            new_layer.kernel.assign(layer.kernel)
            if layer.use_bias:
                new_layer.bias.assign(layer.bias)

        return new_layer, copy_weights

    return convert_layer


def _convert_lstm(cell_class):
    def convert_layer(layer, ensemble_size, options):
        config = layer.get_config()
        cell = cell_class(
            ensemble_size=ensemble_size, **_base_arguments(config, _LSTM_CELL_ARGUMENTS), **_options_for(cell_class, options)
        )
        new_layer = keras.layers.RNN(cell, **_base_arguments(config, _RNN_ARGUMENTS))

        def copy_weights():
            cell.kernel.assign(layer.cell.kernel)
            cell.recurrent_kernel.assign(layer.cell.recurrent_kernel)
            if layer.cell.use_bias:
                cell.member_factors["bias"].variable.assign(_tile(layer.cell.bias.numpy(), ensemble_size))

        return new_layer, copy_weights

    return convert_layer


def _convert_batch_norm(layer, ensemble_size, options):
    config = layer.get_config()
    axis = config["axis"]
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ValueError(f"layers: '{layer.name}' normalises over several axes {axis}; keep it shared.")
        axis = axis[0]
    arguments = _base_arguments(
        config,
        "momentum epsilon center scale beta_initializer gamma_initializer moving_mean_initializer "
        "moving_variance_initializer beta_regularizer gamma_regularizer beta_constraint gamma_constraint "
        "name dtype trainable".split(),
    )
    new_layer = EnsembleBatchNormalization(ensemble_size=ensemble_size, axis=axis, **arguments)

    def copy_weights():
        for role in ("gamma", "beta", "moving_mean", "moving_variance"):
            source = getattr(layer, role, None)
            if source is not None:
                getattr(new_layer, role).assign(_tile(source.numpy(), ensemble_size))

    return new_layer, copy_weights


def _convert_dropout(layer, ensemble_size, options):
    config = layer.get_config()
    new_layer = MCDropout(**_base_arguments(config, "rate noise_shape seed name dtype trainable".split()))
    return new_layer, lambda: None


@dataclasses.dataclass
class Method:
    """How one method converts layers.

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
    kl_factors: tuple = ()


_METHODS = {}


def register_method(name, method):
    """Registers a conversion `Method` under `name` (used by later methods, e.g. LP-BNN)."""
    _METHODS[name] = method


register_method(
    "batchensemble",
    Method(
        {
            keras.layers.Dense: _convert_dense_or_conv(DenseBatchEnsemble),
            keras.layers.Conv1D: _convert_dense_or_conv(Conv1DBatchEnsemble),
            keras.layers.Conv2D: _convert_dense_or_conv(Conv2DBatchEnsemble),
            keras.layers.LSTM: _convert_lstm(LSTMCellBatchEnsemble),
        },
        layer_classes=(DenseBatchEnsemble, Conv1DBatchEnsemble, Conv2DBatchEnsemble, LSTMCellBatchEnsemble),
    ),
)
register_method(
    "rank1",
    Method(
        {
            keras.layers.Dense: _convert_dense_or_conv(DenseRank1),
            keras.layers.Conv1D: _convert_dense_or_conv(Conv1DRank1),
            keras.layers.Conv2D: _convert_dense_or_conv(Conv2DRank1),
            keras.layers.LSTM: _convert_lstm(LSTMCellRank1),
        },
        layer_classes=(DenseRank1, Conv1DRank1, Conv2DRank1, LSTMCellRank1),
        kl_factors=("alpha", "gamma", "recurrent_alpha", "recurrent_gamma"),
    ),
)


def _average_latent_loss_over_layers(converted_layers, options):
    """LP-BNN's loss is w times the *mean* over layers of the VAE terms: each
    LP-BNN layer's `latent_loss_weight` (w) is divided by their number (an
    LSTM cell counts as one layer; its term is the mean of its two VAEs)."""
    latent_layers = [getattr(layer, "cell", layer) for layer in converted_layers]
    latent_layers = [layer for layer in latent_layers if isinstance(layer, LatentPosteriorMixin)]
    for layer in latent_layers:
        layer.latent_loss_weight = layer.latent_loss_weight / len(latent_layers)


register_method(
    "lpbnn",
    Method(
        {
            keras.layers.Dense: _convert_dense_or_conv(DenseLatentPosterior),
            keras.layers.Conv1D: _convert_dense_or_conv(Conv1DLatentPosterior),
            keras.layers.Conv2D: _convert_dense_or_conv(Conv2DLatentPosterior),
            keras.layers.LSTM: _convert_lstm(LSTMCellLatentPosterior),
        },
        layer_classes=(DenseLatentPosterior, Conv1DLatentPosterior, Conv2DLatentPosterior, LSTMCellLatentPosterior),
        finalize=_average_latent_loss_over_layers,
    ),
)
register_method(
    "dropout",
    Method(
        {keras.layers.Dropout: _convert_dropout},
        default_training_batch="split",
        converts_batch_norm=False,
        inserts_dropout=True,
    ),
)


register_method(
    "bella",
    Method(
        {
            keras.layers.Dense: _convert_low_rank(DenseLowRankEnsemble),
            keras.layers.Conv1D: _convert_low_rank(Conv1DLowRankEnsemble),
            keras.layers.Conv2D: _convert_low_rank(Conv2DLowRankEnsemble),
        },
        layer_classes=(DenseLowRankEnsemble, Conv1DLowRankEnsemble, Conv2DLowRankEnsemble),
        converts_batch_norm=False,
        freezes_unconverted=True,
        passes_options=_LOW_RANK_OPTIONS,
    ),
)


def methods():
    """Names of the registered methods."""
    return sorted(_METHODS)


# -- the converter ------------------------------------------------------------


def _scaled_kl_options(spec, method, options, train_size, target_classes):
    """The method's default KL regularizers, scaled by 1/train_size (explicit ones are kept).

    `target_classes`: the classes this conversion creates; a factor counts
    only if one of them has it (recurrent factors only with an LSTM).
    """
    accepted = set().union(*(_constructor_arguments(c) for c in target_classes)) if target_classes else set()
    defaulted = []
    for name in spec.kl_factors:
        if f"{name}_regularizer" in options or f"{name}_regularizer" not in accepted:
            continue  # the user's own regularizer, used as given; or no layer has this factor
        initializer = rank1_initializers.get(options.get(f"{name}_initializer", "trainable_normal"), f"{name}_initializer")
        if isinstance(initializer, rank1_initializers.TrainableInitializer):
            defaulted.append(name)
    if not defaulted:
        return {}
    if train_size is None:
        raise ValueError(
            f"train_size is required for method={method!r}: its default KL regularizers "
            f"({', '.join(f'{name}_regularizer' for name in defaulted)}) are scaled by 1/train_size, so "
            "the loss is the per-example negative ELBO. Pass train_size=N, the number of training "
            "examples (or pass the regularizers yourself)."
        )
    return {
        f"{name}_regularizer": rank1_regularizers.NormalKLDivergence(scale_factor=1.0 / train_size)
        for name in defaulted
    }


_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def _inferred_output_type(tensor):
    """"probabilities" / "logits" / "gaussian" when the output's last layer says so, else None."""
    layer = tensor._keras_history[0]
    if isinstance(layer, GaussianParameters):
        return "gaussian"
    if isinstance(layer, keras.layers.Softmax):
        return "probabilities"
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    if activation in _PROBABILITY_ACTIVATIONS:
        return "probabilities"
    if activation == "log_softmax":  # log-probabilities are valid logits
        return "logits"
    return None


def _output_types(functional, output_type):
    """One output type per model output: given, or read off the output layers."""
    outputs = functional.outputs
    if output_type is None or isinstance(output_type, str):
        types = [output_type] * len(outputs)
    else:
        types = list(output_type)
        if len(types) != len(outputs):
            raise ValueError(
                f"output_type must be one of {list(OUTPUT_TYPES)} or a list with one per model output "
                f"({len(outputs)}); got output_type={output_type!r}."
            )
    resolved = []
    for tensor, kind in zip(outputs, types):
        if kind is None:
            kind = _inferred_output_type(tensor)
        if kind is None:
            layer = tensor._keras_history[0]
            activation = getattr(getattr(layer, "activation", None), "__name__", None)
            raise ValueError(
                f"output_type is needed: the model's output layer '{layer.name}' ({type(layer).__name__}"
                f"{f', activation={activation!r}' if activation else ''}) ends without a softmax or sigmoid, so "
                "its outputs could be logits or regression values. Pass output_type='logits' (a classifier "
                "trained with from_logits=True: members are averaged as probabilities and returned as "
                "logits), 'regression' (point predictions, averaged; train with MemberMeanSquaredError) or "
                "'probabilities'. Gaussian heads end with rank1_keras.layers.GaussianParameters."
            )
        resolved.append(validation.check_choice(kind, "output_type", OUTPUT_TYPES))
    return resolved


def _conversion_for(layer, method):
    # Exact classes first (Conv1D is not a Conv2D), then subclasses, so a
    # user's Dense subclass still converts.
    for layer_class, conversion in method.layer_conversions.items():
        if type(layer) is layer_class:
            return conversion
    for layer_class, conversion in method.layer_conversions.items():
        if isinstance(layer, layer_class):
            return conversion
    return None


def _target_classes(model, chosen, spec):
    """The layer classes converting `model`'s chosen layers creates (`layer_classes` pairs with
    `layer_conversions` in order)."""
    pairs = list(zip(spec.layer_conversions, spec.layer_classes))
    targets = set()
    for layer in model.layers:
        if id(layer) not in chosen:
            continue
        conversion = _conversion_for(layer, spec)
        targets.update(target for keras_class, target in pairs if spec.layer_conversions[keras_class] is conversion)
    return targets


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model; got {type(model).__name__}.")
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"model must be a Sequential or functional Keras model; got the subclassed "
            f"{type(model).__name__}. Rebuild it with keras.Input and the functional API (or "
            "keras.Sequential) so its layers can be converted."
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(
            "model is an unbuilt Sequential model; give it a keras.Input (or call it once) before converting."
        )


def _selected(model, layers):
    """The layers of `model` chosen for conversion (by class or name)."""
    all_layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if layers is None:
        return {id(layer) for layer in all_layers}
    if isinstance(layers, (str, type)):
        layers = [layers]
    chosen = set()
    for entry in layers:
        if isinstance(entry, str):
            matches = [layer for layer in all_layers if layer.name == entry]
        elif isinstance(entry, type):
            matches = [layer for layer in all_layers if isinstance(layer, entry)]
        else:
            raise ValueError(f"layers entries must be layer names or layer classes; got {entry!r}.")
        if not matches:
            raise ValueError(
                f"layers entry {entry!r} matches no layer of the model. Layer names: "
                f"{[layer.name for layer in all_layers]}."
            )
        chosen.update(id(layer) for layer in matches)
    return chosen


def convert(
    model,
    method,
    ensemble_size=4,
    layers=None,
    batch_norm="per_member",
    training_batch=None,
    training_output="members",
    num_samples=None,
    dropout_rate=None,
    train_size=None,
    output_type=None,
    **options,
):
    """Converts a Sequential or functional Keras model into `method`.

    Args:
        model: a built Sequential or functional `keras.Model` (keras.applications
            networks included); subclassed models are rejected.
        method: "batchensemble", "rank1", "dropout" or "bella" (see `methods()`;
            for Bella, `rank1_keras.bella.to_bella` documents the options).
            "lpbnn" also takes `latent_dim`, `latent_loss_weight` (w, divided
            by the number of converted LP-BNN layers so the model's VAE loss
            is w times the layer average, as the paper) and `inference`.
        ensemble_size: K, the number of members (mixture components). For
            "dropout" it is the number of MC samples averaged at inference.
        layers: which layers convert: None (every convertible layer), or a list
            of layer names and/or classes. Dense, Conv1D, Conv2D and LSTM become
            the method's layers; for "dropout", Dropout layers become
            `MCDropout`. Every other layer is kept and shared by the members.
        batch_norm: "per_member" (each selected BatchNormalization gets
            per-member statistics and affine parameters, as the papers; with
            `layers=`, list the BN layers too) or "shared".
        training_batch: "tile" (every member sees every example; default for
            ensembles) or "split" (member k trains on its own block of the
            batch, floor(B/K) or ceil(B/K) examples; default for dropout,
            where it is plain dropout training).
        training_output: "members" (in training the model returns member
            rows for the ensemble losses) or "average".
        num_samples: alias of `ensemble_size` for "dropout".
        dropout_rate: for "dropout", insert `MCDropout(dropout_rate)` after each
            selected layer (for models that have no Dropout layers).
        train_size: N, the number of training examples. Required by methods
            whose layers carry a KL term ("rank1"): the default KL
            regularizers get `scale_factor=1/N`, so the loss is the
            per-example negative ELBO. Regularizers passed in `options` are
            used as given.
        output_type: what the model outputs, which says how members are
            averaged: "probabilities" (softmax or sigmoid), "logits" (averaged
            as probabilities, returned as the mixture's logits: train with
            `from_logits=True`), "regression" (point predictions: their mean)
            or "gaussian" (`GaussianParameters` heads: the mixture's mean and
            standard deviation); a list for several outputs. None: read off
            the output layer (softmax/sigmoid, `log_softmax`,
            `GaussianParameters`); any other ending is an error asking for it.
        **options: passed to every converted layer's constructor, e.g.
            `alpha_initializer="ones", gamma_initializer="ones"`, KL
            regularizers, `inference="mean"`.

    Returns:
        A functional `keras.Model` with the same inputs as `model`. Shared
        kernels and biases are copied from `model`; BatchEnsemble factors
        start at random signs (members differ from the first step; with
        `alpha_initializer="ones", gamma_initializer="ones"` the converted
        model reproduces the original, and its members stay identical).

    Example:

        converted = convert(model, "batchensemble", ensemble_size=4)
        converted.compile("adam", rank1_keras.AverageNLL(4))
        converted.fit(x, y)
        probabilities = converted.predict(x)        # member average
    """
    _check_model(model)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {methods()}; got method={method!r}.")
    spec = _METHODS[method]
    if num_samples is not None:
        if method != "dropout":
            raise ValueError(f"num_samples applies to method='dropout' only; use ensemble_size for {method!r}.")
        ensemble_size = num_samples
    ensemble_size = validation.check_positive_int(
        ensemble_size, "num_samples" if num_samples is not None else "ensemble_size"
    )
    validation.check_choice(batch_norm, "batch_norm", BATCH_NORM_MODES)
    training_batch = training_batch or spec.default_training_batch
    validation.check_choice(training_batch, "training_batch", TRAINING_BATCHES)
    validation.check_choice(training_output, "training_output", TRAINING_OUTPUTS)
    if dropout_rate is not None:
        if not spec.inserts_dropout:
            raise ValueError(f"dropout_rate applies to method='dropout' only; got method={method!r}.")
        validation.check_rate(dropout_rate, "dropout_rate")
    known = set().union(*(_constructor_arguments(c) for c in spec.layer_classes)) if spec.layer_classes else set()
    known |= set(spec.passes_options)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for method={method!r}; layer options are {sorted(known)}."
        )
    if train_size is not None:
        train_size = validation.check_positive_int(train_size, "train_size")
    chosen = _selected(model, layers)
    target_classes = _target_classes(model, chosen, spec)
    options = {**options, **_scaled_kl_options(spec, method, options, train_size, target_classes)}
    functional = model if isinstance(model, Functional) else keras.Model(model.inputs, model.outputs)
    copies = []  # weight-copy functions, run once the clone is built
    converted_layers = []  # the layers the conversions created, for spec.finalize

    def clone_layer(layer):
        conversion = _conversion_for(layer, spec) if id(layer) in chosen else None
        if (
            conversion is None
            and id(layer) in chosen
            and spec.converts_batch_norm
            and batch_norm == "per_member"
            and isinstance(layer, keras.layers.BatchNormalization)
        ):
            conversion = _convert_batch_norm
        if conversion is not None:
            new_layer, copy = conversion(layer, ensemble_size, options)
            copies.append(copy)
            converted_layers.append(new_layer)
            return new_layer
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"model contains the nested model '{layer.name}'; flatten it (call its layers "
                "directly) before converting."
            )
        new_layer = layer.__class__.from_config(layer.get_config())
        if spec.freezes_unconverted:
            new_layer.trainable = False
        if getattr(layer, "weights", None):  # graph operations (e.g. a mask's NotEqual) have none
            copies.append(lambda: new_layer.set_weights(layer.get_weights()))
        return new_layer

    # MC dropout goes after the chosen Dense/Conv layers (by default all but the outputs).
    inserted_after = set()
    if dropout_rate:
        inserted_after = {layer.name for layer in model.layers if id(layer) in chosen}
        if layers is None:
            inserted_after -= {tensor._keras_history[0].name for tensor in functional.outputs}

    def call_layer(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        is_kernel_layer = isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D))
        if is_kernel_layer and layer.name in inserted_after:  # the clone keeps the original's name
            outputs = MCDropout(dropout_rate, name=f"{layer.name}_mc_dropout")(outputs)
        return outputs

    core = keras.models.clone_model(
        functional, clone_function=clone_layer, call_function=call_layer if dropout_rate else None
    )
    for copy in copies:
        copy()
    if spec.finalize is not None:
        spec.finalize(converted_layers, options)

    output_types = _output_types(functional, output_type)
    inputs = _fresh_inputs(functional)
    tiled = [TileEnsemble(ensemble_size, training_batch, name=f"tile_{i}")(x) for i, x in enumerate(inputs)]
    core_model = keras.Model(core.inputs, core.outputs, name=f"{model.name}{_CORE_SUFFIX}")
    member_outputs_ = core_model(tiled if len(tiled) > 1 else tiled[0])
    member_outputs_ = member_outputs_ if isinstance(member_outputs_, (list, tuple)) else [member_outputs_]
    outputs = [
        AverageMembers(ensemble_size, training_output, output_types[i], name=f"average_{i}")(y)
        for i, y in enumerate(member_outputs_)
    ]
    return keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name=f"{model.name}_{method}",
    )


def _fresh_inputs(functional):
    """New keras.Input tensors with the original inputs' shapes, dtypes and names."""
    return [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor._keras_history[0].name)
        for tensor in functional.inputs
    ]


def join_ensemble(models, training_output="members", name="deep_ensemble", output_type=None):
    """Joins K trained models of one architecture into one ensemble model.

    The result has the interface of a converted model: the same plain inputs,
    member-averaged outputs at inference, member rows (K*B, block order) in
    training with `training_output="members"`, and `member_outputs` works.
    `output_type` says how members are averaged, as in `convert` (None: read
    off the output layer).
    Each member is a nested copy sharing the given model's weights.

    Example:

        ensemble = join_ensemble([model_a, model_b, model_c])
        probabilities = ensemble.predict(x)        # average of the three
    """
    models = list(models)
    if not models:
        raise ValueError("models must hold at least one keras.Model; got none.")
    for model in models:
        _check_model(model)
    def signature(model):
        return (
            [(tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs],
            [(tuple(t.shape[1:]), str(t.dtype)) for t in model.outputs],
        )

    for index, model in enumerate(models[1:], start=1):
        if signature(model) != signature(models[0]):
            raise ValueError(
                f"models[{index}] has (inputs, outputs) {signature(model)}; models[0] has "
                f"{signature(models[0])}: join models of the same architecture."
            )
    validation.check_choice(training_output, "training_output", TRAINING_OUTPUTS)
    ensemble_size = len(models)
    functional = models[0] if isinstance(models[0], Functional) else keras.Model(models[0].inputs, models[0].outputs)
    inputs = _fresh_inputs(functional)
    # The members see the same plain batch; their rows are stacked in block order.
    members = [keras.Model(m.inputs, m.outputs, name=f"member_{k}") for k, m in enumerate(models)]
    member_results = [m(inputs if len(inputs) > 1 else inputs[0]) for m in members]
    member_results = [r if isinstance(r, (list, tuple)) else [r] for r in member_results]
    stacked = [
        StackMembers(name=f"stack_{i}")([result[i] for result in member_results])
        for i in range(len(member_results[0]))
    ]
    output_types = _output_types(functional, output_type)
    outputs = [
        AverageMembers(ensemble_size, training_output, output_types[i], name=f"average_{i}")(y)
        for i, y in enumerate(stacked)
    ]
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0], name=name)


@keras.saving.register_keras_serializable(package="rank1_keras")
class StackMembers(keras.layers.Layer):
    """Concatenates K member outputs (B, ...) into (K*B, ...) rows, block order."""

    def call(self, inputs):
        return keras.ops.concatenate(inputs, axis=0)

    def compute_output_shape(self, input_shapes):
        batch = input_shapes[0][0]
        return (None if batch is None else batch * len(input_shapes),) + tuple(input_shapes[0][1:])


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion changed and what it cost in parameters."""

    changed_layers: list
    trainable_parameters_before: int
    trainable_parameters_after: int
    parameters_before: int
    parameters_after: int

    @property
    def overhead_percent(self):
        """Extra trainable parameters, in percent of the original's."""
        return 100.0 * (self.trainable_parameters_after / self.trainable_parameters_before - 1.0)

    def __str__(self):
        width = max([len(name) for name, _, _ in self.changed_layers] + [5])
        lines = [f"{'layer':<{width}}  from -> to"]
        lines += [f"{name:<{width}}  {old} -> {new}" for name, old, new in self.changed_layers]
        lines.append(
            f"trainable parameters: {self.trainable_parameters_before:,} -> {self.trainable_parameters_after:,} "
            f"(+{self.overhead_percent:.2f}%); all parameters: {self.parameters_before:,} -> {self.parameters_after:,}"
        )
        return "\n".join(lines)


def _trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def conversion_summary(original, converted):
    """Which layers `convert` changed, and the parameters before and after."""
    core = next((layer for layer in converted.layers if layer.name.endswith(_CORE_SUFFIX)), None)
    new_layers = {layer.name: layer for layer in (core.layers if core is not None else converted.layers)}
    changed = []
    for layer in original.layers:
        new_layer = new_layers.get(layer.name)
        if new_layer is not None and type(new_layer) is not type(layer):
            new_class = type(new_layer).__name__
            if isinstance(new_layer, keras.layers.RNN):
                new_class = f"RNN({type(new_layer.cell).__name__})"
            changed.append((layer.name, type(layer).__name__, new_class))
    return ConversionSummary(
        changed_layers=changed,
        trainable_parameters_before=_trainable_count(original),
        trainable_parameters_after=_trainable_count(converted),
        parameters_before=int(original.count_params()),
        parameters_after=int(converted.count_params()),
    )


def member_outputs(converted):
    """A model sharing `converted`'s layers that returns each example's members: (B, K, ...).

    Works for `convert` and `join_ensemble` models. Member k's output for
    example b is `result[b, k]` whatever batch size `predict` uses. Outputs
    are the members' own (probabilities, logits, regression values or
    Gaussian heads, as `member_output_types` says); use them for diversity
    metrics.

    Example:

        members = member_outputs(converted).predict(x)    # (N, K, C)
        member_2_probabilities = members[:, 2]
    """
    heads = _average_heads(converted)
    member_rows = [MemberAxis(layer.ensemble_size, name=f"{layer.name}_members")(layer.input) for layer in heads]
    return keras.Model(converted.input, member_rows if len(member_rows) > 1 else member_rows[0])


def member_output_types(converted):
    """What each output's members give: "probabilities", "logits", "regression" or "gaussian"."""
    return [layer.output_type for layer in _average_heads(converted)]


def _average_heads(converted):
    heads = [layer for layer in converted.layers if isinstance(layer, AverageMembers)]
    if not heads:
        raise ValueError(
            f"converted must come from rank1_keras.convert or join_ensemble (it has no AverageMembers "
            f"layer); got the model '{converted.name}'."
        )
    return heads


def set_mc_dropout(model, active):
    """Switches every MCDropout layer in `model` on (sampling) or off (plain inference).

    Also drops Keras' cached predict/evaluate/train functions, which would
    otherwise keep the old setting.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, MCDropout):
            layer.active = bool(active)
    model.predict_function = model.test_function = model.train_function = None
