"""Model-level ensemble plumbing: tile a batch into members, average them back.

Block order throughout: a batch of B examples becomes K*B rows, rows
[k*B, (k+1)*B) being member k's copy.
"""

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import MemberRows


def tile_members(inputs, ensemble_size):
    """(B, ...) -> (K*B, ...): K copies of the batch, one block per member."""
    ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
    multiples = [ensemble_size] + [1] * (len(inputs.shape) - 1)
    return keras.ops.tile(inputs, multiples)


def split_members(outputs, ensemble_size):
    """(K*B, ...) -> (K, B, ...): member k's rows at index k."""
    ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
    outputs = ops.convert_to_tensor(outputs)
    batch_size = outputs.shape[0]
    if batch_size is not None and batch_size % ensemble_size:
        raise ValueError(
            f"The number of rows ({batch_size}) must be a multiple of ensemble_size={ensemble_size}."
        )
    # ops.shape: a traced TensorFlow batch may have further axes known only at run time.
    return ops.reshape(outputs, (ensemble_size, -1) + tuple(ops.shape(outputs)[1:]))


def average_member_probabilities(probabilities, ensemble_size):
    """(K*B, C) member probabilities -> (B, C) ensemble probabilities.

    Averages probabilities, never logits: the ensemble's predictive
    distribution is the mixture (1/K) sum_k p(y | x, theta_k).
    """
    return average_members(probabilities, ensemble_size, "probabilities")


def swap_member_axes(tensor):
    """(K, B, ...) <-> (B, K, ...): members and examples trade places; other axes stay."""
    return ops.transpose(tensor, [1, 0] + list(range(2, len(tensor.shape))))


OUTPUT_TYPES = ("probabilities", "logits", "regression", "gaussian")
CLASSIFIER_OUTPUT_TYPES = ("probabilities", "logits")


def average_members(outputs, ensemble_size, output_type="probabilities"):
    """(K*B, ...) member outputs -> (B, ...) the ensemble's prediction, of the same kind.

    - "probabilities": the mixture's probabilities (1/K) sum_k p_k.
    - "logits": log of the mixture's probabilities, log (1/K) sum_k softmax(z_k)
      (sigmoid for one unit): valid logits of the averaged distribution, so a
      `from_logits=True` loss or metric reads them correctly. Never the mean logit.
    - "regression": the members' mean prediction.
    - "gaussian": (..., 2*D) heads of D means then D scales -> the mixture's
      mean and standard deviation, sigma^2 = mean_k sigma_k^2 (aleatoric)
      + var_k mu_k (epistemic).
    """
    members = split_members(outputs, ensemble_size)
    if output_type in ("probabilities", "regression"):
        return ops.mean(members, axis=0)
    log_members = ops.log(ops.cast(ensemble_size, members.dtype))
    if output_type == "logits":
        if members.shape[-1] == 1:  # one sigmoid unit: logit of the mixture's p(y = 1)
            log_positive = ops.logsumexp(ops.log_sigmoid(members), axis=0)
            log_negative = ops.logsumexp(ops.log_sigmoid(-members), axis=0)
            return log_positive - log_negative
        return ops.logsumexp(ops.log_softmax(members, axis=-1), axis=0) - log_members
    if output_type == "gaussian":
        mean, scale = gaussian_parts(members)
        mixture_mean = ops.mean(mean, axis=0)
        variance = ops.mean(ops.square(scale), axis=0) + ops.mean(ops.square(mean - mixture_mean), axis=0)
        return ops.concatenate([mixture_mean, ops.sqrt(variance)], axis=-1)
    raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}; got output_type={output_type!r}.")


def check_classifier_output(output_type):
    """Raises a ValueError for regression outputs, which have no class probabilities."""
    if output_type not in CLASSIFIER_OUTPUT_TYPES:
        raise ValueError(
            f"class probabilities need a classifier's outputs (output_type one of {list(CLASSIFIER_OUTPUT_TYPES)}); "
            f"got output_type={output_type!r}."
        )
    return output_type


def class_probabilities(outputs, output_type="probabilities"):
    """Class probabilities (..., C) from a classifier's outputs; one sigmoid unit -> (..., 2).

    Raises:
        ValueError: for regression outputs, which have no classes.
    """
    check_classifier_output(output_type)
    outputs = ops.convert_to_tensor(outputs)
    if outputs.shape[-1] == 1:  # Bernoulli: p(y = 1) -> (p(0), p(1))
        positive = ops.sigmoid(outputs) if output_type == "logits" else outputs
        return ops.concatenate([1.0 - positive, positive], axis=-1)
    return ops.softmax(outputs, axis=-1) if output_type == "logits" else outputs


def gaussian_parts(heads):
    """(..., 2*D) Gaussian heads -> (means, scales), each (..., D)."""
    width = heads.shape[-1]
    if width is None or width % 2:
        raise ValueError(
            f"A Gaussian head has 2*D outputs (D means, then D scales) on its last axis; got shape "
            f"{tuple(heads.shape)}. End the model with rank1_keras.layers.GaussianParameters()."
        )
    return heads[..., : width // 2], heads[..., width // 2 :]


TRAINING_BATCHES = ("tile", "split")
TRAINING_OUTPUTS = ("average", "members")


@keras.saving.register_keras_serializable(package="rank1_keras")
class TileEnsemble(keras.layers.Layer):
    """Tiles a plain batch (B, ...) into (K*B, ...) rows, block order.

    Put it right after the inputs of an ensemble model so the model takes the
    same plain batches as a single network. Masks are tiled alike.

    Args:
        ensemble_size: K.
        training_batch: `"tile"` (every member sees every example, the
            papers' default) or `"split"`: in training the batch passes
            unchanged and member k trains on its own block of its rows,
            floor(B/K) or ceil(B/K) of them (`MemberRows`; about K times
            cheaper steps, any B). Inference always tiles. Masked inputs
            need "tile".

    Example:

    >>> tiled = TileEnsemble(3)(keras.ops.convert_to_tensor([[1.0], [2.0]]))
    >>> tuple(tiled.shape), keras.ops.convert_to_numpy(tiled).ravel().tolist()
    ((6, 1), [1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    """

    def __init__(self, ensemble_size, training_batch="tile", **kwargs):
        super().__init__(**kwargs)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.training_batch = validation.check_choice(training_batch, "training_batch", TRAINING_BATCHES)
        self.supports_masking = True

    def _tiles(self, training):
        return not (training and self.training_batch == "split")

    def call(self, inputs, training=False):
        return tile_members(inputs, self.ensemble_size) if self._tiles(training) else inputs

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        if self.training_batch == "split":
            # Keras records a functional model's masks once, symbolically,
            # without `training`, so a mask cannot follow the split/tile switch.
            raise ValueError(
                f"Layer '{self.name}': training_batch='split' does not support masked inputs; "
                "use training_batch='tile' for models with masking."
            )
        return tile_members(mask, self.ensemble_size)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch * self.ensemble_size,) + tuple(input_shape[1:])

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "training_batch": self.training_batch,
        }


@keras.saving.register_keras_serializable(package="rank1_keras")
class AverageMembers(keras.layers.Layer):
    """Averages (K*B, ...) member outputs into (B, ...) ensemble predictions.

    Args:
        ensemble_size: K.
        training_output: `"average"` (always average) or `"members"`: in
            training, return the member rows unchanged, so that a loss such as
            `AverageNLL(K)` sees every member; inference always averages.
        output_type: what the members output, which says how to average
            (`average_members`): `"probabilities"`, `"logits"` (the mixture's
            probabilities, returned as logits), `"regression"` (point
            predictions: their mean) or `"gaussian"` (mean and scale heads:
            the mixture's mean and standard deviation).

    Example:

    >>> probabilities = keras.ops.convert_to_tensor([[1.0, 0.0], [0.0, 1.0]])   # K=2, B=1
    >>> keras.ops.convert_to_numpy(AverageMembers(2)(probabilities)).tolist()
    [[0.5, 0.5]]
    """

    def __init__(self, ensemble_size, training_output="average", output_type="probabilities", **kwargs):
        super().__init__(**kwargs)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.training_output = validation.check_choice(training_output, "training_output", TRAINING_OUTPUTS)
        self.output_type = validation.check_choice(output_type, "output_type", OUTPUT_TYPES)
        self.supports_masking = True

    def call(self, inputs, training=False):
        # Remembered for compute_mask, which Keras calls right after, without `training`.
        self._averaged_in_last_call = not (training and self.training_output == "members")
        if not self._averaged_in_last_call:
            return inputs
        return average_members(inputs, self.ensemble_size, self.output_type)

    def compute_mask(self, inputs, mask=None):
        # Members share the examples' masks: the first block is the plain batch's.
        if mask is None or not getattr(self, "_averaged_in_last_call", True):
            return mask
        return split_members(mask, self.ensemble_size)[0]

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch // self.ensemble_size,) + tuple(input_shape[1:])

    def get_config(self):
        return {
            **super().get_config(),
            "ensemble_size": self.ensemble_size,
            "training_output": self.training_output,
            "output_type": self.output_type,
        }


@keras.saving.register_keras_serializable(package="rank1_keras")
class MemberAxis(keras.layers.Layer):
    """Moves the members from the rows to axis 1: (K*B, ...) block order -> (B, K, ...).

    Row b of the result holds example b's K member outputs, so `predict`
    batches it like any output and member k stays at index k whatever the
    batch size.

    Example:

    >>> rows = keras.ops.convert_to_tensor([[1.0], [2.0], [10.0], [20.0]])   # K=2 members, B=2 examples
    >>> keras.ops.convert_to_numpy(MemberAxis(2)(rows))[..., 0].tolist()
    [[1.0, 10.0], [2.0, 20.0]]
    """

    def __init__(self, ensemble_size, **kwargs):
        super().__init__(**kwargs)
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.supports_masking = True

    def call(self, inputs):
        return swap_member_axes(split_members(inputs, self.ensemble_size))

    def compute_mask(self, inputs, mask=None):
        return None if mask is None else split_members(mask, self.ensemble_size)[0]

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch // self.ensemble_size, self.ensemble_size) + tuple(input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "ensemble_size": self.ensemble_size}


def member_aware_layers(model):
    """The layers of `model` that treat rows by member (they have an `ensemble_size`), RNN cells and wrapped layers included."""
    found = []
    for layer in model.layers:
        for candidate in (layer, getattr(layer, "cell", None), getattr(layer, "layer", None)):
            if candidate is not None and hasattr(candidate, "ensemble_size"):
                found.append(candidate)
    return found


@keras.saving.register_keras_serializable(package="rank1_keras")
class MemberChains(keras.Model):
    """An ensemble's converted network, run as K member chains in training and on large inference batches.

    Built like a functional model, `MemberChains(inputs, outputs, name=...)`;
    `rank1_keras.convert` builds the network between `TileEnsemble` and
    `AverageMembers` with it. Its rows are in block order, member k's block
    (`MemberRows`). It runs in one of two forms, with the same outputs up to
    float rounding:

    - tiled: the graph once over all rows, each layer scaling every row by
      its member's factors;
    - member chains: the graph K times, chain k on member k's block with every
      layer set to member k. Each layer draws its factors (or takes their
      mode) and folds its K kernels W_k = W o r_k s_k^T once per call; chain k
      convolves with W_k and adds member k's bias, as a plain layer does,
      with member k's batch-norm statistics. That is the graph of K separate
      networks (what `join_ensemble` runs): independent chains a CPU runs side
      by side, kernel + bias + activation ops the backends fuse.

    Chains need every member-aware layer to support them (rank-1/BatchEnsemble/
    LP-BNN Dense and Conv layers, per-member batch norm; at inference their
    factors must not be drawn, `inference="mean"`; in training not drawn per
    example). In training they take the same draws from the same seeds, batch
    statistics per member and the KL terms once: the same steps as the tiled
    form (tests/test_member_chains.py), in less time (docs/benchmarks.md,
    "Serving cost": TensorFlow 2.81x one network's step against the tiled
    3.99x and the deep ensemble's K steps' 4.04x).

    Attributes:
        chains_in_training: run member chains in training (default True);
            batches with fewer rows than members stay tiled.
        chains_from_batch: examples per member from which inference runs
            member chains; None keeps the tiled form always. The default
            is per backend, from the serving benchmark on CPUs
            (docs/benchmarks.md): 16 on TensorFlow; 64 on PyTorch (tiled is
            faster at 32 examples per member, the chains at 256); None on
            JAX (XLA fuses the tiled form's scalings into its convolutions:
            tiled 3.99x one network at B = 256 against the joined deep
            ensemble's 4.52x). A batch size known only when the graph runs
            (TensorFlow tracing a dynamic batch) takes the chains. Set it on
            the instance to choose. For serving, `rank1_keras.fold_members`
            folds the kernels once, into K plain networks.

    Example:

    >>> import rank1_keras
    >>> inputs = keras.Input((3,))
    >>> network = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    >>> converted = rank1_keras.convert(network, "batchensemble", ensemble_size=2)
    >>> type(converted.get_layer(network.name + "_members")).__name__
    'MemberChains'
    """

    _DEFAULT_CHAINS_FROM_BATCH = {"tensorflow": 16, "torch": 64, "jax": None}

    @property
    def chains_from_batch(self):
        if "_chains_from_batch" in self.__dict__:
            return self.__dict__["_chains_from_batch"]
        return self._DEFAULT_CHAINS_FROM_BATCH.get(keras.backend.backend(), 16)

    @chains_from_batch.setter
    def chains_from_batch(self, value):
        if value is not None:
            value = validation.check_positive_int(value, "chains_from_batch")
        self.__dict__["_chains_from_batch"] = value

    @property
    def chains_in_training(self):
        if "_chains_in_training" in self.__dict__:
            return self.__dict__["_chains_in_training"]
        return True

    @chains_in_training.setter
    def chains_in_training(self, value):
        self.__dict__["_chains_in_training"] = bool(value)

    def chain_layers(self, training=False):
        """The member-aware layers, when every one of them supports member chains; else None."""
        layers = member_aware_layers(self)
        supported = [getattr(layer, "supports_member_chains", None) for layer in layers]
        if not layers or not all(check is not None and check(training=bool(training)) for check in supported):
            return None
        return layers

    def _uses_chains(self, inputs, ensemble_size, training=False):
        rows = keras.tree.flatten(inputs)[0].shape[0]
        if training:
            # Every member needs a row (a chain without rows has no batch statistics).
            return self.chains_in_training and (rows is None or rows >= ensemble_size)
        if self.chains_from_batch is None:
            return False
        return rows is None or rows // ensemble_size >= self.chains_from_batch

    def call(self, inputs, training=None, mask=None, **kwargs):
        layers = None if mask is not None else self.chain_layers(training)
        if layers is None or not self._uses_chains(inputs, layers[0].ensemble_size, training):
            return super().call(inputs, training=training, mask=mask, **kwargs)
        ensemble_size = layers[0].ensemble_size
        flat = keras.tree.flatten(inputs)
        if training:
            # A training batch may be split (TileEnsemble(training_batch="split")): blocks as MemberRows deals them.
            blocks = [MemberRows(tensor, ensemble_size).split(tensor) for tensor in flat]
        else:
            # Inference rows are a tiled batch, K equal blocks: one reshape and one unstack, where
            # MemberRows.split would gather each block of a batch size known only when the graph runs.
            blocks = [ops.unstack(split_members(tensor, ensemble_size)) for tensor in flat]
        chains = []
        try:
            for layer in layers:
                layer._chain_cache = {}  # a layer folds its K kernels once, for all K chains
            for member in range(ensemble_size):
                for layer in layers:
                    layer.serving_member = member
                member_inputs = keras.tree.pack_sequence_as(inputs, [parts[member] for parts in blocks])
                chains.append(super().call(member_inputs, training=training, **kwargs))
        finally:
            for layer in layers:
                layer.serving_member = None
                layer._chain_cache = None
        return keras.tree.map_structure(lambda *parts: ops.concatenate(list(parts), axis=0), *chains)
