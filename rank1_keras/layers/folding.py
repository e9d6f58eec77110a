"""One member of an ensemble layer as a plain Keras layer: the folded form a served ensemble runs.

A layer that folds names the Keras layer its member k is (`plain_layer_class`:
`keras.layers.Dense`, `Conv1D`, `Conv2D`, `BatchNormalization`) and gives
member k's weights in that layer's order (`folded_member_weights(member)`):

    rank-1 / BatchEnsemble / LP-BNN:  W_k = W o r_k s_k^T  (additive: W + r_k s_k^T),  b_k
    Bella's low-rank particles:       W_k = W0 + (scale / r) A_k B_k,  b
    per-member batch norm:            gamma_k, beta_k, moving_mean_k, moving_variance_k

`rank1_keras.fold_members` builds K plain networks from these: the graph of a
deep ensemble, which is what makes a served ensemble as fast as one.
"""

import inspect

# Arguments every Keras layer takes through **kwargs.
_BASE_LAYER_ARGUMENTS = ("name", "dtype", "trainable")


def plain_layer(layer, plain_class, name=None):
    """A new, unbuilt `plain_class` layer with the arguments of `layer`'s config that `plain_class` takes.

    The member-specific arguments (`ensemble_size`, the factors' initializers,
    `inference`, ...) are dropped; shapes, activation, padding and the like
    carry over. `name` replaces the layer's name when given.
    """
    accepted = set(inspect.signature(plain_class.__init__).parameters) | set(_BASE_LAYER_ARGUMENTS)
    config = {key: value for key, value in layer.get_config().items() if key in accepted}
    if name is not None:
        config["name"] = name
    return plain_class.from_config(config)


def folding_obstacle(layer):
    """Why `layer`'s members cannot be served as plain Keras layers, or None when they can."""
    if getattr(layer, "plain_layer_class", None) is None:
        return f"{type(layer).__name__} has no plain Keras form to fold its members into"
    draws = getattr(layer, "_draws_at_inference", None)
    if draws is not None and draws():
        return (
            "it draws its factors at inference (inference='sample'), so no fixed kernel gives its answers; "
            "convert with inference='mean' to serve the posterior mean, or serve the unfolded model"
        )
    return None
