"""An LSTM sequence classifier as a plain functional Keras model.

Written once with standard Keras layers; `rank1_keras.convert` turns it into
the BatchEnsemble, rank-1 and MC-dropout versions (the LSTM becomes an RNN
over a rank-1 LSTM cell and keeps the mask):

    Masking(0) -> LSTM(units) -> Dense(hidden_units, relu) -> [Dropout]
    -> Dense(num_classes, softmax)

Variable-length sequences are zero-padded at the end to a common length; the
`Masking` layer marks a time step as padding when ALL its features are
exactly 0.0, and the LSTM skips masked steps (its state passes through
unchanged), so the output for a padded sequence equals the output for the
sequence alone.

Limitation: a real time step whose features are all exactly zero is masked
too, i.e. treated as padding. Data in which such steps occur and carry
information needs a feature that is never zero on real steps (for example a
constant 1 "observed" channel) added before padding.
"""

import keras

from rank1_keras import validation


def lstm_classifier(
    num_features,
    num_classes=2,
    units=64,
    hidden_units=32,
    max_length=None,
    dropout_rate=0.0,
    l2=0.0,
    name=None,
):
    """Builds the LSTM classifier for zero-padded sequences.

    Args:
        num_features: number of features F per time step.
        num_classes: number of classes (at least 2). The output is a softmax
            over all of them, two-class problems included, because the
            ensemble losses take class probabilities.
        units: size of the LSTM state.
        hidden_units: size of the ReLU dense layer after the LSTM.
        max_length: number of time steps T, or None (default) for sequences
            of any length (each batch padded to its own longest sequence).
        dropout_rate: rate of a `Dropout` after the hidden dense layer; 0
            adds no layer. `convert(model, "dropout")` turns it into MC
            dropout.
        l2: coefficient of `keras.regularizers.L2` (`l2 * sum(w**2)`) on the
            LSTM's input and recurrent kernels and the dense kernels. 0 adds
            no regularizer.
        name: model name; default `"lstm_classifier"`.

    Input: (B, T, F) float sequences, zero-padded at the end; a step whose
    features are all 0.0 is padding (see the module docstring).

    Returns:
        A functional `keras.Model` mapping (B, T, F) to class probabilities
        (B, num_classes).

    Example:

    >>> import numpy as np
    >>> model = lstm_classifier(num_features=3, num_classes=4, units=8, hidden_units=4)
    >>> sequences = np.ones((2, 5, 3), "float32")
    >>> sequences[1, 2:] = 0.0            # the second sequence has 2 steps
    >>> model.predict(sequences, verbose=0).shape
    (2, 4)
    """
    num_features = validation.check_positive_int(num_features, "num_features")
    validation.check_num_classes(num_classes)
    units = validation.check_positive_int(units, "units")
    hidden_units = validation.check_positive_int(hidden_units, "hidden_units")
    if max_length is not None:
        max_length = validation.check_positive_int(max_length, "max_length")
    validation.check_dropout_rate(dropout_rate)
    l2 = validation.check_non_negative_finite(l2, "l2")
    validation.check_optional_name(name)

    def regularizer():
        return keras.regularizers.L2(l2) if l2 else None

    inputs = keras.Input((max_length, num_features), name="sequences")
    x = keras.layers.Masking(mask_value=0.0, name="padding_mask")(inputs)
    x = keras.layers.LSTM(
        units, kernel_regularizer=regularizer(), recurrent_regularizer=regularizer(), name="lstm"
    )(x)
    x = keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=regularizer(), name="hidden")(x)
    if dropout_rate > 0:
        x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
    outputs = keras.layers.Dense(
        int(num_classes), activation="softmax", kernel_regularizer=regularizer(), name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name or "lstm_classifier")
