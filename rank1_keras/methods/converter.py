"""Turn any Sequential or functional Keras model into an ensemble or a Bayesian network.

    converted = rank1_keras.convert(model, "rank1", ensemble_size=4)

The converted model takes the same plain inputs as the original, tiles them
K times in block order inside (`TileEnsemble`), runs the converted layers,
and averages the members' outputs (`AverageMembers`): `predict` gives the
ensemble's answer. In training it returns the member rows instead (K*B of
them, or B with `training_batch="split"`), so `model.fit(x, y)` with plain
labels trains with `AverageNLL(K)` or `MixtureNLL(K)`. The per-member
outputs are also reachable at inference through `member_outputs(converted)`.

Each method's conversion is part of its spec (`rank1_keras.methods`, one
file per method), so later methods join the same entry point.
"""

import dataclasses

import keras
import numpy as np
from keras.src.models.functional import Functional  # the class of functional models

from rank1_keras import validation
from rank1_keras.layers.dropout import MCDropout
from rank1_keras.layers.gaussian import GaussianParameters
from rank1_keras.layers.walk import layers_of
from rank1_keras.methods.conversions import LayerConversions, constructor_arguments, conversion_for
from rank1_keras.methods.rebuild import rebuild_with_converted_layers
from rank1_keras.methods.spec import method_names, method_spec
from rank1_keras.models.ensemble import (
    OUTPUT_TYPES,
    TRAINING_BATCHES,
    TRAINING_OUTPUTS,
    AverageMembers,
    MemberAxis,
    MemberChains,
    TileEnsemble,
)
from rank1_keras.probability import initializers as rank1_initializers
from rank1_keras.probability import regularizers as rank1_regularizers

BATCH_NORM_MODES = ("per_member", "shared")
_CORE_SUFFIX = "_members"


def methods():
    """Names of the methods `convert` can make (those whose spec has a `conversion`)."""
    return sorted(name for name in method_names() if method_spec(name).conversion is not None)


# -- the converter ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    """`convert`'s arguments, checked and resolved once: what every conversion step reads.

    Attributes:
        method: the method's name (the converted model's name ends with it).
        spec: the method's `LayerConversions`.
        ensemble_size: K (for "dropout", `num_samples` when given).
        layers: the `layers=` argument as given (None: every layer; MC
            dropout then skips the output layers).
        chosen: ids of the model's layers chosen for conversion.
        batch_norm, training_output, dropout_rate, train_size, output_type:
            as given to `convert`, checked.
        training_batch: as given, or the method's default.
        layer_options: the converted layers' constructor options, the
            method's default KL regularizers (scaled by 1/train_size) added.
    """

    method: str
    spec: LayerConversions
    ensemble_size: int
    layers: object
    chosen: frozenset
    batch_norm: str
    training_batch: str
    training_output: str
    dropout_rate: object
    train_size: object
    output_type: object
    layer_options: dict


def conversion_options(
    model, method, *, ensemble_size, layers, batch_norm, training_batch, training_output, num_samples,
    dropout_rate, train_size, output_type, layer_options,
):
    """`convert`'s arguments checked (in this order, so the first wrong one is named) and resolved."""
    spec = _conversion_spec(method)
    ensemble_size = _checked_ensemble_size(method, ensemble_size, num_samples)
    validation.check_choice(batch_norm, "batch_norm", BATCH_NORM_MODES)
    training_batch = training_batch or spec.default_training_batch
    validation.check_choice(training_batch, "training_batch", TRAINING_BATCHES)
    validation.check_choice(training_output, "training_output", TRAINING_OUTPUTS)
    _check_dropout_rate(method, spec, dropout_rate)
    _check_layer_options(method, spec, layer_options)
    if train_size is not None:
        train_size = validation.check_positive_int(train_size, "train_size")
    chosen = frozenset(_selected(model, layers))
    target_classes = _target_classes(model, chosen, spec)
    kl_options = _scaled_kl_options(spec, method, layer_options, train_size, target_classes)
    return ConversionOptions(
        method=method,
        spec=spec,
        ensemble_size=ensemble_size,
        layers=layers,
        chosen=chosen,
        batch_norm=batch_norm,
        training_batch=training_batch,
        training_output=training_output,
        dropout_rate=dropout_rate,
        train_size=train_size,
        output_type=output_type,
        layer_options={**layer_options, **kl_options},
    )


def _conversion_spec(method):
    """The method's `LayerConversions`: only methods whose spec has one can convert a model."""
    if method not in methods():
        raise ValueError(f"method must be one of {methods()}; got method={method!r}.")
    return method_spec(method).conversion


def _checked_ensemble_size(method, ensemble_size, num_samples):
    """K: `ensemble_size`, or "dropout"'s alias `num_samples` (errors name the argument given)."""
    if num_samples is None:
        return validation.check_positive_int(ensemble_size, "ensemble_size")
    if method != "dropout":
        raise ValueError(f"num_samples applies to method='dropout' only; use ensemble_size for {method!r}.")
    return validation.check_positive_int(num_samples, "num_samples")


def _check_dropout_rate(method, spec, dropout_rate):
    """Refuses `dropout_rate` where the method inserts no MCDropout (it would do nothing)."""
    if dropout_rate is None:
        return
    if not spec.inserts_dropout:
        raise ValueError(f"dropout_rate applies to method='dropout' only; got method={method!r}.")
    validation.check_rate(dropout_rate, "dropout_rate")


def _check_layer_options(method, spec, options):
    """Refuses options no converted layer takes: a misspelt one would otherwise be dropped silently."""
    known = set().union(*(constructor_arguments(c) for c in spec.layer_classes)) if spec.layer_classes else set()
    known |= set(spec.passes_options)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for method={method!r}; layer options are {sorted(known)}."
        )


def _scaled_kl_options(spec, method, options, train_size, target_classes):
    """The method's default KL regularizers, scaled by 1/train_size (explicit ones are kept).

    `target_classes`: the classes this conversion creates; a factor counts
    only if one of them has it (recurrent factors only with an LSTM).
    """
    accepted = set().union(*(constructor_arguments(c) for c in target_classes)) if target_classes else set()
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


def _target_classes(model, chosen, spec):
    """The layer classes converting `model`'s chosen layers creates (`layer_classes` pairs with
    `layer_conversions` in order)."""
    pairs = list(zip(spec.layer_conversions, spec.layer_classes))
    targets = set()
    for layer in model.layers:
        if id(layer) not in chosen:
            continue
        conversion = conversion_for(layer, spec)
        targets.update(target for keras_class, target in pairs if spec.layer_conversions[keras_class] is conversion)
    return targets


def _check_model(model):
    """Refuses models whose layer graph cannot be read: only Sequential and functional ones have one."""
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
            `MCDropout`. Every other layer is kept and shared by the members; a
            conversion that would change no layer is a ValueError naming the
            layers it found.
        batch_norm: "per_member" (each selected BatchNormalization gets
            per-member statistics and affine parameters, as the papers; with
            `layers=`, list the BN layers too) or "shared".
        training_batch: "tile" (every member sees every example, K times the
            compute: the papers', and the default for the ensembles, whose
            NLL it improves most in docs/ensemble_gap.md) or "split" (member
            k trains on its own block of the batch, floor(B/K) or ceil(B/K)
            examples: one network's cost per step; the default for
            "dropout", where it is plain dropout training). Inference always
            tiles.
        training_output: "members" (in training a tiled model returns member
            rows for the ensemble losses) or "average". With "split" each
            training row already is its own member's prediction of its own
            example, so rows pass unchanged and any per-example loss works
            (`AverageNLL(K)` or Keras' own).
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
        start at N(1, 0.5^2), as rank-1 posterior means do (members differ
        from the first step; `alpha_initializer="random_sign"` gives the
        uncertainty-baselines CIFAR start; with
        `alpha_initializer="ones", gamma_initializer="ones"` the converted
        model reproduces the original, and its members stay identical).

    Example:

        converted = convert(model, "batchensemble", ensemble_size=4)
        converted.compile("adam", rank1_keras.AverageNLL(4))
        # Stops at the first non-finite loss or gradient, keeping the last finite weights.
        converted.fit(x, y, callbacks=[rank1_keras.TerminateOnNonFinite()])
        probabilities = converted.predict(x)        # member average
    """
    _check_model(model)
    settings = conversion_options(  # every argument checked and resolved, once
        model, method, ensemble_size=ensemble_size, layers=layers, batch_norm=batch_norm,
        training_batch=training_batch, training_output=training_output, num_samples=num_samples,
        dropout_rate=dropout_rate, train_size=train_size, output_type=output_type, layer_options=options,
    )
    functional = _as_functional(model)
    # The rebuild refuses a nested model when it reaches it (conversion errors of the layers before
    # it come first), and output types are read once the rebuild is done: errors keep that order.
    core = rebuild_with_converted_layers(functional, settings)
    output_types = _output_types(functional, settings.output_type)
    return _ensemble_model(model.name, functional, core, output_types, settings)


def _as_functional(model):
    """`model`'s graph as a functional model (a Sequential's layers, shared), which clone_model walks."""
    return model if isinstance(model, Functional) else keras.Model(model.inputs, model.outputs)


def _ensemble_model(name, functional, core, output_types, settings):
    """The converted model: plain inputs tiled K times, the members' chains, their outputs averaged.

    Named `{name}_{method}`; the chains are its `{name}_members` layer, which
    `conversion_summary` finds by that suffix.
    """
    inputs = _fresh_inputs(functional)
    tiled = [
        TileEnsemble(settings.ensemble_size, settings.training_batch, name=f"tile_{i}")(x)
        for i, x in enumerate(inputs)
    ]
    chains = MemberChains(core.inputs, core.outputs, name=f"{name}{_CORE_SUFFIX}")
    member_rows = _as_list(chains(_one_or_list(tiled)))
    outputs = _averaged_outputs(member_rows, output_types, settings)
    return keras.Model(_one_or_list(inputs), _one_or_list(outputs), name=f"{name}_{settings.method}")


def _averaged_outputs(member_rows, output_types, settings):
    """One `AverageMembers` per output: the ensemble's answer at inference.

    Split training rows are each one member's prediction of one example:
    averaging K of them would mix different examples, so in training they
    pass unchanged.
    """
    in_training = settings.training_output if settings.training_batch == "tile" else "members"
    return [
        AverageMembers(settings.ensemble_size, in_training, output_types[i], name=f"average_{i}")(y)
        for i, y in enumerate(member_rows)
    ]


def _as_list(outputs):
    """A model's outputs as a list (Keras returns a lone tensor for a single output)."""
    return outputs if isinstance(outputs, (list, tuple)) else [outputs]


def _one_or_list(tensors):
    """A single tensor as itself (Keras then gives plain, not list, inputs and outputs)."""
    return tensors if len(tensors) > 1 else tensors[0]


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
    functional = _as_functional(models[0])
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
    for layer in layers_of(model, MCDropout):
        layer.active = bool(active)
    model.predict_function = model.test_function = model.train_function = None
