"""ResNet-50 v1.5 as a plain functional Keras model.

Written once with standard Keras layers; `rank1_keras.convert` turns it into
the BatchEnsemble, rank-1 and MC-dropout versions. The layout follows
uncertainty-baselines' `resnet50_deterministic` (and, for the width,
`resnet50_resizable_width`):

    zero-pad 3 -> conv7x7/2 (64) -> bn -> relu -> maxpool3x3/2
    -> 4 stages of [3, 4, 6, 3] bottleneck blocks, f = 64, 128, 256, 512,
       stride 2 in the first block of stages 2-4, each block
           y = bn(conv1x1(4f)(relu(bn(conv3x3/s(f)(relu(bn(conv1x1(f)(x))))))))
           relu(x + y), or relu(bn(conv1x1/s(4f)(x)) + y) when the shape changes
    -> global average pooling -> dense softmax

"v1.5": the stride sits on the 3x3 convolution of the bottleneck, not on the
first 1x1 as in He et al. (2015). As in uncertainty-baselines, convolutions
have no bias and a he_normal kernel, batch normalisation uses Torch's
momentum 0.9 and epsilon 1e-5 with every gamma initialised to one (no
zero-initialised last gamma), and the dense kernel starts from N(0, 0.01^2).
"""


import keras

from rank1_keras import validation

# Torch's batch-norm defaults, as uncertainty-baselines uses them.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_FILTERS = (64, 128, 256, 512)
EXPANSION = 4  # the last 1x1 convolution of a bottleneck has 4x its filters


def scaled_filters(filters, width_multiplier):
    """`filters * width_multiplier` rounded to the nearest integer (at least 1).

    >>> scaled_filters(64, 1 / 16), scaled_filters(64, 0.001)
    (4, 1)
    """
    return max(1, round(filters * width_multiplier))


def resnet50(num_classes=1000, input_shape=(224, 224, 3), width_multiplier=1.0, l2=0.0, name=None):
    """Builds ResNet-50 v1.5.

    Args:
        num_classes: number of classes (at least 2) of the softmax output.
        input_shape: (height, width, channels) of the images. 224x224
            reaches 7x7 before pooling; any size works (global average
            pooling), e.g. 32x32 for a small test network.
        width_multiplier: positive factor on every convolution's filters
            (`scaled_filters`: rounded, at least 1; as uncertainty-baselines'
            `resnet50_resizable_width`, the 4f output filters are rounded
            from 4f * width_multiplier, not 4 * round(f * width_multiplier)).
            1 is ResNet-50; 1/16 a tiny network of the same depth.
        l2: coefficient of `keras.regularizers.L2` (`l2 * sum(w**2)`) on the
            convolution and dense kernels and the dense bias, the variables
            uncertainty-baselines' ImageNet scripts decay (batch-norm
            parameters are not). 0 adds no regularizer.
        name: model name; default `"resnet50"`.

    Returns:
        A functional `keras.Model` mapping images (B, *input_shape) to class
        probabilities (B, num_classes). Bottleneck layers are named
        `stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,relu2,conv3,bn3,
        shortcut_conv,shortcut_bn,add,out}`, s and b counted from 1.

    Example:

    >>> model = resnet50(num_classes=10, input_shape=(32, 32, 3), width_multiplier=1 / 16)
    >>> model.output_shape
    (None, 10)
    >>> tuple(model.get_layer("stage4_block3_conv3").kernel.shape)   # 512 / 16 filters, x 4
    (1, 1, 32, 128)
    """
    num_classes = validation.check_num_classes(num_classes)
    input_shape = validation.check_image_shape(input_shape)
    width_multiplier = validation.check_positive_finite(width_multiplier, "width_multiplier")
    l2 = validation.check_non_negative_finite(l2, "l2")
    validation.check_optional_name(name)
    name = name or "resnet50"

    def regularizer():
        return keras.regularizers.L2(l2) if l2 else None

    def conv(filters, kernel_size, strides, layer_name, padding="same"):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=regularizer(),
            name=layer_name,
        )

    def batch_norm(layer_name):
        return keras.layers.BatchNormalization(
            momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, name=layer_name
        )

    def bottleneck(x, filters, output_filters, strides, prefix):
        y = conv(filters, 1, 1, f"{prefix}_conv1")(x)
        y = batch_norm(f"{prefix}_bn1")(y)
        y = keras.layers.Activation("relu", name=f"{prefix}_relu1")(y)
        y = conv(filters, 3, strides, f"{prefix}_conv2")(y)
        y = batch_norm(f"{prefix}_bn2")(y)
        y = keras.layers.Activation("relu", name=f"{prefix}_relu2")(y)
        y = conv(output_filters, 1, 1, f"{prefix}_conv3")(y)
        y = batch_norm(f"{prefix}_bn3")(y)
        shortcut = x
        if strides != 1 or x.shape[-1] != output_filters:
            shortcut = conv(output_filters, 1, strides, f"{prefix}_shortcut_conv")(x)
            shortcut = batch_norm(f"{prefix}_shortcut_bn")(shortcut)
        x = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
        return keras.layers.Activation("relu", name=f"{prefix}_out")(x)

    inputs = keras.Input(input_shape, name="images")
    x = keras.layers.ZeroPadding2D(3, name="stem_pad")(inputs)
    x = conv(scaled_filters(64, width_multiplier), 7, 2, "stem_conv", padding="valid")(x)
    x = batch_norm("stem_bn")(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (num_blocks, filters) in enumerate(zip(STAGE_BLOCKS, STAGE_FILTERS), start=1):
        for block in range(1, num_blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = bottleneck(
                x,
                scaled_filters(filters, width_multiplier),
                scaled_filters(EXPANSION * filters, width_multiplier),
                strides,
                f"stage{stage}_block{block}",
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        kernel_regularizer=regularizer(),
        bias_regularizer=regularizer(),
        name="probabilities",
    )(x)
    return keras.Model(inputs, outputs, name=name)
