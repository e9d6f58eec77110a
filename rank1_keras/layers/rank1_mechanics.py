"""The rank-1 mechanics every ensemble layer shares, written once.

A layer with ensemble size K receives R rows in *block order*: member k owns
the contiguous rows [ceil(k R / K), ceil((k+1) R / K)), that is [k*B, (k+1)*B)
for a tiled batch of R = K*B rows, and blocks whose sizes differ by at most
one when K does not divide R (a split training batch). For member k it computes

    multiplicative:  y = phi(((x o r_k) W) o s_k + b_k)      (W_k = W o r_k s_k^T)
    additive:        y = phi(x W + <x, r_k> s_k + b_k)       (W_k = W + r_k s_k^T)

without materialising W_k. Here `o` scales the input channels (r) and the
output channels (s). r and s ("alpha" and "gamma" in Edward2) are *factors*:
each is a `(K, dim)` table that is either a point estimate (a plain weight,
BatchEnsemble) or a trainable distribution (a `TrainableInitializer`, the
rank-1 BNN), whose KL to the prior joins the layer's losses.

`MemberRows` says which member owns each row; `Rank1Mixin` holds the rest
of the machinery; the Dense, Conv and LSTM-cell layers only say how to apply
their shared kernel.
"""

import dataclasses
import functools
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from rank1_keras import validation
from rank1_keras.probability import initializers as rank1_initializers
from rank1_keras.probability import regularizers as rank1_regularizers
from rank1_keras.probability.random_variable import RandomVariable

INFERENCE_MODES = ("sample", "mean")


@dataclasses.dataclass
class MemberFactor:
    """One per-member table of shape (ensemble_size, dim).

    Attributes:
        name: the factor's role in its layer ("alpha", "gamma", "bias", ...).
        initializer: a `TrainableInitializer` (stochastic factor) or a Keras
            initializer (point factor).
        regularizer: a KL regularizer for a stochastic factor; for a point
            factor it is a Keras regularizer already attached to `variable`.
        variable: the weight of a point factor; None for a stochastic one.
    """

    name: str
    initializer: object
    regularizer: object = None
    variable: object = None

    @property
    def is_stochastic(self):
        return isinstance(self.initializer, rank1_initializers.TrainableInitializer)

    @property
    def variables(self):
        return self.initializer.variables if self.is_stochastic else [self.variable]


class MemberRows:
    """Which of K members owns each of R rows: block order, blocks as even as R allows.

    Row i belongs to member floor(i K / R), so member k owns the contiguous
    rows [ceil(k R / K), ceil((k+1) R / K)): block sizes differ by at most
    one, and when K divides R every member owns B = R / K rows, rows
    [k*B, (k+1)*B). With R < K some members own no row. R may be known only
    when the graph runs (a dynamic batch size under TensorFlow's tracing;
    JAX and PyTorch always know it).

    Args:
        rows: the (R, ...) tensor whose rows are assigned, or R itself (an
            int or a scalar integer tensor).
        ensemble_size: K.

    Example:

    >>> rows = MemberRows(7, 3)
    >>> keras.ops.convert_to_numpy(rows.ids).tolist(), keras.ops.convert_to_numpy(rows.sizes).tolist()
    ([0, 0, 0, 1, 1, 2, 2], [3, 2, 2])
    >>> expanded = rows.expand(keras.ops.convert_to_tensor([[1.0], [2.0], [3.0]]))
    >>> keras.ops.convert_to_numpy(expanded)[:, 0].tolist()
    [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    """

    def __init__(self, rows, ensemble_size):
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        if not isinstance(rows, numbers.Integral):
            if len(getattr(rows, "shape", ())) == 0:  # R itself, as a tensor
                rows = _static_int(rows)
            else:
                rows = rows.shape[0] if rows.shape[0] is not None else ops.shape(rows)[0]
        if isinstance(rows, numbers.Integral) and rows < 0:
            raise ValueError(f"The number of rows must be non-negative; got {rows}.")
        # A Python int when the row count is static, else a scalar int32 tensor.
        self.row_count = int(rows) if isinstance(rows, numbers.Integral) else ops.cast(rows, "int32")
        # Built once per dtype: a layer expands several factor tables with the same rows.
        self._one_hots = {}

    def _starts(self):
        """Member k owns rows [starts[k], starts[k + 1]), starts[k] = ceil(k R / K)."""
        k = self.ensemble_size
        if isinstance(self.row_count, int):
            return [-(-j * self.row_count // k) for j in range(k + 1)]
        return (ops.arange(k + 1, dtype="int32") * self.row_count + k - 1) // k

    def _sizes(self):
        starts = self._starts()
        if isinstance(starts, list):
            return [end - start for start, end in zip(starts[:-1], starts[1:])]
        return starts[1:] - starts[:-1]

    @property
    def sizes(self):
        """(K,) int32: the number of rows each member owns."""
        return ops.convert_to_tensor(self._sizes(), "int32")

    @functools.cached_property
    def ids(self):
        """(R,) int32: the member of each row, floor(i K / R)."""
        k, count = self.ensemble_size, self.row_count
        if isinstance(count, int):
            return ops.convert_to_tensor(np.arange(count, dtype="int32") * k // max(count, 1), "int32")
        return ops.arange(count, dtype="int32") * k // ops.maximum(count, 1)

    def one_hot(self, dtype="float32"):
        """(R, K): row i is the indicator of its member."""
        dtype = keras.backend.standardize_dtype(dtype)
        if dtype not in self._one_hots:
            self._one_hots[dtype] = ops.one_hot(self.ids, self.ensemble_size, dtype=dtype)
        return self._one_hots[dtype]

    @property
    def _static_block(self):
        """B when every member owns B rows and R is known now (a tiled batch); else None."""
        count, k = self.row_count, self.ensemble_size
        return count // k if isinstance(count, int) and count > 0 and count % k == 0 else None

    def expand(self, table):
        """(K, dim) -> (R, dim): row i is its member's row of `table`.

        Equal blocks of a known size repeat each row B times (the table itself
        for B = 1, one example per member); otherwise a one-hot matmul,
        one_hot @ table, exact (one non-zero term per row). Either way the
        gradient to member k's row sums its rows' gradients.
        """
        table = ops.convert_to_tensor(table)
        block = self._static_block
        if block == 1:
            return table
        if block is not None:
            tail = tuple(table.shape[1:])
            return ops.reshape(ops.broadcast_to(table[:, None], (self.ensemble_size, block) + tail), (-1,) + tail)
        return ops.matmul(self.one_hot(table.dtype), table)

    def sum(self, values):
        """(R, dim) -> (K, dim): each member's sum over its own rows (one_hot^T @ values where blocks differ)."""
        values = ops.convert_to_tensor(values)
        block = self._static_block
        if block is not None:
            return ops.sum(ops.reshape(values, (self.ensemble_size, block) + tuple(values.shape[1:])), axis=1)
        return ops.matmul(ops.transpose(self.one_hot(values.dtype)), values)

    def select(self, draws):
        """(R, K, dim) -> (R, dim): row i keeps draws[i, k] of its own member k (exact: one term per row)."""
        draws = ops.convert_to_tensor(draws)
        return ops.einsum("rk,rkd->rd", self.one_hot(draws.dtype), draws)

    def split(self, tensor):
        """(R, ...) -> K tensors, member k's rows (empty for a member with none)."""
        if self.ensemble_size == 1:
            return [tensor]  # (TensorFlow's split refuses zero split points)
        starts = self._starts()
        if isinstance(starts, list):
            return ops.split(tensor, starts[1:-1], axis=0)
        # R known only when the graph runs (TensorFlow tracing): gather each block.
        return [ops.take(tensor, ops.arange(starts[k], starts[k + 1], dtype="int32"), axis=0)
                for k in range(self.ensemble_size)]

    @staticmethod
    def concat(parts):
        """K member blocks -> the (R, ...) tensor in block order: the inverse of `split`."""
        return ops.concatenate(list(parts), axis=0)


def _static_int(value):
    """`value` as a Python int when it is known now, else the tensor itself."""
    try:
        return int(ops.convert_to_numpy(value))
    except Exception:  # a symbolic tensor (TensorFlow tracing): known only when the graph runs
        return value


class Rank1Mixin:
    """Shared rank-1 / BatchEnsemble mechanics for Keras layers.

    A layer class mixes this in before its Keras base class, calls
    `_init_rank1` in `__init__`, `_add_member_factor` in `build`, and in
    `call`: `_member_rows`, `_draw_factors`, `_apply_rank1`,
    `_add_member_bias`. Activations stay in their (R, ...) layout; the
    factors are expanded to one row per input row instead, which is cheaper
    than reshaping every activation into a member view, and works for any R.
    """

    def _init_rank1(
        self,
        ensemble_size,
        use_additive_perturbation,
        sample_per_example,
        inference,
        seed,
    ):
        self.ensemble_size = validation.check_positive_int(ensemble_size, "ensemble_size")
        self.use_additive_perturbation = bool(use_additive_perturbation)
        self.sample_per_example = bool(sample_per_example)
        self.inference = validation.check_choice(inference, "inference", INFERENCE_MODES)
        self.seed = seed
        self.factor_seed_generator = keras.random.SeedGenerator(seed)
        self._member_factors = {}
        self.kl_weight = None

    def _init_factor_arguments(self, names, arguments):
        """Sets `<name>_initializer/_regularizer/_constraint` for each factor name.

        `arguments` maps those argument names to the user's values.
        """
        unscaled = []
        for name in names:
            initializer, regularizer, constraint = self._resolve_factor_arguments(
                name,
                arguments[f"{name}_initializer"],
                arguments[f"{name}_regularizer"],
                arguments[f"{name}_constraint"],
            )
            setattr(self, f"{name}_initializer", initializer)
            setattr(self, f"{name}_regularizer", regularizer)
            setattr(self, f"{name}_constraint", constraint)
            if isinstance(arguments[f"{name}_regularizer"], str) and rank1_regularizers.is_kl_regularizer(regularizer):
                unscaled.append(f"{name}_regularizer")
        if unscaled:
            # A layer cannot know the training-set size N; the per-example ELBO
            # needs KL / N. Loud, not an error: edward2's layers default the same way.
            warnings.warn(
                f"{type(self).__name__} '{self.name}': {', '.join(unscaled)} given by name adds the "
                "KL unscaled (scale_factor=1) to every batch's loss, N times the per-example ELBO's "
                "weight for N training examples. Pass e.g. NormalKLDivergence(scale_factor=1 / N), or "
                "build the model with rank1_keras.convert(model, 'rank1', train_size=N).",
                UserWarning,
                stacklevel=3,
            )

    def _init_kernel_and_bias_arguments(
        self, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint
    ):
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def _kernel_and_bias_config(self):
        return {
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }

    @staticmethod
    def _resolve_factor_arguments(name, initializer, regularizer, constraint):
        """Turns user arguments into objects; rejects inconsistent combinations early."""
        initializer = rank1_initializers.get(initializer, f"{name}_initializer")
        regularizer = rank1_regularizers.get(regularizer, f"{name}_regularizer")
        constraint = keras.constraints.get(constraint)
        stochastic = isinstance(initializer, rank1_initializers.TrainableInitializer)
        if rank1_regularizers.is_kl_regularizer(regularizer) and not stochastic:
            raise ValueError(
                f"{name}_regularizer={type(regularizer).__name__} is a KL divergence and "
                f"needs a trainable distribution as {name}_initializer (e.g. "
                f"'trainable_normal'); got {type(initializer).__name__}. Use "
                f"{name}_regularizer=None (or 'l2') for point factors."
            )
        if stochastic and regularizer is not None and not rank1_regularizers.is_kl_regularizer(regularizer):
            raise ValueError(
                f"{name}_regularizer must be a KL regularizer (e.g. 'normal_kl_divergence') "
                f"or None when {name}_initializer is trainable; got {type(regularizer).__name__}."
            )
        if stochastic and constraint is not None:
            raise ValueError(
                f"{name}_constraint applies to point factors only; {name}_initializer "
                f"is the trainable {type(initializer).__name__}. Pass {name}_constraint=None."
            )
        return initializer, regularizer, constraint

    def _add_member_factor(self, name, dim, initializer, regularizer=None, constraint=None):
        """Creates the (ensemble_size, dim) table `name` as weights of this layer."""
        factor = MemberFactor(name=name, initializer=initializer, regularizer=regularizer)
        shape = (self.ensemble_size, int(dim))
        if factor.is_stochastic:
            initializer.build(self, name, shape)
            if regularizer is not None and self.kl_weight is None:
                # Scales every KL term of the layer; KLAnnealing ramps it 0 -> 1.
                self.kl_weight = self.add_weight(
                    name="kl_weight", shape=(), initializer="ones", trainable=False
                )
        else:
            factor.variable = self.add_weight(
                name=name,
                shape=shape,
                initializer=initializer,
                regularizer=regularizer,
                constraint=constraint,
                trainable=True,
            )
        self._member_factors[name] = factor
        return factor

    @property
    def member_factors(self):
        """The layer's per-member tables, by role."""
        return dict(self._member_factors)

    @property
    def posterior_variables(self):
        """Variational parameters (means and scales) of the stochastic factors."""
        return [v for f in self._member_factors.values() if f.is_stochastic for v in f.variables]

    @property
    def fast_weight_variables(self):
        """Every per-member factor variable: posterior parameters or point factors.

        The papers apply no weight decay to these.
        """
        return [v for f in self._member_factors.values() for v in f.variables]

    # -- the batch: one block of rows per member ------------------------------

    def _member_rows(self, inputs):
        """The `MemberRows` of an (R, ...) input: which member owns each row."""
        return MemberRows(inputs, self.ensemble_size)

    # -- drawing the factors ---------------------------------------------

    def _samples_factors(self, training):
        """Stochastic factors are sampled in training, and at inference when
        `inference="sample"`; otherwise they take the posterior mode."""
        return bool(training) or self.inference == "sample"

    def _draw_member_tables(self, rows, sample, add_kl=True):
        """The factors' values for one forward pass, one table per factor.

        Args:
            rows: the input's `MemberRows`.
            sample: draw the stochastic factors; with False they take their
                posterior mode (the mean of a Normal).
            add_kl: add the KL terms, times `kl_weight`, to the layer losses.

        Returns a dict name -> (K, dim) table, row k member k's value (a point
        factor, one draw per member, or the posterior mode), or, for a
        stochastic factor drawn with `sample_per_example`, (R, K, dim): R draws
        of the table, one per input row.
        """
        tables = {}
        kl_terms = []
        for name, factor in self._member_factors.items():
            if not factor.is_stochastic:
                tables[name] = ops.convert_to_tensor(factor.variable)
                continue
            if sample:
                sample_shape = [rows.row_count] if self.sample_per_example else []
                random_variable = factor.initializer(sample_shape=sample_shape, seed=self.factor_seed_generator)
            else:
                distribution = factor.initializer.distribution()
                random_variable = RandomVariable(distribution, value=distribution.mode())
            tables[name] = random_variable.value
            if add_kl and factor.regularizer is not None:
                kl_terms.append(factor.regularizer(random_variable))
        if kl_terms:
            self.add_loss(self.kl_weight * functools.reduce(ops.add, kl_terms))
        return tables

    def _draw_factors(self, rows, sample, add_kl=True):
        """Per-row values of the factors for one forward pass: name -> (R, dim).

        Row i holds the factor of the member that owns row i (its row of the
        (K, dim) table from `_draw_member_tables`, expanded over the member's
        rows), or, with per-example draws, its own draw of its member's factor.
        """
        tables = self._draw_member_tables(rows, sample, add_kl)
        return {
            name: rows.select(table) if len(table.shape) == 3 else rows.expand(table)
            for name, table in tables.items()
        }

    # -- member chains: one member on every row ------------------------------

    #: The member whose chain `MemberChains` is running through this layer
    #: (its rows are all that member's), or None: the rows are in block order.
    serving_member = None
    #: The Keras layer one member folds into (Dense, Conv1D, Conv2D), whose
    #: kernel op takes a folded kernel (`_member_call`); None: it does not fold.
    plain_layer_class = None

    def supports_member_chains(self, training=False):
        """Whether `MemberChains` may run this layer one member at a time.

        It may when the kernel can be folded and the K factor rows of one
        call are one table: at inference when nothing is drawn (point
        factors, or `inference="mean"`), in training unless factors are drawn
        per example. A chain per member then computes exactly what the tiled
        form computes for that member's rows.
        """
        if self.plain_layer_class is None:
            return False
        return not self.sample_per_example if training else not self._draws_at_inference()

    def _draws_at_inference(self):
        return self.inference == "sample" and any(f.is_stochastic for f in self._member_factors.values())

    def folded_member_weights(self, member):
        """Member `member` as `plain_layer_class` weights, NumPy: [W_k, b_k] (W_k alone without a bias).

        Stochastic factors take their posterior mode, as at inference with
        `inference="mean"` (`rank1_keras.layers.folding`).
        """
        kernels, biases = self._folded_member_tables(self.kernel.dtype, add_kl=False)
        weights = [kernels[member]] + ([biases[member]] if self.use_bias else [])
        return [ops.convert_to_numpy(weight) for weight in weights]

    #: Set by `MemberChains` to a dict while its K chains run, where the folded tables are kept:
    #: computed once for the K chains of one call. None otherwise.
    _chain_cache = None

    def _folded_member_tables(self, dtype, add_kl, sample=False):
        """Every member's folded kernel, (K, ..., input_dim, output_dim), and bias table (K, units) or None.

        W_k = W o r_k s_k^T (additive: W + r_k s_k^T) for all K members in one
        broadcast product, the factors drawn (`sample`, one table for the K
        members) or at their posterior mode. r_k scales the kernel's input
        axis and s_k its output axis (a Dense kernel or a convolution window).
        """
        tables = self._draw_member_tables(None, sample=sample, add_kl=add_kl)
        kernel = ops.cast(self.kernel, dtype)
        alpha, gamma = ops.cast(tables["alpha"], dtype), ops.cast(tables["gamma"], dtype)
        window = (1,) * (len(kernel.shape) - 2)  # a convolution's window axes
        r = ops.reshape(alpha, (self.ensemble_size,) + window + (alpha.shape[-1], 1))
        s = ops.reshape(gamma, (self.ensemble_size,) + window + (1, gamma.shape[-1]))
        kernels = kernel[None] + r * s if self.use_additive_perturbation else kernel[None] * r * s
        return kernels, (ops.cast(tables["bias"], dtype) if self.use_bias else None)

    def _member_call(self, inputs, kernel_op, channel_axis=-1, training=False):
        """Member `serving_member`'s layer on every row: activation(kernel_op(x, W_k) + b_k).

        The factors are drawn (or taken at their mode) and the K folded kernels
        computed once per `MemberChains` call, by member 0's chain, which also
        adds the KL terms, so the loss counts them once, as in the tiled form:
        the same draws from the same seeds. The kernel op, bias and activation
        are the ones a plain Keras layer runs, which the backends fuse.
        """
        member = self.serving_member
        cache = self._chain_cache
        if cache is not None and "folded" in cache:
            kernels, biases = cache["folded"]
        else:
            kernels, biases = self._folded_member_tables(
                inputs.dtype, add_kl=member == 0, sample=self._samples_factors(training)
            )
            # One unstack each, not K slices: under TF's tracing every op costs its launch.
            kernels, biases = ops.unstack(kernels), (None if biases is None else ops.unstack(biases))
            if cache is not None:
                cache["folded"] = (kernels, biases)
        outputs = kernel_op(inputs, kernels[member])
        if self.use_bias:
            bias = biases[member]
            rank = len(outputs.shape)
            if channel_axis % rank != rank - 1:  # channels_first; a channels-last (units,) bias broadcasts as it is
                bias = self._broadcast_factor(bias[None], rank, channel_axis)
            outputs = outputs + bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    # -- applying them -----------------------------------------------------

    @staticmethod
    def _broadcast_factor(rows, rank, channel_axis):
        """Reshapes (R, dim) factor rows to broadcast on a rank-`rank` tensor
        whose channels sit at `channel_axis` (-1 channels_last, 1 channels_first);
        rows for a rank-2 tensor are returned as they are."""
        if rank == 2:
            # Already (rows, channels). A no-op Reshape would still cost an op
            # launch per LSTM time step, forward and backward.
            return rows
        shape = [1] * rank
        shape[0], shape[channel_axis % rank] = -1, rows.shape[-1]
        return ops.reshape(rows, shape)

    def _apply_rank1(self, inputs, alpha, gamma, kernel_op, summed_kernel_op=None, channel_axis=-1):
        """Applies the shared kernel with each row's rank-1 factors r=alpha, s=gamma.

        Args:
            inputs: the (R, ...) input, block order.
            alpha, gamma: factor rows from `_draw_factors`.
            kernel_op: applies the shared kernel W.
            summed_kernel_op: for the additive variant, applies an all-ones
                kernel with one input and one output channel (None for Dense),
                so that <x, r> s^T is the rank-1 weight's contribution.
            channel_axis: the channel axis of inputs and outputs.
        """
        r = self._broadcast_factor(alpha, len(inputs.shape), channel_axis)
        if not self.use_additive_perturbation:
            outputs = kernel_op(inputs * r)
            return outputs * self._broadcast_factor(gamma, len(outputs.shape), channel_axis)
        outputs = kernel_op(inputs)
        projected = ops.sum(inputs * r, axis=channel_axis, keepdims=True)
        if summed_kernel_op is not None:
            projected = summed_kernel_op(projected)
        return outputs + projected * self._broadcast_factor(gamma, len(outputs.shape), channel_axis)

    def _add_member_bias(self, outputs, bias, channel_axis=-1):
        return outputs + self._broadcast_factor(bias, len(outputs.shape), channel_axis)

    # -- config ------------------------------------------------------------

    def _rank1_config(self):
        return {
            "ensemble_size": self.ensemble_size,
            "use_additive_perturbation": self.use_additive_perturbation,
            "sample_per_example": self.sample_per_example,
            "inference": self.inference,
            "seed": self.seed,
        }


def batch_ensemble_defaults(kwargs, names=("alpha", "gamma")):
    """Keyword defaults that make a rank-1 layer its BatchEnsemble (point-factor) case.

    The factors start at N(1, 0.5^2) (`initializers.factor_mean_normal`, each
    table its own draw), the rank-1 posteriors' mean start: with factors at
    one every member starts at the same weights, gets the same gradient on a
    tiled batch, and stays a copy of the others for ever. `"random_sign"`
    (uncertainty-baselines' CIFAR setting, measured worse here) and `"ones"`
    remain explicit choices.
    """
    for name in names:
        kwargs.setdefault(f"{name}_initializer", rank1_initializers.factor_mean_normal())
        kwargs.setdefault(f"{name}_regularizer", None)
    return kwargs


def serialize_factor_arguments(layer, names):
    """Config entries for the `<name>_initializer/_regularizer/_constraint` arguments."""
    config = {}
    for name in names:
        config[f"{name}_initializer"] = keras.saving.serialize_keras_object(
            getattr(layer, f"{name}_initializer")
        )
        config[f"{name}_regularizer"] = keras.saving.serialize_keras_object(
            getattr(layer, f"{name}_regularizer")
        )
        config[f"{name}_constraint"] = keras.saving.serialize_keras_object(
            getattr(layer, f"{name}_constraint")
        )
    return config
