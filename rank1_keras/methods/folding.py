"""Serving an efficient ensemble as K plain networks: each member's factors folded into its own kernels.

A converted model computes member k with the shared kernel and member k's
factors, W_k = W o r_k s_k^T, one tiled pass (or one chain per member) that
scales every activation by its member's factors. For serving, the factors do
not change, so each member can be written out once as a plain network with
its own kernels: `fold_members` builds K such networks (plain Keras Dense,
Conv and BatchNormalization layers) and joins them as `join_ensemble` joins a
deep ensemble. The result answers as the converted model does (to float
rounding) with the graph of K separate networks, which is the serving cost
of a deep ensemble (docs/benchmarks.md, "Serving cost"), and exports through
any Keras backend without this package's layers inside the members.
"""

import keras

from rank1_keras.layers.folding import folding_obstacle, plain_layer
from rank1_keras.methods.converter import join_ensemble
from rank1_keras.models.ensemble import AverageMembers, MemberChains, TileEnsemble, member_aware_layers


def fold_members(converted, name=None):
    """K plain networks with `converted`'s folded member kernels, joined into one ensemble model.

    Member k's network is `converted`'s network with every ensemble layer
    replaced by its plain Keras layer holding member k's weights
    (`rank1_keras.layers.folding`): W_k = W o r_k s_k^T and b_k for rank-1,
    BatchEnsemble and LP-BNN layers (the posterior mean where factors are
    distributions), W0 + (scale/r) A_k B_k for Bella's particles, member k's
    statistics for per-member batch norm. Layers the members share are
    copied into each network. The joined model has `converted`'s inputs,
    averages its members the same way (`AverageMembers`, same output types)
    and works with `member_outputs`.

    It is a snapshot for serving: it holds copies of the weights, so fold
    again after further training; training it trains K independent networks.

    Args:
        converted: a model from `rank1_keras.convert` (or loaded from its
            `.keras` file) whose ensemble layers all fold: no factors drawn
            at inference (`inference="mean"` for rank-1 and LP-BNN) and no
            recurrent cells.
        name: the folded model's name (default: `converted`'s name + "_folded").

    Returns:
        A functional `keras.Model` whose members are plain Keras networks.

    Raises:
        ValueError: for a model that did not come from `convert`, and for a
            layer that cannot fold, naming it and why.

    Example:

        converted = rank1_keras.convert(model, "batchensemble", ensemble_size=4)
        converted.fit(x, y)
        served = rank1_keras.fold_members(converted)     # same answers, a deep ensemble's graph
        probabilities = served.predict(x)
    """
    obstacle = folding_obstacle_of(converted)
    if obstacle is not None:
        raise ValueError(obstacle)
    chains, heads = _ensemble_parts(converted)
    layers = member_aware_layers(chains)
    ensemble_size = heads[0].ensemble_size
    network = keras.Model(chains.inputs, chains.outputs, name=chains.name)
    members = [_member_network(network, member, layers) for member in range(ensemble_size)]
    return join_ensemble(
        members,
        training_output=heads[0].training_output,
        name=name or f"{converted.name}_folded",
        output_type=[head.output_type for head in heads],
    )


def folding_obstacle_of(converted):
    """Why `fold_members(converted)` would refuse, in one sentence, or None when it folds."""
    chains, heads = _ensemble_parts(converted)
    if chains is None:
        return (
            "converted must come from rank1_keras.convert (inputs tiled by TileEnsemble, one MemberChains "
            f"network, outputs averaged by AverageMembers); got the model '{converted.name}' with layers "
            f"{[type(layer).__name__ for layer in converted.layers]}."
        )
    layers = member_aware_layers(chains)
    if not layers:
        return (
            f"converted has no per-member layer to fold: '{converted.name}' computes every member with the "
            "same weights (MC dropout, or no layer converted)."
        )
    for layer in layers:
        obstacle = folding_obstacle(layer)
        if obstacle is not None:
            return f"Layer '{layer.name}' of '{converted.name}' cannot be folded: {obstacle}."
    return None


def _ensemble_parts(converted):
    """The `MemberChains` network and the `AverageMembers` heads of a converted model; (None, None) otherwise."""
    layers = getattr(converted, "layers", [])
    chains = [layer for layer in layers if isinstance(layer, MemberChains)]
    heads = [layer for layer in layers if isinstance(layer, AverageMembers)]
    tiles = [layer for layer in layers if isinstance(layer, TileEnsemble)]
    if len(chains) != 1 or not heads or not tiles:
        return None, None
    return chains[0], heads


def _member_network(network, member, member_layers):
    """`network` cloned with every member-aware layer as its plain layer holding member `member`'s weights."""
    member_ids = {id(layer) for layer in member_layers}
    copies = []

    def clone(layer):
        if id(layer) in member_ids:  # (a wrapped cell never folds: fold_members refused it)
            new_layer = plain_layer(layer, layer.plain_layer_class)
            copies.append((new_layer, layer.folded_member_weights(member)))
        else:  # shared by the members: each network gets its own copy
            new_layer = layer.__class__.from_config(layer.get_config())
            copies.append((new_layer, layer.get_weights()))
        return new_layer

    folded = keras.models.clone_model(network, clone_function=clone)
    for new_layer, weights in copies:
        if weights:
            new_layer.set_weights(weights)
    return keras.Model(folded.inputs, folded.outputs, name=f"{network.name}_{member}")
