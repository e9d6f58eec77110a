"""The small CNN of the embedded demos: conv32-pool-conv64-pool-dense128-softmax."""

import keras

from rank1_keras import validation


def small_cnn(input_shape=(28, 28, 1), num_classes=10, l2=0.0, dropout_rate=0.0, padding="valid", name="small_cnn"):
    """The plain small CNN: conv32-pool-conv64-pool-dense128-softmax.

    The architecture the embedded demos train on 2 CPU cores (about 90%
    Fashion-MNIST test accuracy after 2-3 epochs); every method is made from
    it by `rank1_keras.models.build_method_models`.

    Args:
        input_shape: (H, W, C) of the images.
        num_classes: output classes.
        l2: L2 weight on the kernels.
        dropout_rate: Dropout after the dense hidden layer (0: none).
        padding: the convolutions' padding; "same" for images smaller than 16 px.
        name: the model's name.

    Example:

    >>> small_cnn((28, 28, 1), 10).count_params()
    225034
    """
    validation.check_positive_int(num_classes, "num_classes")
    validation.check_choice(padding, "padding", ("valid", "same"))
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Conv2D(32, 3, padding=padding, activation="relu", kernel_regularizer=regularizer)(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding=padding, activation="relu", kernel_regularizer=regularizer)(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu", kernel_regularizer=regularizer)(x)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs, name=name)
