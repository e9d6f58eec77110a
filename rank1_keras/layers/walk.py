"""The one walk over a model's layers, nested models and sublayers included.

Keras 3 has no public recursive layer iterator. `Layer._flatten_layers` is
the walk Keras itself uses to collect losses and variables (it descends into
nested models, RNN cells, wrappers and any layer a layer tracks), so this
module reads it, in one place, and never patches it.
"""


def layers_of(model, layer_type=None, include_self=False):
    """Every layer inside `model`, each once, in Keras' tracking order (depth first).

    Args:
        model: a `keras.Model` or `keras.layers.Layer`.
        layer_type: keep only instances of this class (or tuple of classes).
        include_self: also yield `model` itself when it matches.

    Example:

    >>> import keras
    >>> inner = keras.Sequential([keras.layers.Dense(2, name="inner_dense")], name="inner")
    >>> outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="head")])
    >>> [layer.name for layer in layers_of(outer, keras.layers.Dense)]
    ['inner_dense', 'head']
    """
    found = model._flatten_layers(include_self=include_self, recursive=True)
    return [layer for layer in found if layer_type is None or isinstance(layer, layer_type)]
