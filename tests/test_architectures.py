"""rank1_keras.models: wide_resnet, resnet50, lstm_classifier.

Each builder is checked against values computed independently of it:
parameter counts from the architecture's closed form (and the published
totals), Keras' own ResNet50, NumPy re-computations of parts of the forward
pass, the masked LSTM on each unpadded sequence alone, and, for every
method of `rank1_keras.convert`, the plain model the conversion must
reproduce when its factors are at one. The big networks (WRN-28-10,
ResNet-50) are only built, never run.
"""

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.models import lstm_classifier, resnet50, wide_resnet

TOLERANCE = 1e-5
BATCH_NORM_EPSILON = 1e-5  # uncertainty-baselines' (Torch's) epsilon
ENSEMBLE_SIZE = 2
METHODS = ("batchensemble", "rank1", "dropout")


def _trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def _max_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


def _perturb(model, seed=0):
    """Moves batch-norm statistics/parameters and biases off their initial values.

    So that a conversion that dropped or mis-copied any of them, or a
    re-computation that ignored them, shows in the outputs.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape
            layer.moving_mean.assign(rng.normal(scale=0.1, size=size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.6, 1.6, size=size).astype("float32"))
            layer.gamma.assign(rng.uniform(0.6, 1.2, size=size).astype("float32"))
            layer.beta.assign(rng.normal(scale=0.1, size=size).astype("float32"))
        elif isinstance(layer, keras.layers.LSTM):
            bias = layer.cell.bias
            bias.assign(bias.numpy() + rng.normal(scale=0.3, size=bias.shape).astype("float32"))
        elif isinstance(layer, keras.layers.Dense):
            layer.bias.assign(rng.normal(scale=0.1, size=layer.bias.shape).astype("float32"))
    return model


def _batch_norm(x, layer):
    """Inference-mode batch normalisation in float64."""
    gamma, beta, mean, variance = (np.asarray(v, np.float64) for v in layer.get_weights())
    return gamma * (x - mean) / np.sqrt(variance + BATCH_NORM_EPSILON) + beta


def _softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _outputs_of(model, layer_names, x):
    probe = keras.Model(model.input, [model.get_layer(name).output for name in layer_names])
    return [np.asarray(y, np.float64) for y in probe(x, training=False)]


def _images(shape, batch_size=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch_size,) + shape).astype("float32")


# -- 1. parameter counts -----------------------------------------------------


def wide_resnet_parameters(depth, width_multiplier, num_classes=10, channels=3):
    """(trainable, total) parameters of WRN-depth-k from the architecture alone.

    conv k x k (c_in -> c_out): k*k*c_in*c_out; batch norm over c channels: 2c
    trainable (gamma, beta) + 2c moving statistics; dense: d*C + C. A block
    has bn(c_in), conv3x3 c_in->f, bn(f), conv3x3 f->f, and a 1x1 projection
    c_in->f when c_in != f or the block strides.
    """
    blocks = (depth - 4) // 6
    trainable = 3 * 3 * channels * 16
    batch_norm_channels = 0
    c_in = 16
    for group, filters in enumerate((16 * width_multiplier, 32 * width_multiplier, 64 * width_multiplier)):
        for block in range(blocks):
            strides = 2 if group > 0 and block == 0 else 1
            trainable += 9 * c_in * filters + 9 * filters * filters
            batch_norm_channels += c_in + filters
            if c_in != filters or strides != 1:
                trainable += c_in * filters
            c_in = filters
    batch_norm_channels += c_in  # the final bn
    trainable += 2 * batch_norm_channels + c_in * num_classes + num_classes
    return trainable, trainable + 2 * batch_norm_channels


def test_wide_resnet_28_10_parameter_count_matches_the_closed_form_and_the_published_total():
    model = wide_resnet(depth=28, width_multiplier=10)  # built, never run
    trainable, total = wide_resnet_parameters(28, 10)
    assert _trainable_count(model) == trainable
    assert model.count_params() == total
    # The published WRN-28-10 size: 36.5M (Zagoruyko & Komodakis, Table 1),
    # 36,479,194 trainable parameters as usually quoted for CIFAR-10.
    assert trainable == 36_479_194
    # 28 = the input conv + 3 groups x 4 blocks x 2 convs + 3 projections.
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 28
    assert model.get_layer("group3_block4_add").output.shape == (None, 8, 8, 640)


@pytest.mark.parametrize("depth,width_multiplier,published_millions", [(16, 4, 2.7), (10, 1, None), (22, 2, None)])
def test_wide_resnet_parameter_count_matches_the_closed_form(depth, width_multiplier, published_millions):
    model = wide_resnet(depth=depth, width_multiplier=width_multiplier, num_classes=7, input_shape=(16, 16, 1))
    trainable, total = wide_resnet_parameters(depth, width_multiplier, num_classes=7, channels=1)
    assert (_trainable_count(model), model.count_params()) == (trainable, total)
    if published_millions is not None:  # WRN-16-4: 2.7M (paper, Table 1; CIFAR-10)
        assert round(wide_resnet_parameters(depth, width_multiplier)[0] / 1e6, 1) == published_millions


def resnet50_parameters(width_multiplier=1.0, num_classes=1000, channels=3):
    """(trainable, total) parameters of ResNet-50 from the architecture alone.

    Filters f * width_multiplier rounded (at least 1), each count on its own
    (uncertainty-baselines' resnet50_resizable_width rule); no conv biases;
    batch norm after every conv.
    """

    def scaled(filters):
        return max(1, round(filters * width_multiplier))

    stem = scaled(64)
    trainable = 7 * 7 * channels * stem
    batch_norm_channels = stem
    c_in = stem
    for stage, (blocks, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        middle, out = scaled(filters), scaled(4 * filters)
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            trainable += c_in * middle + 9 * middle * middle + middle * out
            batch_norm_channels += middle + middle + out
            if c_in != out or strides != 1:
                trainable += c_in * out
                batch_norm_channels += out
            c_in = out
    trainable += 2 * batch_norm_channels + c_in * num_classes + num_classes
    return trainable, trainable + 2 * batch_norm_channels


def test_resnet50_parameter_count_matches_keras_applications_without_conv_biases():
    model = resnet50()  # built, never run
    reference = keras.applications.ResNet50(weights=None)
    reference_conv_biases = sum(
        int(np.prod(layer.bias.shape))
        for layer in reference.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias
    )
    assert reference_conv_biases > 0
    assert _trainable_count(model) == _trainable_count(reference) - reference_conv_biases
    assert model.count_params() == reference.count_params() - reference_conv_biases
    assert (_trainable_count(model), model.count_params()) == resnet50_parameters()
    # The published size: 25.6M; 25,557,032 as torchvision counts it (no conv biases).
    assert _trainable_count(model) == 25_557_032

    def kernel_shapes(m):
        return sorted(tuple(layer.kernel.shape) for layer in m.layers if isinstance(layer, keras.layers.Conv2D))

    assert kernel_shapes(model) == kernel_shapes(reference)
    # v1.5: the strides sit on the 3x3 convolutions (and the projections), not the first 1x1.
    strided = {layer.name for layer in model.layers if getattr(layer, "strides", (1, 1)) == (2, 2)}
    assert {n for n in strided if "conv" in n} == {"stem_conv"} | {
        f"stage{s}_block1_{c}" for s in (2, 3, 4) for c in ("conv2", "shortcut_conv")
    }
    assert model.get_layer("stage4_block3_out").output.shape == (None, 7, 7, 2048)


@pytest.mark.parametrize("width_multiplier", [1 / 16, 0.3])
def test_narrow_resnet50_parameter_count_matches_the_closed_form(width_multiplier):
    model = resnet50(num_classes=10, input_shape=(32, 32, 3), width_multiplier=width_multiplier)
    assert (_trainable_count(model), model.count_params()) == resnet50_parameters(width_multiplier, 10)


# -- 2. forward passes -----------------------------------------------------------


@pytest.fixture
def tiny_wide_resnet():
    return _perturb(wide_resnet(depth=10, width_multiplier=1, num_classes=5, l2=0.0))


@pytest.fixture
def tiny_resnet50():
    keras.utils.set_random_seed(7)
    return _perturb(resnet50(num_classes=5, input_shape=(32, 32, 3), width_multiplier=1 / 16))


def test_wide_resnet_head_matches_a_numpy_recomputation(tiny_wide_resnet):
    model = tiny_wide_resnet
    x = _images((32, 32, 3))
    features, probabilities = _outputs_of(model, ["group3_block1_add", "probabilities"], x)
    assert features.shape == (2, 8, 8, 64)
    dense = model.get_layer("probabilities")
    hidden = np.maximum(_batch_norm(features, model.get_layer("final_bn")), 0.0).mean(axis=(1, 2))
    expected = _softmax(hidden @ dense.kernel.numpy() + dense.bias.numpy())
    assert _max_error(probabilities, expected) <= TOLERANCE
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)


def test_wide_resnet_block_with_a_zero_second_conv_is_its_shortcut(tiny_wide_resnet):
    model = tiny_wide_resnet
    x = _images((32, 32, 3))
    names = ["input_conv", "group1_block1_add", "group2_block1_add"]
    block_input, block_output, _ = _outputs_of(model, names, x)
    assert _max_error(block_output, block_input) > 1e-2  # the residual branch does contribute

    # Identity shortcut: the block's output is its input.
    model.get_layer("group1_block1_conv2").kernel.assign(np.zeros((3, 3, 16, 16), "float32"))
    # Projection shortcut: a 1x1 stride-2 conv of the block's raw input (not its pre-activation).
    model.get_layer("group2_block1_conv2").kernel.assign(np.zeros((3, 3, 32, 32), "float32"))
    block_input, block_output, block2_output = _outputs_of(model, names, x)
    assert _max_error(block_output, block_input) == 0.0
    projection = model.get_layer("group2_block1_shortcut").kernel.numpy()[0, 0].astype(np.float64)
    expected = block_output[:, ::2, ::2, :] @ projection
    assert block2_output.shape == (2, 16, 16, 32)
    assert _max_error(block2_output, expected) <= TOLERANCE


def test_resnet50_block_with_a_zero_residual_branch_is_its_shortcut(tiny_resnet50):
    model = tiny_resnet50
    x = _images((32, 32, 3))
    probabilities = model(x, training=False).numpy()
    assert probabilities.shape == (2, 5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)

    names = ["stage1_block2_out", "stage1_block3_out", "stage2_block1_out"]
    block_input, block_output, _ = _outputs_of(model, names, x)
    assert _max_error(block_output, block_input) > 1e-2  # the residual branch does contribute
    for block in ("stage1_block3", "stage2_block1"):  # a zero last BN zeroes the residual branch
        bn = model.get_layer(f"{block}_bn3")
        bn.gamma.assign(np.zeros(bn.gamma.shape, "float32"))
        bn.beta.assign(np.zeros(bn.beta.shape, "float32"))
    block_input, block_output, stage2_out = _outputs_of(model, names, x)
    # Identity shortcut: relu(x + 0) = x, x being a ReLU output.
    assert _max_error(block_output, block_input) == 0.0
    # Projection: relu(bn(1x1 stride-2 conv of the block input)).
    projection = model.get_layer("stage2_block1_shortcut_conv").kernel.numpy()[0, 0].astype(np.float64)
    shortcut = _batch_norm(block_output[:, ::2, ::2, :] @ projection, model.get_layer("stage2_block1_shortcut_bn"))
    assert stage2_out.shape == (2, 4, 4, 32)
    assert _max_error(stage2_out, np.maximum(shortcut, 0.0)) <= TOLERANCE


def _sequences(lengths, num_features, padded_length, seed=0):
    rng = np.random.default_rng(seed)
    unpadded = [rng.normal(size=(length, num_features)).astype("float32") for length in lengths]
    padded = np.zeros((len(lengths), padded_length, num_features), "float32")
    for i, sequence in enumerate(unpadded):
        padded[i, : len(sequence)] = sequence
    return unpadded, padded


def test_lstm_classifier_output_for_a_padded_batch_equals_each_sequence_alone():
    model = _perturb(lstm_classifier(num_features=3, num_classes=4, units=8, hidden_units=6))
    assert model.input_shape == (None, None, 3)
    unpadded, padded = _sequences((7, 4, 1, 5), num_features=3, padded_length=9)
    batch = model(padded, training=False).numpy()
    alone = np.concatenate([model(s[None], training=False).numpy() for s in unpadded])
    assert _max_error(batch, alone) <= 1e-6
    np.testing.assert_allclose(batch.sum(-1), 1.0, atol=1e-6)
    # Not vacuous: the examples differ, and the LSTM without the mask reads the padding.
    assert _max_error(batch[0], batch[1]) > 1e-3
    lstm, hidden, head = (model.get_layer(n) for n in ("lstm", "hidden", "probabilities"))
    unmasked = head(hidden(lstm(padded))).numpy()
    assert _max_error(unmasked[1], alone[1]) > 1e-3


def test_lstm_classifier_masks_a_real_all_zero_step_documented_limitation():
    model = _perturb(lstm_classifier(num_features=2, units=4, hidden_units=3, max_length=3))
    assert model.input_shape == (None, 3, 2)
    a, b = np.array([[0.5, -1.0]], "float32"), np.array([[2.0, 0.3]], "float32")
    with_zero_step = np.concatenate([a, np.zeros_like(a), b])[None]
    without = np.concatenate([a, b, np.zeros_like(a)])[None]
    assert _max_error(model(with_zero_step, training=False), model(without, training=False)) <= 1e-6


# -- 3. regularization ---------------------------------------------------------------


def _squared_sum(variables):
    return float(sum(np.sum(np.square(np.asarray(v, np.float64))) for v in variables))


def test_l2_covers_the_documented_variables():
    l2 = 1e-3
    model = wide_resnet(depth=10, width_multiplier=1, l2=l2)
    regularized = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            regularized.append(layer.kernel)
        elif isinstance(layer, keras.layers.BatchNormalization):
            regularized += [layer.gamma, layer.beta]
        elif isinstance(layer, keras.layers.Dense):
            regularized += [layer.kernel, layer.bias]
    _perturb(model)
    assert sum(float(loss) for loss in model.losses) == pytest.approx(l2 * _squared_sum(regularized), rel=1e-5)

    model = _perturb(resnet50(num_classes=3, input_shape=(32, 32, 3), width_multiplier=1 / 16, l2=l2))
    regularized = [layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    regularized += [model.get_layer("probabilities").kernel, model.get_layer("probabilities").bias]
    assert sum(float(loss) for loss in model.losses) == pytest.approx(l2 * _squared_sum(regularized), rel=1e-5)

    model = lstm_classifier(num_features=3, units=4, hidden_units=3, l2=l2)
    lstm = model.get_layer("lstm").cell
    regularized = [lstm.kernel, lstm.recurrent_kernel, model.get_layer("hidden").kernel]
    regularized.append(model.get_layer("probabilities").kernel)
    assert sum(float(loss) for loss in model.losses) == pytest.approx(l2 * _squared_sum(regularized), rel=1e-5)

    assert not wide_resnet(depth=10, width_multiplier=1).losses  # l2=0 adds no regularizer


# -- 4. conversion ------------------------------------------------------------------


def _factors_at_one(method):
    """convert() options under which the converted model reproduces the original."""
    if method == "batchensemble":
        return {f"{side}_initializer": "ones" for side in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")}
    if method == "rank1":

        def at_one():
            return r1.initializers.TrainableNormal(mean_initializer="ones")

        return {
            "alpha_initializer": at_one(),
            "gamma_initializer": at_one(),
            "recurrent_alpha_initializer": at_one(),
            "recurrent_gamma_initializer": at_one(),
            "inference": "mean",
            "train_size": 1000,
        }
    return {}


def _tiny_model(architecture):
    if architecture == "wide_resnet":
        return wide_resnet(depth=10, width_multiplier=1, num_classes=3, input_shape=(16, 16, 3), dropout_rate=0.2)
    if architecture == "resnet50":
        return resnet50(num_classes=3, input_shape=(32, 32, 3), width_multiplier=1 / 16)
    return lstm_classifier(num_features=3, num_classes=3, units=6, hidden_units=5, dropout_rate=0.25)


def _tiny_inputs(architecture):
    if architecture == "wide_resnet":
        return _images((16, 16, 3), batch_size=3)
    if architecture == "resnet50":
        return _images((32, 32, 3), batch_size=3)
    return _sequences((6, 2, 4), num_features=3, padded_length=6)[1]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("architecture", ["wide_resnet", "resnet50", "lstm_classifier"])
def test_converted_architecture_at_unit_factors_reproduces_the_plain_model(architecture, method):
    keras.utils.set_random_seed(11)
    original = _perturb(_tiny_model(architecture))
    x = _tiny_inputs(architecture)
    expected = original(x, training=False).numpy()
    has_dropout = any(isinstance(layer, keras.layers.Dropout) for layer in original.layers)
    options = _factors_at_one(method)
    if method == "dropout" and not has_dropout:  # ResNet-50: insert MC dropout after the convs
        options["dropout_rate"] = 0.3
    converted = r1.convert(original, method, ensemble_size=ENSEMBLE_SIZE, **options)

    if method == "dropout":
        sampled = converted(x, training=False).numpy()  # MC dropout on: a random forward pass
        assert sampled.shape == expected.shape
        np.testing.assert_allclose(sampled.sum(-1), 1.0, atol=1e-5)
        assert _max_error(sampled, expected) > 1e-6
        r1.set_mc_dropout(converted, False)
    else:
        summary = r1.conversion_summary(original, converted)
        converted_kinds = {old for _, old, _ in summary.changed_layers}
        expected_kinds = {"Dense", "BatchNormalization"} | (
            {"LSTM"} if architecture == "lstm_classifier" else {"Conv2D"}
        )
        if architecture == "lstm_classifier":
            expected_kinds.discard("BatchNormalization")
        assert converted_kinds == expected_kinds
    actual = converted(x, training=False).numpy()
    assert actual.shape == expected.shape
    assert _max_error(actual, expected) <= TOLERANCE


# -- 5. argument checks -----------------------------------------------------------

BAD_ARGUMENTS = [
    (wide_resnet, {"depth": 27}, "depth"),
    (wide_resnet, {"depth": 4}, "depth"),
    (wide_resnet, {"depth": 28.0}, "depth"),
    (wide_resnet, {"width_multiplier": 0}, "width_multiplier"),
    (wide_resnet, {"width_multiplier": 1.5}, "width_multiplier"),
    (wide_resnet, {"num_classes": 1}, "num_classes"),
    (wide_resnet, {"input_shape": (32, 32)}, "input_shape"),
    (wide_resnet, {"input_shape": (32, 0, 3)}, "input_shape"),
    (wide_resnet, {"l2": -1e-4}, "l2"),
    (wide_resnet, {"dropout_rate": 1.0}, "dropout_rate"),
    (wide_resnet, {"name": ""}, "name"),
    (resnet50, {"num_classes": 0}, "num_classes"),
    (resnet50, {"input_shape": (224, 224)}, "input_shape"),
    (resnet50, {"width_multiplier": 0.0}, "width_multiplier"),
    (resnet50, {"width_multiplier": float("nan")}, "width_multiplier"),
    (resnet50, {"l2": float("inf")}, "l2"),
    (resnet50, {"name": 3}, "name"),
    (lstm_classifier, {"num_features": 0}, "num_features"),
    (lstm_classifier, {"num_features": 3, "num_classes": 1}, "num_classes"),
    (lstm_classifier, {"num_features": 3, "units": 0}, "units"),
    (lstm_classifier, {"num_features": 3, "hidden_units": -2}, "hidden_units"),
    (lstm_classifier, {"num_features": 3, "max_length": 0}, "max_length"),
    (lstm_classifier, {"num_features": 3, "dropout_rate": -0.1}, "dropout_rate"),
    (lstm_classifier, {"num_features": 3, "l2": -1.0}, "l2"),
]


@pytest.mark.parametrize(
    "builder,arguments,argument", BAD_ARGUMENTS, ids=[f"{b.__name__}-{a}" for b, _, a in BAD_ARGUMENTS]
)
def test_bad_arguments_raise_value_errors_naming_the_argument(builder, arguments, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        builder(**arguments)


def test_depth_error_states_the_rule():
    with pytest.raises(ValueError, match=r"\(depth - 4\) % 6 == 0 and depth >= 10"):
        wide_resnet(depth=12)
