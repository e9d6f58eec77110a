"""`convert`'s rebuild step: a model's layer graph cloned with a method's converted layers.

`rebuild_with_converted_layers` clones the functional graph once. Each chosen
layer goes through its method's conversion (BatchNormalization per member when
asked); every other layer is re-created from its config and shared by the
members; with `dropout_rate` an `MCDropout` follows the chosen kernel layers.
The original's weights are copied in once the clone is built.

It reads a `rank1_keras.methods.converter.ConversionOptions` and imports
nothing from the converter, which imports it.
"""

import keras

from rank1_keras.layers.dropout import MCDropout
from rank1_keras.methods.conversions import LayerRole, conversion_for, convert_batch_norm

_KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)


def rebuild_with_converted_layers(functional, settings):
    """The members' network: `functional` cloned with `settings.chosen` layers converted.

    Returns the clone (a functional model) with the original's weights copied
    in and the method's `finalize` applied to the layers the conversions made.
    """
    cloner = _LayerCloner(settings, _converted_layer_roles(functional, settings))
    core = keras.models.clone_model(
        functional, clone_function=cloner.clone, call_function=_mc_dropout_call(functional, settings)
    )
    if not cloner.converted_layers and not settings.dropout_rate:
        raise ValueError(_nothing_converted(functional, settings))
    cloner.copy_weights()
    if settings.spec.finalize is not None:
        settings.spec.finalize(cloner.converted_layers, settings.layer_options)
    return core


class _LayerCloner:
    """The rebuild's `clone_function`: converts the chosen layers, re-creates the others.

    Collects the weight copies (they run once the clone is built, when every
    new layer has its variables) and the layers the conversions created (for
    the method's `finalize`).
    """

    def __init__(self, settings, roles):
        self.settings = settings
        self.roles = roles
        self.copies = []
        self.converted_layers = []

    def clone(self, layer):
        conversion = self._conversion_for(layer)
        if conversion is not None:
            return self._converted(layer, conversion)
        _check_not_nested(layer)
        return self._shared_copy(layer)

    def copy_weights(self):
        for copy in self.copies:
            copy()

    def _conversion_for(self, layer):
        """The method's conversion for a chosen layer, per-member BatchNormalization, or None (kept)."""
        settings = self.settings
        if id(layer) not in settings.chosen:
            return None
        conversion = conversion_for(layer, settings.spec)
        if conversion is None and _has_per_member_batch_norm(layer, settings):
            return convert_batch_norm
        return conversion

    def _converted(self, layer, conversion):
        """The converted layer; its weight copy and the layer itself are kept for later."""
        role = {"role": self.roles[id(layer)]} if id(layer) in self.roles else {}
        new_layer, copy = conversion(layer, self.settings.ensemble_size, self.settings.layer_options, **role)
        self.copies.append(copy)
        self.converted_layers.append(new_layer)
        return new_layer

    def _shared_copy(self, layer):
        """`layer` re-created from its config, shared by the members (frozen where the method trains
        only its own layers, as Bella)."""
        spec = self.settings.spec
        new_layer = layer.__class__.from_config(layer.get_config())
        if spec.freezes_unconverted:
            new_layer.trainable = False
        if spec.copies_weights and getattr(layer, "weights", None):  # graph operations (e.g. NotEqual) have none
            self.copies.append(lambda: new_layer.set_weights(layer.get_weights()))
        return new_layer


def _nothing_converted(functional, settings):
    """The error of a conversion that would change no layer: the layers with weights it found, and what the method converts."""
    weighted = [f"'{layer.name}' ({type(layer).__name__})" for layer in functional.layers if layer.weights]
    converts = sorted({layer_class.__name__ for layer_class in settings.spec.layer_conversions})
    if settings.spec.converts_batch_norm and settings.batch_norm == "per_member":
        converts.append("BatchNormalization (per member)")
    return (
        f"convert(..., method={settings.method!r}) would change no layer of '{functional.name}': its layers with "
        f"weights are [{', '.join(weighted) or 'none'}], and {settings.method!r} converts {converts}. Name "
        "convertible layers in layers=, or choose a method that converts these; the result would be one network "
        "copied K times, not an ensemble."
    )


def _has_per_member_batch_norm(layer, settings):
    """Whether a chosen BatchNormalization gets per-member statistics (`batch_norm="per_member"`)."""
    return (
        settings.spec.converts_batch_norm
        and settings.batch_norm == "per_member"
        and isinstance(layer, keras.layers.BatchNormalization)
    )


def _check_not_nested(layer):
    """Refuses a nested model: its layers would be cloned as one opaque block, never converted."""
    if isinstance(layer, keras.Model):
        raise ValueError(
            f"model contains the nested model '{layer.name}'; flatten it (call its layers "
            "directly) before converting."
        )


def _mc_dropout_call(functional, settings):
    """The clone's `call_function` that puts MCDropout after the chosen kernel layers; None
    without `dropout_rate`."""
    if not settings.dropout_rate:
        return None
    inserted_after = _mc_dropout_positions(functional, settings)

    def call_layer(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if isinstance(layer, _KERNEL_LAYERS) and layer.name in inserted_after:  # the clone keeps the original's name
            outputs = MCDropout(settings.dropout_rate, name=f"{layer.name}_mc_dropout")(outputs)
        return outputs

    return call_layer


def _mc_dropout_positions(functional, settings):
    """Names of the layers MCDropout follows: the chosen ones (by default all but the outputs,
    which must stay the model's answer)."""
    inserted_after = {layer.name for layer in functional.layers if id(layer) in settings.chosen}
    if settings.layers is None:
        inserted_after -= {tensor._keras_history[0].name for tensor in functional.outputs}
    return inserted_after


def _converted_layer_roles(functional, settings):
    """{id(layer): LayerRole} of the layers the method converts, for methods whose conversions
    depend on where a layer sits (Packed-Ensembles' widths); {} for the others."""
    spec = settings.spec
    if not spec.uses_layer_roles:
        return {}
    converted = {
        id(layer)
        for layer in functional.layers
        if id(layer) in settings.chosen and conversion_for(layer, spec) is not None
    }
    return layer_roles(functional, converted)


def layer_roles(functional, converted):
    """{id(layer): LayerRole} for the layers in `converted` (a set of ids), read off the graph."""

    def producers(tensor, seen):
        """The converted layers and model inputs that feed `tensor` with no converted layer between."""
        layer, node_index, _ = tensor._keras_history
        if isinstance(layer, keras.layers.InputLayer) or id(layer) in converted:
            return {id(layer)}
        found = set()
        for source in layer._inbound_nodes[node_index].input_tensors:
            if id(source) not in seen:
                seen.add(id(source))
                found |= producers(source, seen)
        return found

    input_ids = {id(tensor._keras_history[0]) for tensor in functional.inputs}
    heads = set().union(*(producers(tensor, set()) for tensor in functional.outputs))
    roles = {}
    for layer in functional.layers:
        if id(layer) not in converted:
            continue
        sources = set().union(*(producers(tensor, set()) for tensor in layer._inbound_nodes[0].input_tensors))
        roles[id(layer)] = LayerRole(reads_inputs=bool(sources & input_ids), writes_outputs=id(layer) in heads)
    return roles
