"""Member chains: a converted network run one member at a time at inference equals its tiled form.

`MemberChains` runs member k's block of rows through the graph with every
layer set to member k (folded kernels W o r_k s_k^T, member k's biases and
batch-norm statistics). Each case builds the model a user would (conv, batch
norm, pooling, dense head), converts it, gives every per-member table and
statistic its own values, and compares each member's rows (`member_outputs`)
between chains forced on and the tiled form, plus `evaluate`'s loss (the KL
terms counted once), `.keras` round trips, and which configurations refuse
chains (factors drawn at inference, recurrent cells, Packed-Ensembles).
"""

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.models.ensemble import MemberChains
from tests.backend_utils import numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

K = 3
BATCH = 5
CASES = {
    "batchensemble": dict(method="batchensemble"),
    "batchensemble_additive": dict(method="batchensemble", use_additive_perturbation=True),
    "rank1_mean": dict(method="rank1", train_size=100, inference="mean"),
    "lpbnn_mean": dict(method="lpbnn", inference="mean"),
}


def user_model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(5, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, activation="tanh")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def core_of(converted):
    core = next(layer for layer in converted.layers if isinstance(layer, MemberChains))
    return core


def converted_model(case, seed=0):
    keras.utils.set_random_seed(seed)
    options = dict(CASES[case])
    method = options.pop("method")
    converted = r1.convert(user_model(), method, ensemble_size=K, **options)
    return with_distinct_members(converted, seed + 1)


def with_distinct_members(converted, seed):
    """Every weight perturbed: members differ in factors, biases, statistics and perturbations."""
    rng = np.random.RandomState(seed)
    weights = []
    for variable in converted.weights:
        value = numpy(variable)
        if "moving_variance" in variable.path:
            weights.append(np.abs(value) * rng.uniform(0.5, 1.5, size=value.shape) + 0.1)
        else:
            weights.append(value * rng.uniform(0.8, 1.2, size=value.shape) + 0.05 * rng.standard_normal(value.shape))
    converted.set_weights(weights)
    return converted


def member_rows(converted, x, chains_from_batch):
    core_of(converted).chains_from_batch = chains_from_batch
    return numpy(r1.member_outputs(converted)(x, training=False))


@pytest.mark.parametrize("case", sorted(CASES))
def test_chains_give_each_member_its_tiled_rows(case):
    converted = converted_model(case)
    core = core_of(converted)
    assert core.chain_layers() is not None, "every layer of this model supports member chains"
    x = np.random.RandomState(2).standard_normal((BATCH, 8, 8, 2)).astype("float32")
    tiled = member_rows(converted, x, None)
    chains = member_rows(converted, x, 1)
    # Members differ (or equality below would not say which member a row got).
    assert tiled.shape == (BATCH, K, 3)  # (examples, members, classes)
    assert np.abs(tiled[:, 0] - tiled[:, 1]).max() > 1e-3
    np.testing.assert_allclose(chains, tiled, rtol=1e-5, atol=1e-6)
    averaged = numpy(converted(x, training=False))
    np.testing.assert_allclose(averaged, tiled.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_chains_follow_the_batch_size_threshold():
    converted = converted_model("batchensemble")
    core = core_of(converted)
    core.chains_from_batch = 4
    assert core._uses_chains(keras.ops.zeros((K * 4, 8, 8, 2)), K)
    assert not core._uses_chains(keras.ops.zeros((K * 3, 8, 8, 2)), K)
    core.chains_from_batch = None
    assert not core._uses_chains(keras.ops.zeros((K * 100, 8, 8, 2)), K)
    with pytest.raises(ValueError, match="chains_from_batch must be a positive integer"):
        core.chains_from_batch = 0


def test_evaluate_counts_the_kl_once():
    converted = converted_model("rank1_mean")
    converted.compile(loss=r1.AverageNLL(K))
    rng = np.random.RandomState(3)
    x = rng.standard_normal((BATCH, 8, 8, 2)).astype("float32")
    y = rng.randint(0, 3, size=BATCH)
    core = core_of(converted)
    core.chains_from_batch = None
    tiled = converted.evaluate(x, y, batch_size=BATCH, verbose=0)
    core.chains_from_batch = 1
    chains = converted.evaluate(x, y, batch_size=BATCH, verbose=0)
    converted(x, training=False)  # eagerly: the losses of one call
    kl = sum(float(numpy(term)) for term in converted.losses)
    assert kl > 1e-4, "the rank-1 model carries a KL term"
    np.testing.assert_allclose(chains, tiled, rtol=1e-5)


@pytest.mark.parametrize(
    "method, options",
    [
        ("rank1", dict(train_size=100)),  # inference="sample": factors drawn per call
        ("lpbnn", dict(inference="sample")),  # z drawn at inference
        ("packed", dict()),  # grouped layers: no folded kernel
    ],
)
def test_layers_that_draw_or_cannot_fold_keep_the_tiled_form(method, options):
    keras.utils.set_random_seed(0)
    converted = r1.convert(user_model(), method, ensemble_size=K, **options)
    assert core_of(converted).chain_layers() is None


def test_recurrent_cells_keep_the_tiled_form():
    inputs = keras.Input((4, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.LSTM(5)(inputs))
    converted = r1.convert(keras.Model(inputs, outputs), "batchensemble", ensemble_size=K)
    assert core_of(converted).chain_layers() is None


def test_saved_model_keeps_member_chains(tmp_path):
    converted = converted_model("batchensemble")
    x = np.random.RandomState(4).standard_normal((20, 8, 8, 2)).astype("float32")
    expected = numpy(converted.predict(x, verbose=0))
    path = tmp_path / "model.keras"
    converted.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(core_of(loaded), MemberChains)
    np.testing.assert_allclose(numpy(loaded.predict(x, verbose=0)), expected, rtol=1e-5, atol=1e-6)


TRAINING_CASES = {
    "batchensemble": dict(method="batchensemble"),
    "batchensemble_split": dict(method="batchensemble", training_batch="split"),
    "rank1_sampled": dict(method="rank1", train_size=100),  # factors drawn in every training step
    "lpbnn": dict(method="lpbnn"),
}


def trained_weights(case, chains_in_training, batch):
    """(weights before, weights after, losses) of two SGD epochs of a user's `fit`, with chains in
    training or the tiled form."""
    keras.utils.set_random_seed(0)
    options = dict(TRAINING_CASES[case])
    method = options.pop("method")
    converted = r1.convert(user_model(), method, ensemble_size=K, **options)
    core = core_of(converted)
    assert core.chain_layers(training=True) is not None
    core.chains_in_training = chains_in_training
    rng = np.random.RandomState(5)
    x = rng.standard_normal((batch, 8, 8, 2)).astype("float32")
    y = rng.randint(0, 3, size=batch)
    loss = "sparse_categorical_crossentropy" if options.get("training_batch") == "split" else r1.AverageNLL(K)
    converted.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    before = [numpy(v) for v in converted.weights]
    history = converted.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
    return before, [numpy(v) for v in converted.weights], history.history["loss"]


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_chains_in_training_take_the_tiled_forms_steps(case):
    """Same draws, batch statistics per member, KL and VAE terms once: the same losses and weights."""
    batch = 7 if case.endswith("split") else BATCH  # a split batch of 7 rows: member blocks of 3, 2 and 2
    before, tiled_weights, tiled_losses = trained_weights(case, False, batch)
    _, chained_weights, chained_losses = trained_weights(case, True, batch)
    np.testing.assert_allclose(chained_losses, tiled_losses, rtol=1e-5)
    for chained, tiled in zip(chained_weights, tiled_weights):
        np.testing.assert_allclose(chained, tiled, rtol=1e-4, atol=1e-5)
    # The steps moved the weights (the equality above is not of untouched values).
    assert max(np.abs(after - start).max() for after, start in zip(tiled_weights, before)) > 1e-3


def test_training_chains_need_a_row_per_member():
    converted = converted_model("batchensemble")
    core = core_of(converted)
    assert core._uses_chains(keras.ops.zeros((K, 8, 8, 2)), K, training=True)
    assert not core._uses_chains(keras.ops.zeros((K - 1, 8, 8, 2)), K, training=True)
    core.chains_in_training = False
    assert not core._uses_chains(keras.ops.zeros((K * 10, 8, 8, 2)), K, training=True)
