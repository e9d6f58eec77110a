"""A small U-Net for the embedded segmentation task: per-pixel class probabilities."""

import keras

from rank1_keras import validation


def small_unet(input_shape=(32, 32, 1), num_classes=11, filters=16, l2=0.0, dropout_rate=0.0, name="small_unet"):
    """The plain small U-Net: two scales, one skip connection, a softmax per pixel.

        conv f, conv f  ->  pool  ->  conv 2f, conv 2f  ->  upsample  ->  concat(skip)  ->  conv f  ->  conv 1x1 C

    Written once; every method is made from it by `convert` (its Conv2D
    layers become ensemble layers, pooling, upsampling and concatenation are
    shared). Outputs (B, H, W, num_classes).

    Args:
        input_shape: (H, W, C) with H and W even.
        num_classes: classes per pixel.
        filters: channels at full resolution (2x at half resolution).
        l2: L2 weight on the kernels.
        dropout_rate: Dropout before the last convolution (0: none).
        name: the model's name.

    Example:

    >>> small_unet((32, 32, 1), 11).output.shape
    (None, 32, 32, 11)
    """
    validation.check_positive_int(num_classes, "num_classes")
    validation.check_positive_int(filters, "filters")
    if input_shape[0] % 2 or input_shape[1] % 2:
        raise ValueError(f"input_shape must have even height and width (one 2x pooling); got {tuple(input_shape)}.")
    regularizer = keras.regularizers.L2(l2) if l2 else None

    def conv(x, channels, name):
        return keras.layers.Conv2D(
            channels, 3, padding="same", activation="relu", kernel_regularizer=regularizer, name=name
        )(x)

    inputs = keras.Input(tuple(input_shape))
    skip = conv(conv(inputs, filters, "down_1a"), filters, "down_1b")
    x = keras.layers.MaxPooling2D(name="pool")(skip)
    x = conv(conv(x, 2 * filters, "bottom_a"), 2 * filters, "bottom_b")
    x = keras.layers.UpSampling2D(name="upsample")(x)
    x = keras.layers.Concatenate(name="skip")([x, skip])
    x = conv(x, filters, "up_1")
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
    outputs = keras.layers.Conv2D(
        num_classes, 1, activation="softmax", kernel_regularizer=regularizer, name="classes"
    )(x)
    return keras.Model(inputs, outputs, name=name)
