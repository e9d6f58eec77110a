"""Wide ResNet (Zagoruyko & Komodakis, 2016) as a plain functional Keras model.

Written once with standard Keras layers; `rank1_keras.convert` turns it into
the BatchEnsemble, rank-1 and MC-dropout versions. The layout follows
uncertainty-baselines' `wide_resnet(version=2)` (the pre-activation ordering
of He et al., 2016):

    conv3x3(16)
    -> 3 groups of n = (depth - 4) / 6 basic blocks, 16k / 32k / 64k filters,
       strides 1 / 2 / 2, each block
           y = conv3x3(relu(bn(conv3x3(relu(bn(x))))))      [dropout between]
           x + y, or conv1x1(x) + y when the shape changes
    -> bn -> relu -> global average pooling -> dense softmax

with k the width multiplier. As in uncertainty-baselines, convolutions have no
bias and a he_normal kernel, batch normalisation uses Torch's momentum 0.9
and epsilon 1e-5, and the projection shortcut convolves the block's raw input
(not its pre-activation).
"""

import numbers

import keras

from rank1_keras import validation

# Torch's batch-norm defaults, as uncertainty-baselines uses them.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def _check_depth(depth):
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            "depth must be an integer 6n + 4 with n >= 1 blocks per group, i.e. (depth - 4) % 6 == 0 and "
            f"depth >= 10 (10, 16, 22, 28, 40, ...); got depth={depth!r}."
        )
    return int(depth)


def wide_resnet(
    depth=28,
    width_multiplier=10,
    num_classes=10,
    input_shape=(32, 32, 3),
    l2=0.0,
    dropout_rate=0.0,
    name=None,
):
    """Builds the Wide ResNet WRN-`depth`-`width_multiplier`.

    Args:
        depth: number of convolutional layers on the main path, 6n + 4
            (10, 16, 22, 28, 40, ...); each of the three groups holds
            n = (depth - 4) / 6 blocks. The "28" of WRN-28-10.
        width_multiplier: positive integer k; the groups have 16k, 32k and
            64k filters. The "10" of WRN-28-10.
        num_classes: number of classes (at least 2) of the softmax output.
        input_shape: (height, width, channels) of the images; any size
            works (global average pooling), 32x32 (CIFAR) halves to 16x16
            and 8x8.
        l2: coefficient of `keras.regularizers.L2` (`l2 * sum(w**2)`) on the
            convolution and dense kernels, the dense bias and the batch-norm
            gamma and beta, as uncertainty-baselines applies it. 0 adds no
            regularizer.
        dropout_rate: rate of a `Dropout` between the two convolutions of
            each block (Zagoruyko & Komodakis' placement); 0 adds no layer.
            `convert(model, "dropout")` turns these layers into MC dropout.
        name: model name; default `"wide_resnet_{depth}_{width_multiplier}"`.

    Returns:
        A functional `keras.Model` mapping images (B, *input_shape) to class
        probabilities (B, num_classes). Layers are named
        `group{g}_block{b}_{bn1,relu1,conv1,bn2,relu2,dropout,conv2,
        shortcut,add}`, g and b counted from 1.

    Example:

    >>> model = wide_resnet(depth=10, width_multiplier=1)
    >>> model.output_shape
    (None, 10)
    >>> tuple(model.get_layer("group2_block1_shortcut").kernel.shape)
    (1, 1, 16, 32)
    """
    depth = _check_depth(depth)
    width_multiplier = validation.check_positive_int(width_multiplier, "width_multiplier")
    num_classes = validation.check_num_classes(num_classes)
    input_shape = validation.check_image_shape(input_shape)
    l2 = validation.check_non_negative_finite(l2, "l2")
    dropout_rate = validation.check_dropout_rate(dropout_rate)
    name = validation.check_optional_name(name) or f"wide_resnet_{depth}_{width_multiplier}"

    def regularizer():
        return keras.regularizers.L2(l2) if l2 else None

    def conv(filters, kernel_size, strides, layer_name):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=regularizer(),
            name=layer_name,
        )

    def batch_norm(layer_name):
        return keras.layers.BatchNormalization(
            momentum=BATCH_NORM_MOMENTUM,
            epsilon=BATCH_NORM_EPSILON,
            beta_regularizer=regularizer(),
            gamma_regularizer=regularizer(),
            name=layer_name,
        )

    def basic_block(x, filters, strides, prefix):
        y = batch_norm(f"{prefix}_bn1")(x)
        y = keras.layers.Activation("relu", name=f"{prefix}_relu1")(y)
        y = conv(filters, 3, strides, f"{prefix}_conv1")(y)
        y = batch_norm(f"{prefix}_bn2")(y)
        y = keras.layers.Activation("relu", name=f"{prefix}_relu2")(y)
        if dropout_rate > 0:
            y = keras.layers.Dropout(dropout_rate, name=f"{prefix}_dropout")(y)
        y = conv(filters, 3, 1, f"{prefix}_conv2")(y)
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            shortcut = conv(filters, 1, strides, f"{prefix}_shortcut")(x)
        return keras.layers.Add(name=f"{prefix}_add")([shortcut, y])

    blocks_per_group = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="images")
    x = conv(16, 3, 1, "input_conv")(inputs)
    for group, (base_filters, strides) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for block in range(1, blocks_per_group + 1):
            x = basic_block(
                x, base_filters * width_multiplier, strides if block == 1 else 1, f"group{group}_block{block}"
            )
    x = batch_norm("final_bn")(x)
    x = keras.layers.Activation("relu", name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer(),
        bias_regularizer=regularizer(),
        name="probabilities",
    )(x)
    return keras.Model(inputs, outputs, name=name)
