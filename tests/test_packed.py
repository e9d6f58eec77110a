"""Packed-Ensembles: layers against float64 NumPy, conversion against K standalone narrow networks, defaults."""

import os

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.layers import Conv1DPackedEnsemble, Conv2DPackedEnsemble, DensePackedEnsemble
from rank1_keras.methods.packed import member_width
from rank1_keras.models import small_cnn
from rank1_keras.methods.settings import MethodSettings, build_method_models
from tests.backend_utils import numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

RNG = np.random.default_rng(0)


def _member_blocks(rows, ensemble_size):
    """Row i belongs to member floor(i K / R) (MemberRows' rule), as NumPy index arrays."""
    ids = np.arange(rows) * ensemble_size // rows
    return [np.flatnonzero(ids == k) for k in range(ensemble_size)]


@pytest.mark.parametrize("rows", [6, 7, 2])
@pytest.mark.parametrize("groups", [1, 2])
def test_dense_member_rows_meet_their_own_grouped_kernel(rows, groups):
    layer = DensePackedEnsemble(6, ensemble_size=3, groups=groups, activation="tanh",
                                bias_initializer="random_normal")
    x = RNG.normal(size=(rows, 8)).astype("float32")
    y = numpy(layer(x))
    kernel, bias = (numpy(w).astype(np.float64) for w in (layer.kernel, layer.bias))
    assert kernel.shape == (3, groups, 8 // groups, 6 // groups)
    expected = np.zeros((rows, 6))
    for member, index in enumerate(_member_blocks(rows, 3)):
        # The block-diagonal kernel of member k, as one (8, 6) matrix.
        full = np.zeros((8, 6))
        for g in range(groups):
            full[g * 8 // groups:(g + 1) * 8 // groups, g * 6 // groups:(g + 1) * 6 // groups] = kernel[member, g]
        expected[index] = np.tanh(x[index].astype(np.float64) @ full + bias[member])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [4, 5])
def test_conv2d_member_rows_equal_keras_grouped_conv_with_the_members_weights(rows):
    layer = Conv2DPackedEnsemble(4, 3, ensemble_size=2, groups=2, padding="same", activation="relu",
                                 bias_initializer="random_normal")
    x = RNG.normal(size=(rows, 6, 6, 4)).astype("float32")
    y = numpy(layer(x))
    for member, index in enumerate(_member_blocks(rows, 2)):
        reference = keras.layers.Conv2D(4, 3, padding="same", groups=2, activation="relu")
        reference.build((None, 6, 6, 4))
        reference.set_weights([numpy(layer.kernel[member]), numpy(layer.bias[member])])
        np.testing.assert_allclose(y[index], numpy(reference(x[index])), rtol=1e-5, atol=1e-5)


def test_conv1d_causal_member_rows_equal_keras_conv1d():
    layer = Conv1DPackedEnsemble(3, 2, ensemble_size=2, padding="causal")
    x = RNG.normal(size=(4, 7, 2)).astype("float32")
    y = numpy(layer(x))
    for member, index in enumerate(_member_blocks(4, 2)):
        reference = keras.layers.Conv1D(3, 2, padding="causal")
        reference.build((None, 7, 2))
        reference.set_weights([numpy(layer.kernel[member]), numpy(layer.bias[member])])
        np.testing.assert_allclose(y[index], numpy(reference(x[index])), rtol=1e-5, atol=1e-5)


def test_members_start_independent_with_one_members_glorot_variance():
    keras.utils.set_random_seed(1)
    layer = DensePackedEnsemble(200, ensemble_size=4)
    layer.build((None, 300))
    kernel = numpy(layer.kernel)[:, 0]  # (K, 300, 200)
    expected_std = np.sqrt(2.0 / (300 + 200))  # Glorot for one member's fans, not the stacked table's
    for member in range(4):
        assert abs(kernel[member].std() / expected_std - 1) < 0.02
    assert np.abs(np.corrcoef(kernel[0].ravel(), kernel[1].ravel())[0, 1]) < 0.01  # not one draw repeated


def test_groups_must_divide_the_widths():
    with pytest.raises(ValueError, match="groups=3 must divide the input width; got 8"):
        DensePackedEnsemble(6, ensemble_size=2, groups=3)(np.ones((2, 8), "float32"))
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        DensePackedEnsemble(6, groups=0)


@pytest.mark.parametrize("layer", [
    DensePackedEnsemble(6, ensemble_size=3, groups=2, activation="relu", kernel_regularizer="l2"),
    Conv2DPackedEnsemble(4, 3, ensemble_size=2, groups=2, strides=2, padding="same"),
    Conv1DPackedEnsemble(4, 3, ensemble_size=2, dilation_rate=2),
])
def test_layers_round_trip_config_and_keras_file(layer, tmp_path):
    shape = {DensePackedEnsemble: (6, 8), Conv2DPackedEnsemble: (4, 6, 6, 4), Conv1DPackedEnsemble: (4, 9, 4)}
    x = RNG.normal(size=shape[type(layer)]).astype("float32")
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    clone = type(layer).from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(numpy(clone(x)), numpy(layer(x)), rtol=1e-6)
    path = os.path.join(tmp_path, "packed.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)


def _narrow_member(packed_core, member):
    """A plain small CNN of one member's widths, holding member `member`'s packed weights."""
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for packed in packed_core.layers[1:]:  # after the input layer, in graph order
        if isinstance(packed, Conv2DPackedEnsemble):
            layer = keras.layers.Conv2D(packed.filters, packed.kernel_size, activation=packed.activation)
        elif isinstance(packed, DensePackedEnsemble):
            layer = keras.layers.Dense(packed.units, activation=packed.activation)
        else:
            layer = type(packed).from_config(packed.get_config())
        x = layer(x)
        if isinstance(packed, (Conv2DPackedEnsemble, DensePackedEnsemble)):
            kernel = numpy(packed.kernel[member])
            layer.set_weights([kernel[0] if kernel.ndim == 3 else kernel, numpy(packed.bias[member])])
    return keras.Model(inputs, x)


def test_a_converted_small_cnn_is_k_independent_narrow_networks():
    keras.utils.set_random_seed(0)
    plain = small_cnn()
    converted = r1.convert(plain, "packed", ensemble_size=4)  # defaults: width factor 2, one group
    core = next(layer for layer in converted.layers if layer.name.endswith("_members"))
    widths = [getattr(layer, "filters", getattr(layer, "units", None)) for layer in core.layers
              if isinstance(layer, (Conv2DPackedEnsemble, DensePackedEnsemble))]
    # Hidden widths 2 x width / 4 (original 32, 64, 128); the head keeps the 10 classes.
    assert widths == [16, 32, 64, 10]
    summary = r1.conversion_summary(plain, converted)
    assert 0.9 < summary.trainable_parameters_after / summary.trainable_parameters_before < 1.1  # ~ 1/4 of an ensemble
    x = RNG.random((6, 28, 28, 1)).astype("float32")
    members = r1.member_outputs(converted).predict(x, verbose=0)
    for member in range(4):
        np.testing.assert_allclose(members[:, member], _narrow_member(core, member).predict(x, verbose=0),
                                   rtol=1e-4, atol=1e-5)
    assert np.abs(members[:, 0] - members[:, 1]).max() > 1e-3  # independent initialisations
    np.testing.assert_allclose(converted.predict(x, verbose=0), members.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_member_width_rounds_to_whole_groups():
    assert member_width(128, 4, 2.0, 1) == 64
    assert member_width(30, 4, 2.0, 2) == 16  # 15 rounded up to whole groups of 2
    assert member_width(3, 8, 1.0, 1) == 1


def test_groups_thin_every_hidden_layer_but_the_first():
    converted = r1.convert(small_cnn(), "packed", ensemble_size=4, groups=2)
    core = next(layer for layer in converted.layers if layer.name.endswith("_members"))
    groups = [layer.groups for layer in core.layers if hasattr(layer, "groups")]
    assert groups == [1, 2, 2, 1]  # conv, conv, dense, head


def test_lstm_and_bad_options_get_one_clear_error():
    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.LSTM(4)(inputs)))
    with pytest.raises(ValueError, match="'lstm.*' is an LSTM, which has no packed counterpart"):
        r1.convert(model, "packed")
    with pytest.raises(ValueError, match="width_factor must be"):
        r1.convert(small_cnn(), "packed", width_factor=0)
    with pytest.raises(ValueError, match="packed_groups must be a positive integer"):
        MethodSettings("packed", packed_groups=0)


def test_user_model_with_batch_norm_fits_with_the_defaults_on_an_uneven_last_batch():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    converted = r1.convert(model, "packed", ensemble_size=4)
    x_train = RNG.random((70, 8, 8, 1)).astype("float32")
    y_train = (x_train.mean(axis=(1, 2, 3)) * 30).astype("int64") % 3
    converted.compile(keras.optimizers.Adam(1e-2), r1.AverageNLL(4))
    history = converted.fit(x_train, y_train, batch_size=16, epochs=3, verbose=0)  # last batch: 6 rows
    assert history.history["loss"][-1] < history.history["loss"][0]
    batch_norms = [layer for layer in converted.layers[-2].layers
                   if isinstance(layer, r1.layers.normalization.EnsembleBatchNormalization)]
    assert len(batch_norms) == 1 and batch_norms[0].moving_mean.shape == (4, 4)  # per member, packed width
    members = r1.member_outputs(converted).predict(x_train[:8], verbose=0)
    assert np.abs(members[:, 0] - members[:, 1]).max() > 1e-3


def test_method_settings_build_packed_with_its_flags():
    settings = MethodSettings("packed", ensemble_size=3, packed_width_factor=3.0, packed_groups=1)
    assert (settings.members, settings.ensemble_members, settings.eval_samples) == (3, 3, 1)
    (model,) = build_method_models(lambda: small_cnn((12, 12, 1), 3), settings)
    core = next(layer for layer in model.layers if layer.name.endswith("_members"))
    assert [layer.filters for layer in core.layers if isinstance(layer, Conv2DPackedEnsemble)] == [32, 64]
    split = MethodSettings("packed", ensemble_size=3, training_batch="split")
    assert split.members == 1 and split.ensemble_members == 3
