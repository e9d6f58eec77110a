"""rank1_keras.convert / join_ensemble / member_outputs / conversion_summary.

Every converted model is checked against a value it must reproduce: the
original model (factors at one), a float64 NumPy computation, the closed-form
parameter overhead computed from the original's layer shapes, or the
outputs before a save/load round trip. ResNet-50 is built once per module.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.convert import methods as convert_methods
from rank1_keras.data import load_fashion_mnist
from rank1_keras.layers.dropout import MCDropout
from rank1_keras.layers.normalization import EnsembleBatchNormalization
from tests import convert_models as cm
from tests.backend_utils import numpy

# Every backend; TensorFlow only: the SavedModel exports (marked per test below).
pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
TENSORFLOW_ONLY = pytest.mark.backends("tensorflow")

METHODS = ("batchensemble", "rank1", "dropout")
ENSEMBLE_SIZE = 3  # small models
RESNET_ENSEMBLE_SIZE = 4
TOLERANCE = 1e-5


def _ensemble_size(name):
    return RESNET_ENSEMBLE_SIZE if name == "resnet50" else ENSEMBLE_SIZE


def _max_error(actual, expected):
    return float(np.max(np.abs(numpy(actual).astype(np.float64) - numpy(expected).astype(np.float64))))


def _core(converted):
    """The nested model that holds the converted layers."""
    (core,) = [layer for layer in converted.layers if isinstance(layer, keras.Model)]
    return core


@pytest.fixture(scope="module")
def originals():
    """Perturbed originals, built once per module (ResNet-50 included)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = cm.build(name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def resnet_conversions(originals):
    """ResNet-50 conversions shared by the equivalence and overhead tests (read only)."""
    cache = {}

    def get(method, ensemble_size, batch_norm="per_member"):
        key = (method, ensemble_size, batch_norm)
        if key not in cache:
            cache[key] = cm.convert_at_one(originals("resnet50"), method, ensemble_size, batch_norm=batch_norm)
        return cache[key]

    return get


@pytest.fixture(scope="module", autouse=True)
def resnet_exports(request, tmp_path_factory):
    """Starts the ResNet-50 SavedModel round trips in a background process (see convert_models)."""
    wanted = any("test_resnet50_saved_model_round_trip" in item.nodeid for item in request.session.items)
    if not wanted:
        yield None
        return
    out_dir = tmp_path_factory.mktemp("resnet50_exports")
    log = open(out_dir / "log.txt", "w")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.convert_models", str(out_dir)],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"},
    )
    yield process, out_dir
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()


def _converted_at_one(originals, resnet_conversions, name, method, batch_norm="per_member"):
    if name == "resnet50":
        return resnet_conversions(method, RESNET_ENSEMBLE_SIZE, batch_norm)
    return cm.convert_at_one(originals(name), method, ENSEMBLE_SIZE, batch_norm=batch_norm)


# -- 1. equivalence with the original at unit factors ---------------------------

EQUIVALENCE_CASES = [
    # ResNet-50 repeats the small models' checks at scale: TensorFlow's default run has it, the others' slow set.
    pytest.param(*case, marks=pytest.mark.slow_off_tensorflow) if case[0] == "resnet50" else case
    for case in [(name, method, "per_member") for name in cm.MODEL_NAMES for method in METHODS]
    + [(name, method, "shared") for name in ("cnn", "resnet50") for method in ("batchensemble", "rank1")]
]


@pytest.mark.parametrize("name,method,batch_norm", EQUIVALENCE_CASES)
def test_converted_model_at_unit_factors_reproduces_the_original(
    originals, resnet_conversions, name, method, batch_norm
):
    original = originals(name)
    converted = _converted_at_one(originals, resnet_conversions, name, method, batch_norm)
    x = cm.inputs_for(name)
    expected = numpy(original(x, training=False))

    error = _max_error(numpy(converted(x, training=False)), expected)
    print(f"\n[equivalence] {name:15s} {method:13s} batch_norm={batch_norm:10s} max abs error {error:.2e}")
    assert error <= TOLERANCE

    if name != "resnet50":  # (one more ResNet-50 pass would add little but time)
        # Every member on its own reproduces the original too (members on axis 1).
        members = numpy(r1.member_outputs(converted)(x, training=False))
        assert members.shape[:2] == (len(x), ENSEMBLE_SIZE)
        for k in range(ENSEMBLE_SIZE):
            assert _max_error(members[:, k], expected) <= TOLERANCE

    # The comparison is not vacuous: the layers really were converted.
    core_layers = cm.all_layers(_core(converted))
    if method == "dropout":
        assert cm.mc_dropout_layers(converted)
    else:
        assert any(isinstance(layer, r1.layers.Rank1Mixin) for layer in core_layers)
        has_bn = any(isinstance(layer, keras.layers.BatchNormalization) for layer in original.layers)
        per_member_bn = [layer for layer in core_layers if isinstance(layer, EnsembleBatchNormalization)]
        assert bool(per_member_bn) == (has_bn and batch_norm == "per_member")


@pytest.mark.parametrize("method", METHODS)
def test_masked_lstm_conversion_honours_the_mask(originals, method):
    """The zero tails matter to an unmasked LSTM; the converted model masks them like the original."""
    original = originals("lstm")
    x = cm.inputs_for("lstm")
    # The same layers run eagerly without the Masking layer see the padding.
    unmasked = numpy(original.get_layer("head")(original.get_layer("hidden")(original.get_layer("lstm")(x))))
    masked = numpy(original(x, training=False))
    assert _max_error(unmasked[0], masked[0]) <= 1e-6  # full length: nothing to mask
    assert _max_error(unmasked[1], masked[1]) > 1e-3  # padded: the mask changes the answer
    converted = cm.convert_at_one(original, method, ENSEMBLE_SIZE)
    assert _max_error(converted(x, training=False), masked) <= TOLERANCE


@pytest.mark.parametrize("method", METHODS)
def test_converted_sequence_model_keeps_the_output_mask(method):
    """A masked return_sequences model's loss skips the padded steps; so must the converted one's.

    Both are evaluated with the same plain Keras loss; the outputs agree at every
    step (see the equivalence test), so the losses agree iff the mask survives.
    """
    original = cm.build("lstm_sequences")  # a private copy: compiled below
    x = cm.inputs_for("lstm_sequences")
    y = np.random.default_rng(0).integers(0, 3, size=x.shape[:2])
    probabilities = numpy(original(x, training=False)).astype(np.float64)
    nll = -np.log(np.take_along_axis(probabilities, y[..., None], -1))[..., 0]
    valid = np.any(x != 0, axis=-1)
    expected = nll[valid].mean()
    assert abs(expected - nll.mean()) > 1e-3  # the padding would change the loss
    original.compile(loss=keras.losses.SparseCategoricalCrossentropy())
    assert original.evaluate(x, y, verbose=0) == pytest.approx(expected, abs=1e-5)

    # No KL terms in the rank1 loss, so that only the likelihoods are compared.
    no_kl = {f"{f}_regularizer": None for f in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")}
    converted = cm.convert_at_one(
        original, method, ENSEMBLE_SIZE, training_output="average", **(no_kl if method == "rank1" else {})
    )
    assert not converted.losses
    converted.compile(loss=keras.losses.SparseCategoricalCrossentropy())
    assert converted.evaluate(x, y, verbose=0) == pytest.approx(expected, abs=1e-5)


# -- 2. parameter overhead -------------------------------------------------------


def expected_overhead(original, method, ensemble_size, batch_norm, layers=None):
    """(trainable, non-trainable) parameters a conversion adds, from the original's shapes.

    Dense/Conv (d inputs, u outputs): K(d+u) factor entries (rank1: twice, a
    loc and an unconstrained scale each) + (K-1)u extra bias entries. LSTM
    (d inputs, u units): K(d + 4u) + K(u + 4u) factor entries + (K-1)4u bias.
    Per-member BN (selected BN layers only): (K-1)2C trainable (gamma, beta)
    and (K-1)2C moving statistics. rank1 layers also hold one non-trainable
    `kl_weight`.
    """
    k = ensemble_size
    trainable = non_trainable = 0
    if method == "dropout":
        return 0, 0
    for layer in original.layers:
        selected = layers is None or layer.name in layers
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) and selected:
            d, u = layer.kernel.shape[-2], layer.kernel.shape[-1]
            factors, bias = k * (d + u), (k - 1) * u if layer.use_bias else 0
        elif isinstance(layer, keras.layers.LSTM) and selected:
            d, u = layer.cell.kernel.shape[0], layer.cell.units
            factors, bias = k * (d + 4 * u) + k * (u + 4 * u), (k - 1) * 4 * u if layer.cell.use_bias else 0
        elif isinstance(layer, keras.layers.BatchNormalization) and batch_norm == "per_member" and selected:
            channels = layer.moving_mean.shape[0]
            trainable += (k - 1) * channels * (int(layer.center) + int(layer.scale))
            non_trainable += (k - 1) * 2 * channels
            continue
        else:
            continue
        if method == "batchensemble":
            trainable += factors + bias
        else:
            trainable += 2 * factors + bias
            non_trainable += 1
    return trainable, non_trainable


OVERHEAD_CASES = [
    (name, method, batch_norm)
    for name in ("mlp", "cnn", "lstm", "lstm_sequences")
    for method in METHODS
    for batch_norm in (("per_member", "shared") if name == "cnn" else ("per_member",))
]


@pytest.mark.parametrize("name,method,batch_norm", OVERHEAD_CASES)
def test_parameter_overhead_matches_the_formula(originals, name, method, batch_norm):
    original = originals(name)
    converted = cm.convert_at_one(original, method, ENSEMBLE_SIZE, batch_norm=batch_norm)
    summary = r1.conversion_summary(original, converted)
    trainable, non_trainable = expected_overhead(original, method, ENSEMBLE_SIZE, batch_norm)
    assert summary.trainable_parameters_before == sum(int(np.prod(v.shape)) for v in original.trainable_weights)
    assert summary.trainable_parameters_after - summary.trainable_parameters_before == trainable
    assert summary.parameters_after - summary.parameters_before == trainable + non_trainable
    assert summary.overhead_percent == pytest.approx(100.0 * trainable / summary.trainable_parameters_before)


def _resnet_breakdown(original):
    convs = [layer for layer in original.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    bns = [layer for layer in original.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return (
        sum(layer.kernel.shape[-2] + layer.kernel.shape[-1] for layer in convs),
        sum(layer.kernel.shape[-1] for layer in convs if layer.use_bias),
        sum(layer.moving_mean.shape[0] for layer in bns),
    )


@pytest.mark.parametrize(
    "method,ensemble_size,batch_norm",
    [
        ("rank1", 4, "shared"),
        ("rank1", 4, "per_member"),
        ("rank1", 10, "shared"),
        ("rank1", 10, "per_member"),
        ("batchensemble", 4, "per_member"),
    ],
)
def test_resnet50_parameter_overhead(originals, resnet_conversions, method, ensemble_size, batch_norm):
    original = originals("resnet50")
    converted = resnet_conversions(method, ensemble_size, batch_norm)
    summary = r1.conversion_summary(original, converted)
    trainable, non_trainable = expected_overhead(original, method, ensemble_size, batch_norm)
    factor_entries, bias_entries, bn_channels = _resnet_breakdown(original)
    print(
        f"\n[overhead] ResNet-50 {method} K={ensemble_size} batch_norm={batch_norm}: "
        f"+{summary.trainable_parameters_after - summary.trainable_parameters_before:,} trainable "
        f"({summary.overhead_percent:.3f}% of {summary.trainable_parameters_before:,}); formula +{trainable:,} = "
        f"factors {(2 if method == 'rank1' else 1) * ensemble_size * factor_entries:,} + biases "
        f"{(ensemble_size - 1) * bias_entries:,} + BN "
        f"{(ensemble_size - 1) * 2 * bn_channels if batch_norm == 'per_member' else 0:,}"
    )
    assert summary.trainable_parameters_after - summary.trainable_parameters_before == trainable
    assert summary.parameters_after - summary.parameters_before == trainable + non_trainable
    assert summary.overhead_percent == pytest.approx(100.0 * trainable / summary.trainable_parameters_before)


# -- 3. training -----------------------------------------------------------------

TRAIN_EXAMPLES, TEST_EXAMPLES, BATCH = 2000, 1000, 50


@pytest.fixture(scope="module")
def fashion():
    x_train, y_train = (a[:TRAIN_EXAMPLES] for a in load_fashion_mnist(split="train"))
    x_test, y_test = (a[:TEST_EXAMPLES] for a in load_fashion_mnist(split="test"))
    return x_train, y_train, x_test, y_test


def _fashion_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv_a")(inputs)
    h = keras.layers.MaxPooling2D(2, name="pool_a")(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv_b")(h)
    h = keras.layers.MaxPooling2D(2, name="pool_b")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="fashion_cnn")


def _training_options(method):
    if method != "rank1":
        return {}
    kl = r1.regularizers.NormalKLDivergence(mean=1.0, stddev=0.5, scale_factor=1.0 / TRAIN_EXAMPLES)
    return dict(alpha_regularizer=kl, gamma_regularizer=kl)


def _accuracy(model, x, y):
    probabilities = model.predict(x, batch_size=250, verbose=0).astype(np.float64)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    return float(np.mean(probabilities.argmax(-1) == y))


@pytest.mark.parametrize(
    "method,kwargs,loss",
    [
        ("rank1", {}, "average_nll"),
        # BatchEnsemble learning also runs in the main-job test; this variant is slow (suite time).
        pytest.param("batchensemble", {}, "average_nll", marks=pytest.mark.slow),
        ("batchensemble", {"training_batch": "split"}, "average_nll"),
        pytest.param("rank1", {"training_output": "average"}, "sparse_categorical_crossentropy",
                     marks=pytest.mark.slow_off_tensorflow),
    ],
)
def test_converted_model_learns_fashion_mnist(fashion, method, kwargs, loss):
    x_train, y_train, x_test, y_test = fashion
    ensemble_size = 2
    converted = r1.convert(_fashion_cnn(), method, ensemble_size=ensemble_size, **_training_options(method), **kwargs)
    loss_object = r1.AverageNLL(ensemble_size) if loss == "average_nll" else keras.losses.SparseCategoricalCrossentropy()
    converted.compile(keras.optimizers.Adam(2e-3), loss_object)
    before = _accuracy(converted, x_test, y_test)
    history = converted.fit(x_train, y_train, batch_size=BATCH, epochs=2, verbose=0)
    after = _accuracy(converted, x_test, y_test)
    print(f"\n[training] {method} {kwargs} {loss}: accuracy {before:.3f} -> {after:.3f}, loss {history.history['loss']}")
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert after > 0.6 > before + 0.2  # chance is 0.1


def test_conversion_of_a_trained_model_starts_from_its_weights(fashion):
    x_train, y_train, x_test, y_test = fashion
    original = _fashion_cnn(seed=3)
    original.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    original.fit(x_train, y_train, batch_size=BATCH, epochs=1, verbose=0)
    for method in ("batchensemble", "rank1"):
        converted = r1.convert(original, method, ensemble_size=2, train_size=len(x_train))
        core = _core(converted)
        for name in ("conv_a", "conv_b", "head"):
            source, target = original.get_layer(name), core.get_layer(name)
            np.testing.assert_array_equal(numpy(target.kernel), numpy(source.kernel))
            bias = numpy(target.member_factors["bias"].variable)
            np.testing.assert_array_equal(bias, np.stack([numpy(source.bias)] * 2))
        # The kernels are copies, not the original's variables: training one leaves the other.
        assert core.get_layer("conv_a").kernel is not original.get_layer("conv_a").kernel
    # BatchEnsemble at unit factors (asked for) predicts exactly what the trained original does.
    converted = r1.convert(original, "batchensemble", ensemble_size=2, alpha_initializer="ones", gamma_initializer="ones")
    x = x_test[:200]
    np.testing.assert_allclose(converted.predict(x, verbose=0), original.predict(x, verbose=0), atol=TOLERANCE)
    assert _accuracy(original, x_test, y_test) > 0.5


@pytest.mark.parametrize(
    "name,method",
    # The CNN has Dense, Conv2D and BatchNormalization layers; the LSTM the recurrent conversion
    # (packed has no LSTM counterpart).
    [("cnn", method) for method in convert_methods()] + [("lstm", "batchensemble"), ("lstm", "rank1")],
)
def test_predicting_and_training_the_converted_model_leaves_the_original_intact(name, method):
    """The converted layers hold copies of the original's weights, not its arrays: on JAX a compiled
    step donates (deletes) its state's buffers, so a shared array would vanish from the original."""
    original = cm.build(name)  # a private copy
    x = cm.inputs_for(name)
    y = np.arange(len(x)) % 3
    before_weights = [numpy(v).copy() for v in original.weights]
    before = numpy(original(x, training=False))
    converted = r1.convert(original, method, ensemble_size=2, train_size=100)
    converted.predict(x, verbose=0)
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(2))
    converted.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert _max_error(original.predict(x, verbose=0), before) <= 1e-6
    for variable, value in zip(original.weights, before_weights):
        np.testing.assert_array_equal(numpy(variable), value)


def _dense_net(seed, inputs=5, outputs=4, name=None):
    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,))
    h = keras.layers.Dense(7, activation="tanh", name="hidden")(x)
    y = keras.layers.Dense(outputs, activation="softmax", name="head")(h)
    model = keras.Model(x, y, name=name or f"net_{seed}")
    return cm.perturb_original(model, seed)


def _lstm_net():
    keras.utils.set_random_seed(7)
    return cm.perturb_original(cm.build_lstm(), 7)


@pytest.mark.parametrize("model,training_output", [("dense", "members"), ("dense", "average"), ("masked_lstm", "members")])
def test_split_training_batch_gives_each_member_its_own_block(model, training_output):
    """training_batch="split": row i of a training pass is member floor(i K / B) on example i.

    With training_output="average" too: averaging K split rows would mix different examples.
    """
    original = _dense_net(0) if model == "dense" else _lstm_net()
    options = dict(alpha_initializer="random_sign", gamma_initializer="random_sign")
    if model == "masked_lstm":
        options.update(recurrent_alpha_initializer="random_sign", recurrent_gamma_initializer="random_sign")
    converted = r1.convert(original, "batchensemble", ensemble_size=2, training_batch="split",
                           training_output=training_output, **options)
    rng = np.random.default_rng(1)
    if model == "dense":
        x = rng.normal(size=(4, 5)).astype("float32")
    else:
        x = np.concatenate([cm.inputs_for("lstm", seed=1), cm.inputs_for("lstm", seed=2)])
    members = numpy(r1.member_outputs(converted)(x))  # (4, 2, C): member k on all four examples
    assert _max_error(members[:, 0], members[:, 1]) > 1e-3  # the members differ
    training = numpy(converted(x, training=True))
    assert training.shape == (4,) + members.shape[2:]
    np.testing.assert_allclose(training[:2], members[0:2, 0], atol=1e-6)  # member 0, examples 0-1
    np.testing.assert_allclose(training[2:], members[2:4, 1], atol=1e-6)  # member 1, examples 2-3
    # Inference tiles as usual and averages.
    np.testing.assert_allclose(numpy(converted(x)), members.mean(1), atol=1e-6)
    # An odd batch splits unevenly: member floor(2 i / 3) on row i, rows 0-1 member 0, row 2 member 1.
    odd = numpy(converted(x[:3], training=True))
    odd_members = numpy(r1.member_outputs(converted)(x[:3]))
    np.testing.assert_allclose(odd[:2], odd_members[0:2, 0], atol=1e-6)
    np.testing.assert_allclose(odd[2:], odd_members[2:3, 1], atol=1e-6)


@pytest.mark.parametrize("training_output", ["members", "average"])
def test_training_output(training_output):
    """Tiled training (the default): every member on every example, as member rows or their average."""
    converted = r1.convert(_dense_net(0), "batchensemble", ensemble_size=3, training_output=training_output,
                           alpha_initializer="random_sign")
    x = np.random.default_rng(2).normal(size=(2, 5)).astype("float32")
    members = numpy(r1.member_outputs(converted)(x)).astype(np.float64)  # (2, 3, 4)
    training = numpy(converted(x, training=True))
    if training_output == "members":  # K*B rows, block order
        np.testing.assert_allclose(training, members.transpose(1, 0, 2).reshape(6, 4), atol=1e-6)
    else:
        np.testing.assert_allclose(training, members.mean(1), atol=1e-6)


# -- 4. saving, exporting, joining ----------------------------------------------

SAVE_CASES = [(name, method) for name in cm.MODEL_NAMES for method in METHODS]


def _perturbed_conversion(originals, name, method):
    converted = cm.convert_at_one(originals(name), method, _ensemble_size(name))
    cm.perturb_converted(converted, seed=5)  # so a reload that re-initialises anything shows
    x = cm.inputs_for(name)
    expected = numpy(converted(x, training=False))
    assert _max_error(expected, originals(name)(x, training=False)) > 1e-3
    assert expected.max() < 0.9  # softmax not saturated: the comparison below means something
    return converted, x, expected


# Suite time: ResNet-50 .keras round trips run with -m slow (the default suite keeps the
# ResNet-50 unit-factor conversions and the small CNN / MLP / LSTM round trips).
@pytest.mark.parametrize(
    "name,method",
    [
        pytest.param(*case, marks=pytest.mark.slow) if case[0] == "resnet50" else case
        for case in SAVE_CASES
    ],
)
def test_keras_file_round_trip(originals, name, method, tmp_path):
    converted, x, expected = _perturbed_conversion(originals, name, method)
    path = str(tmp_path / "converted.keras")
    converted.save(path)
    restored = keras.saving.load_model(path)
    assert _max_error(restored(x, training=False), expected) <= TOLERANCE
    assert [v.name for v in restored.weights] == [v.name for v in converted.weights]
    for before, after in zip(converted.weights, restored.weights):
        np.testing.assert_array_equal(numpy(after), numpy(before))
    dropout_layers = cm.mc_dropout_layers(restored)
    assert len(dropout_layers) == len(cm.mc_dropout_layers(converted))
    assert all(layer.active is False for layer in dropout_layers)
    assert _max_error(r1.member_outputs(restored)(x), r1.member_outputs(converted)(x)) <= TOLERANCE


@TENSORFLOW_ONLY  # a SavedModel
@pytest.mark.parametrize("name,method", [case for case in SAVE_CASES if case[0] != "resnet50"])
def test_saved_model_round_trip(originals, name, method, tmp_path):
    import tensorflow as tf

    converted, x, expected = _perturbed_conversion(originals, name, method)
    path = str(tmp_path / "saved_model")
    converted.export(path, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(path)  # keep a reference: it owns the variables
    assert _max_error(loaded.serve(tf.constant(x)), expected) <= TOLERANCE


def test_mc_dropout_activity_survives_saving(originals, tmp_path):
    converted = r1.convert(originals("mlp"), "dropout", num_samples=4)
    (layer,) = cm.mc_dropout_layers(converted)
    assert layer.active is True
    path = str(tmp_path / "active.keras")
    converted.save(path)
    (restored_layer,) = cm.mc_dropout_layers(keras.saving.load_model(path))
    assert restored_layer.active is True and restored_layer.rate == pytest.approx(0.25)


@pytest.fixture(scope="module")
def joined_members():
    return [_dense_net(seed, name=f"member_net_{seed}") for seed in (11, 12, 13)]


def _joined_inputs_and_outputs(members):
    x = np.random.default_rng(3).normal(size=(2, 5)).astype("float32")
    outputs = np.stack([numpy(m(x, training=False)).astype(np.float64) for m in members])
    assert _max_error(outputs[0], outputs[1]) > 1e-2  # independently initialised
    return x, outputs


def test_join_ensemble_averages_members(joined_members):
    x, outputs = _joined_inputs_and_outputs(joined_members)
    ensemble = r1.join_ensemble(joined_members)
    np.testing.assert_allclose(numpy(ensemble(x, training=False)), outputs.mean(0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), outputs.mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("training_output", ["members", "average"])
def test_join_ensemble_training_output(joined_members, training_output):
    x, outputs = _joined_inputs_and_outputs(joined_members)
    ensemble = r1.join_ensemble(joined_members, training_output=training_output)
    expected = outputs.reshape(6, 4) if training_output == "members" else outputs.mean(0)  # block order
    np.testing.assert_allclose(numpy(ensemble(x, training=True)), expected, atol=1e-6, rtol=0)


def test_join_ensemble_round_trips(joined_members, tmp_path):
    x, outputs = _joined_inputs_and_outputs(joined_members)
    ensemble = r1.join_ensemble(joined_members)
    path = str(tmp_path / "joined.keras")
    ensemble.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(restored(x, training=False)), outputs.mean(0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(numpy(restored(x, training=True)), outputs.reshape(6, 4), atol=1e-6, rtol=0)


@TENSORFLOW_ONLY  # a SavedModel
def test_join_ensemble_saved_model_round_trip(joined_members, tmp_path):
    import tensorflow as tf

    x, outputs = _joined_inputs_and_outputs(joined_members)
    ensemble = r1.join_ensemble(joined_members)
    export_path = str(tmp_path / "joined_saved_model")
    ensemble.export(export_path, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(export_path)
    np.testing.assert_allclose(numpy(loaded.serve(tf.constant(x))), outputs.mean(0), atol=1e-6, rtol=0)


def test_member_outputs_of_a_joined_ensemble(joined_members, tmp_path):
    """member_outputs[:, k] is member k, also after a reload."""
    x, outputs = _joined_inputs_and_outputs(joined_members)
    ensemble = r1.join_ensemble(joined_members)
    members = numpy(r1.member_outputs(ensemble)(x))
    for k in range(3):
        np.testing.assert_allclose(members[:, k], outputs[k], atol=1e-6, rtol=0)
    path = str(tmp_path / "joined.keras")
    ensemble.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        numpy(r1.member_outputs(restored)(x)), np.moveaxis(outputs, 0, 1), atol=1e-6, rtol=0
    )


def test_join_ensemble_of_sequential_models(originals):
    members = []
    for seed in (21, 22):
        members.append(cm.build("mlp", seed=seed))
    x = cm.inputs_for("mlp")
    outputs = np.stack([numpy(m(x, training=False)).astype(np.float64) for m in members])
    ensemble = r1.join_ensemble(members)
    np.testing.assert_allclose(numpy(ensemble(x)), outputs.mean(0), atol=1e-6, rtol=0)


def _numpy_batchensemble_mlp(core, x, k):
    """Member k of a converted BatchEnsemble MLP, in float64 NumPy."""
    activations = {
        "relu": lambda v: np.maximum(v, 0.0),
        "tanh": np.tanh,
        "softmax": lambda v: np.exp(v - v.max(-1, keepdims=True)) / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True),
    }
    h = x.astype(np.float64)
    for name, activation in (("hidden_a", "relu"), ("hidden_b", "tanh"), ("head", "softmax")):
        layer = core.get_layer(name)
        factors = {role: numpy(f.variable).astype(np.float64) for role, f in layer.member_factors.items()}
        kernel = numpy(layer.kernel).astype(np.float64)
        h = activations[activation](((h * factors["alpha"][k]) @ kernel) * factors["gamma"][k] + factors["bias"][k])
    return h


def test_member_outputs_of_a_converted_model_match_numpy(originals):
    converted = r1.convert(originals("mlp"), "batchensemble", ensemble_size=3)
    cm.perturb_converted(converted, seed=9)
    x = cm.inputs_for("mlp", batch_size=2)
    expected = np.stack([_numpy_batchensemble_mlp(_core(converted), x, k) for k in range(3)])
    assert _max_error(expected[0], expected[1]) > 1e-3
    np.testing.assert_allclose(
        numpy(r1.member_outputs(converted)(x)), np.moveaxis(expected, 0, 1), atol=1e-6, rtol=0
    )
    np.testing.assert_allclose(numpy(converted(x)), expected.mean(0), atol=1e-6, rtol=0)


# -- 5. bad inputs ---------------------------------------------------------------


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def _subclassed():
    model = _Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


def _nested():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner")
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Dense(2)(inner(x)), name="outer")


def _grouped():
    x = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(x)
    return keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(h)))


BAD_CONVERSIONS = {
    "subclassed model": (lambda: r1.convert(_subclassed(), "rank1", train_size=100), r"model must be a Sequential or functional"),
    "not a model": (lambda: r1.convert(keras.layers.Dense(2), "rank1", train_size=100), r"model must be a keras\.Model"),
    "unbuilt sequential": (lambda: r1.convert(keras.Sequential([keras.layers.Dense(2)]), "rank1", train_size=100), r"model is an unbuilt"),
    "nested model": (lambda: r1.convert(_nested(), "batchensemble"), r"model contains the nested model 'inner'"),
    "unknown method": (lambda: r1.convert(cm.build_mlp(), "mc_dropout"), r"method must be one of"),
    "ensemble_size 0": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, ensemble_size=0), r"ensemble_size"),
    "ensemble_size -1": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, ensemble_size=-1), r"ensemble_size"),
    "ensemble_size 1.5": (lambda: r1.convert(cm.build_mlp(), "batchensemble", ensemble_size=1.5), r"ensemble_size"),
    "num_samples 0": (lambda: r1.convert(cm.build_mlp(), "dropout", num_samples=0), r"num_samples"),
    "num_samples -2": (lambda: r1.convert(cm.build_mlp(), "dropout", num_samples=-2), r"num_samples"),
    "layers name": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, layers=["no_such_layer"]), r"layers entry 'no_such_layer'"),
    "layers class": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, layers=[keras.layers.LSTM]), r"layers entry .*LSTM"),
    "layers type": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, layers=[3]), r"layers entries"),
    "num_samples with rank1": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, num_samples=4), r"num_samples"),
    "num_samples with batchensemble": (
        lambda: r1.convert(cm.build_mlp(), "batchensemble", num_samples=4),
        r"num_samples",
    ),
    "dropout_rate with rank1": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, dropout_rate=0.1), r"dropout_rate"),
    "dropout_rate 1.5": (lambda: r1.convert(cm.build_mlp(), "dropout", dropout_rate=1.5), r"dropout_rate"),
    "batch_norm": (lambda: r1.convert(cm.build_cnn(), "rank1", train_size=100, batch_norm="per_example"), r"batch_norm"),
    "training_batch": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, training_batch="shuffle"), r"training_batch"),
    "training_output": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, training_output="mean"), r"training_output"),
    "grouped conv": (lambda: r1.convert(_grouped(), "batchensemble"), r"layers: 'grouped' is a grouped convolution"),
    "grouped conv by name": (
        lambda: r1.convert(_grouped(), "rank1", train_size=100, layers=["grouped"]),
        r"layers: 'grouped' is a grouped convolution",
    ),
    "unknown layer option": (lambda: r1.convert(cm.build_mlp(), "rank1", train_size=100, alpha_initialiser="ones"), r"alpha_initialiser"),
    "options with dropout": (lambda: r1.convert(cm.build_mlp(), "dropout", inference="mean"), r"inference"),
    "join nothing": (lambda: r1.join_ensemble([]), r"models"),
    "join mismatched inputs": (lambda: r1.join_ensemble([_dense_net(0), _dense_net(1, inputs=6)]), r"models\[1\]"),
    "join mismatched outputs": (lambda: r1.join_ensemble([_dense_net(0), _dense_net(1, outputs=3)]), r"models\[1\]"),
    "join subclassed": (lambda: r1.join_ensemble([_subclassed(), _subclassed()]), r"model must be a Sequential"),
    "join training_output": (
        lambda: r1.join_ensemble([_dense_net(0), _dense_net(1)], training_output="mean"),
        r"training_output",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONVERSIONS))
def test_bad_input_is_a_value_error_naming_the_argument(case):
    call, pattern = BAD_CONVERSIONS[case]
    with pytest.raises(ValueError, match=pattern):
        call()


def test_grouped_conv_left_out_of_layers_stays_plain():
    original = _grouped()
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 4)).astype("float32")
    converted = r1.convert(
        original, "batchensemble", layers=["head"], ensemble_size=2, output_type="regression",
        alpha_initializer="ones", gamma_initializer="ones",
    )
    assert r1.conversion_summary(original, converted).changed_layers == [("head", "Dense", "DenseBatchEnsemble")]
    grouped = _core(converted).get_layer("grouped")
    assert type(grouped) is keras.layers.Conv2D and grouped.groups == 2
    assert _max_error(converted(x), original(x)) <= TOLERANCE


# -- 6. layers= selection --------------------------------------------------------

SELECTIONS = [
    ("cnn", "batchensemble", ["conv_a", "head"], "shared", ["conv_a", "head"]),
    ("cnn", "rank1", [keras.layers.Conv2D], "shared", ["conv_a", "conv_b"]),
    ("cnn", "rank1", ["conv_b"], "per_member", ["conv_b"]),
    ("mlp", "batchensemble", [keras.layers.Dense], "per_member", ["hidden_a", "hidden_b", "head"]),
    ("mlp", "rank1", ["hidden_b", keras.layers.Dense], "per_member", ["hidden_a", "hidden_b", "head"]),
    ("mlp", "rank1", "hidden_b", "per_member", ["hidden_b"]),
    ("lstm", "rank1", [keras.layers.LSTM], "per_member", ["lstm"]),
    ("lstm", "batchensemble", ["head"], "per_member", ["head"]),
]


@pytest.mark.parametrize("name,method,layers,batch_norm,changed", SELECTIONS)
def test_layers_selects_by_name_and_class(originals, name, method, layers, batch_norm, changed):
    original = originals(name)
    converted = cm.convert_at_one(original, method, ENSEMBLE_SIZE, layers=layers, batch_norm=batch_norm)
    summary = r1.conversion_summary(original, converted)
    assert [entry[0] for entry in summary.changed_layers] == changed
    trainable, non_trainable = expected_overhead(original, method, ENSEMBLE_SIZE, batch_norm, layers=changed)
    assert summary.trainable_parameters_after - summary.trainable_parameters_before == trainable
    core = _core(converted)
    for layer in original.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        clone = core.get_layer(layer.name)
        if layer.name in changed:
            assert type(clone) is not type(layer)
            continue
        # Left alone: the same plain class, the original's weights, one copy for all members.
        assert type(clone) is type(layer), layer.name
        assert len(clone.weights) == len(layer.weights)
        for before, after in zip(layer.weights, clone.weights):
            np.testing.assert_array_equal(numpy(after), numpy(before))
    x = cm.inputs_for(name)
    assert _max_error(converted(x, training=False), original(x, training=False)) <= TOLERANCE


# -- 7. MC dropout ---------------------------------------------------------------


def test_mc_dropout_prediction_is_the_mean_of_different_masks():
    """Dropout(0.5) -> Dense(1, ones): one pass counts the kept inputs, times 1/(1 - rate)."""
    features, rate, samples = 40, 0.5, 4
    x_in = keras.Input((features,))
    h = keras.layers.Dropout(rate, name="drop")(x_in)
    y = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", name="sum")(h)
    original = keras.Model(x_in, y)
    converted = r1.convert(original, "dropout", num_samples=samples, output_type="regression")
    x = np.ones((2, features), "float32")

    # Member rows and the prediction of one and the same forward pass.
    average = converted.get_layer("average_0")
    probe = keras.Model(converted.input, [average.input, average.output])
    rows, prediction = (numpy(t).astype(np.float64) for t in probe(x))
    assert rows.shape == (samples * 2, 1)
    kept = rows * (1.0 - rate)  # kept inputs per row: integers in [0, features]
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-4)
    assert np.all((kept >= 0) & (kept <= features))
    np.testing.assert_allclose(prediction, rows.reshape(samples, 2, 1).mean(0), atol=1e-5)
    assert len(np.unique(np.round(kept[:, 0]))) > 1  # different masks

    # Each call draws new masks; the average is not a single mask's count.
    first, second = numpy(converted(x)), numpy(converted(x))
    assert _max_error(first, second) > 1e-3
    assert _max_error(converted.predict(x, verbose=0), converted.predict(x, verbose=0)) > 1e-3
    members = numpy(r1.member_outputs(converted)(x))[..., 0]  # (2, samples)
    assert len(np.unique(members[0])) > 1
    # With the MCDropout switched off it is the original (every input kept).
    cm.deactivate_mc_dropout(converted)
    np.testing.assert_allclose(numpy(converted(x)), np.full((2, 1), features), atol=1e-4)


def test_dropout_rate_inserts_mc_dropout_after_all_but_the_output_layer():
    keras.utils.set_random_seed(0)
    original = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="a"),
            keras.layers.Dense(8, activation="relu", name="b"),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )
    converted = r1.convert(original, "dropout", dropout_rate=0.4, num_samples=2)
    core = _core(converted)
    assert [layer.name for layer in core.layers[1:]] == ["a", "a_mc_dropout", "b", "b_mc_dropout", "head"]
    for name in ("a", "b"):
        dropout = core.get_layer(f"{name}_mc_dropout")
        assert isinstance(dropout, MCDropout) and dropout.active and dropout.rate == pytest.approx(0.4)
        assert dropout.input is core.get_layer(name).output
    x = cm.inputs_for("mlp")
    assert _max_error(converted(x), converted(x)) > 1e-4
    cm.deactivate_mc_dropout(converted)
    assert _max_error(converted(x), original(x)) <= TOLERANCE

    # With layers=, dropout goes after exactly the chosen layers (the output layer too, if chosen).
    chosen = r1.convert(original, "dropout", dropout_rate=0.4, layers=["b", "head"])
    names = [layer.name for layer in _core(chosen).layers[1:]]
    assert names == ["a", "b", "b_mc_dropout", "head", "head_mc_dropout"]

    # On a CNN: after every Conv2D, not after the Dense output layer.
    cnn = cm.build_cnn()
    converted_cnn = r1.convert(cnn, "dropout", dropout_rate=0.1)
    inserted = sorted(layer.name for layer in cm.mc_dropout_layers(converted_cnn))
    assert inserted == ["conv_a_mc_dropout", "conv_b_mc_dropout", "drop"]


# -- ResNet-50 SavedModel round trips (exported by the background process) -----------


@TENSORFLOW_ONLY  # SavedModels
@pytest.mark.parametrize("method", cm.RESNET_EXPORT_METHODS)
def test_resnet50_saved_model_round_trip(resnet_exports, originals, method):
    process, out_dir = resnet_exports
    returncode = process.wait(timeout=600)
    log = (out_dir / "log.txt").read_text()
    assert returncode == 0, log[-3000:]
    results = np.load(out_dir / f"{method}.npz")
    x = cm.inputs_for("resnet50")
    # The background process built the same original as this one.
    assert _max_error(results["original"], originals("resnet50")(x, training=False)) <= TOLERANCE
    assert _max_error(results["expected"], results["original"]) > 1e-3  # perturbed conversion
    assert results["expected"].max() < 0.9  # not saturated
    assert (int(results["mc_dropout"]) > 0) == (method == "dropout")
    error = _max_error(results["served"], results["expected"])
    print(f"\n[saved model] resnet50 {method}: max abs error {error:.2e}")
    assert error <= TOLERANCE


def test_set_mc_dropout_switches_sampling_and_resets_cached_functions():
    import rank1_keras as r1

    inputs = keras.Input((6,))
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(16, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    converted = r1.convert(model, "dropout", num_samples=4)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    first, second = converted.predict(x, verbose=0), converted.predict(x, verbose=0)
    assert np.abs(first - second).max() > 1e-4  # sampling: two predictions differ
    r1.set_mc_dropout(converted, False)
    np.testing.assert_allclose(converted.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    r1.set_mc_dropout(converted, True)
    assert np.abs(converted.predict(x, verbose=0) - model.predict(x, verbose=0)).max() > 1e-4


def test_a_conversion_that_would_change_no_layer_names_the_layers_it_found():
    inputs = keras.Input((6, 3))
    x = keras.layers.GRU(4, name="gru")(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    model = keras.Model(inputs, keras.layers.Softmax()(x))
    # GRU and LayerNormalization have no ensemble version: K copies of one network is not an ensemble.
    with pytest.raises(
        ValueError,
        match=r"method='batchensemble'\) would change no layer of .*'gru' \(GRU\), 'norm' \(LayerNormalization\)\].*"
        r"converts \['Conv1D', 'Conv2D', 'Dense', 'LSTM', 'BatchNormalization \(per member\)'\]",
    ):
        r1.convert(model, "batchensemble", ensemble_size=2)
    # A selection of layers that have no ensemble version changes nothing either.
    dense_model = keras.Sequential([keras.Input((3,)), keras.layers.LayerNormalization(name="norm"),
                                    keras.layers.Dense(2, activation="softmax", name="head")])
    with pytest.raises(ValueError, match=r"would change no layer .*'norm' \(LayerNormalization\), 'head' \(Dense\)"):
        r1.convert(dense_model, "rank1", ensemble_size=2, train_size=10, layers=["norm"])
    assert len(r1.conversion_summary(dense_model, r1.convert(dense_model, "rank1", ensemble_size=2, train_size=10)).changed_layers) == 1
