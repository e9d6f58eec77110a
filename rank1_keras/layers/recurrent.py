"""LSTM cells with per-member rank-1 factors, for `keras.layers.RNN`.

Both the input kernel and the recurrent kernel carry their own factors
(alpha/gamma and recurrent_alpha/recurrent_gamma). The factors are drawn once
per sequence, not per time step: `keras.layers.RNN` prepares a cell's
per-sequence randomness (its dropout masks) before the time loop and clears it
after, and these cells draw their factors at that moment, so every step of a
sequence sees the same member weights.
"""

import keras
from keras import ops

from rank1_keras import validation
from rank1_keras.layers.rank1_mechanics import (
    Rank1Mixin,
    batch_ensemble_defaults,
    serialize_factor_arguments,
)

_FACTORS = ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")


@keras.saving.register_keras_serializable(package="rank1_keras")
class LSTMCellRank1(Rank1Mixin, keras.layers.LSTMCell):
    """Rank-1 Bayesian LSTM cell (Dusenberry et al., 2020).

    For member k, with gates z = [i, f, c~, o] (Keras order):

        z = ((x o r_k) W) o s_k + ((h o r'_k) U) o s'_k + b_k
        c = sigmoid(f) * c_prev + sigmoid(i) * tanh(c~),  h = sigmoid(o) * tanh(c)

    W, U shared; r, s (alpha, gamma) on the input kernel and r', s'
    (recurrent_alpha, recurrent_gamma) on the recurrent kernel, each a (K, dim)
    mixture posterior or point factor; b_k a per-member bias (forget part
    initialised to one when `unit_forget_bias`). Use it inside
    `keras.layers.RNN`; masking, `return_sequences` and the other RNN
    arguments work as usual. The cell's input rows are in block order.

    Args:
        units: state size.
        ensemble_size: number of members K.
        recurrent_alpha_*, recurrent_gamma_*: factor arguments of the
            recurrent kernel; the rest as `DenseRank1` and
            `keras.layers.LSTMCell` (one dropout mask is shared by the gates).

    Example:

    >>> rnn = keras.layers.RNN(LSTMCellRank1(8, ensemble_size=2))
    >>> tuple(rnn(keras.ops.ones((4, 5, 3))).shape)
    (4, 8)
    """

    def __init__(
        self,
        units,
        ensemble_size=4,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        alpha_initializer="trainable_normal",
        gamma_initializer="trainable_normal",
        recurrent_alpha_initializer="trainable_normal",
        recurrent_gamma_initializer="trainable_normal",
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        alpha_regularizer="normal_kl_divergence",
        gamma_regularizer="normal_kl_divergence",
        recurrent_alpha_regularizer="normal_kl_divergence",
        recurrent_gamma_regularizer="normal_kl_divergence",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        alpha_constraint=None,
        gamma_constraint=None,
        recurrent_alpha_constraint=None,
        recurrent_gamma_constraint=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        use_additive_perturbation=False,
        sample_per_example=False,
        inference="sample",
        seed=None,
        **kwargs,
    ):
        validation.check_positive_int(units, "units")
        validation.check_probability(dropout, "dropout")
        validation.check_probability(recurrent_dropout, "recurrent_dropout")
        super().__init__(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            seed=seed,
            **kwargs,
        )
        # One dropout mask for all four gates (the fused computation).
        self.implementation = 2
        self.dropout_mask_count = None
        self._init_rank1(ensemble_size, use_additive_perturbation, sample_per_example, inference, seed)
        self._init_factor_arguments(_FACTORS, locals())
        self._sequence_factors = None

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"Layer '{self.name}' expects step inputs of shape (batch, features), i.e. "
                "sequences of shape (batch, time, features) given to keras.layers.RNN, expected "
                f"ndim=3 for the sequence; got a step input_shape={tuple(input_shape)}."
            )
        input_dim = input_shape[-1]
        units = self.units
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, 4 * units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel",
            shape=(units, 4 * units),
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        dims = {"alpha": input_dim, "gamma": 4 * units, "recurrent_alpha": units, "recurrent_gamma": 4 * units}
        for name in _FACTORS:
            self._add_member_factor(
                name,
                dims[name],
                getattr(self, f"{name}_initializer"),
                getattr(self, f"{name}_regularizer"),
                getattr(self, f"{name}_constraint"),
            )
        if self.use_bias:
            bias_initializer = self.bias_initializer
            if self.unit_forget_bias:
                base_initializer = self.bias_initializer

                def bias_initializer(shape, dtype=None):
                    # Per member: [input gate, forget gate = 1, cell, output gate].
                    ensemble_size = shape[0]
                    return keras.ops.concatenate(
                        [
                            base_initializer((ensemble_size, units), dtype=dtype),
                            keras.ops.ones((ensemble_size, units), dtype=dtype),
                            base_initializer((ensemble_size, 2 * units), dtype=dtype),
                        ],
                        axis=-1,
                    )

            self._add_member_factor("bias", 4 * units, bias_initializer, self.bias_regularizer, self.bias_constraint)
        self.built = True

    # Per-sequence factor draws ride on the RNN's per-sequence hook.
    def get_dropout_mask(self, step_input):
        if self._sequence_factors is None:
            self._sequence_factors = self._draw_sequence_factors(step_input)
        return super().get_dropout_mask(step_input)

    def reset_dropout_mask(self):
        super().reset_dropout_mask()
        self._sequence_factors = None

    def _draw_sequence_factors(self, step_input):
        rows = self._member_rows(step_input)
        # The hook does not know `training`: draw a sample (adding the KL once)
        # and, with inference="mean", the posterior mode; `call` picks one.
        sampled = self._draw_factors(rows, sample=True)
        if self.inference == "sample":
            return {True: sampled, False: sampled}
        return {True: sampled, False: self._draw_factors(rows, sample=False, add_kl=False)}

    def call(self, inputs, states, training=False):
        h_tm1, c_tm1 = states[0], states[1]
        factors = self._sequence_factors
        if factors is None:
            # Called outside keras.layers.RNN: draw for this step only.
            factors = self._draw_sequence_factors(inputs)
            self._sequence_factors = None
        factors = factors[self._samples_factors(training)]

        if training and 0.0 < self.dropout < 1.0:
            inputs = inputs * self.get_dropout_mask(inputs)
        if training and 0.0 < self.recurrent_dropout < 1.0:
            h_tm1 = h_tm1 * self.get_recurrent_dropout_mask(h_tm1)

        z = self._apply_rank1(
            inputs,
            factors["alpha"],
            factors["gamma"],
            # Step inputs are 2-D: a plain matmul avoids tensordot's reshapes inside the time loop.
            kernel_op=lambda x: ops.matmul(x, self.kernel),
        )
        z = z + self._apply_rank1(
            h_tm1,
            factors["recurrent_alpha"],
            factors["recurrent_gamma"],
            kernel_op=lambda h: ops.matmul(h, self.recurrent_kernel),
        )
        if self.use_bias:
            z = self._add_member_bias(z, factors["bias"])
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        i = self.recurrent_activation(z_i)
        f = self.recurrent_activation(z_f)
        c = f * c_tm1 + i * self.activation(z_c)
        o = self.recurrent_activation(z_o)
        h = o * self.activation(c)
        return h, [h, c]

    def get_config(self):
        config = super().get_config()
        config.pop("implementation", None)
        config.update(self._rank1_config())
        config.update(serialize_factor_arguments(self, _FACTORS))
        return config


@keras.saving.register_keras_serializable(package="rank1_keras")
class LSTMCellBatchEnsemble(LSTMCellRank1):
    """BatchEnsemble LSTM cell: `LSTMCellRank1` with point factors (N(1, 0.5^2) by default, no KL).

    Example:

    >>> rnn = keras.layers.RNN(LSTMCellBatchEnsemble(8, ensemble_size=2))
    >>> tuple(rnn(keras.ops.ones((4, 5, 3))).shape)
    (4, 8)
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **batch_ensemble_defaults(kwargs, _FACTORS))
