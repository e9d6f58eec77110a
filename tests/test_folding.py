"""`fold_members`: a converted ensemble served as K plain Keras networks with its members' folded kernels.

Each case builds the model a user would, converts it, gives every per-member
table, statistic and perturbation its own values (members differ), folds it
and compares with the converted model: the averaged answer, each member's
rows (`member_outputs`), at one example and at an odd batch. The folded
members hold only Keras' own layers, K copies of the original's parameters,
and none of the converted model's variables (a snapshot). Layers that cannot
fold are refused by name, with the reason.
"""

import keras
import numpy as np
import pytest

import rank1_keras as r1
from rank1_keras.convert import member_output_types
from rank1_keras.layers import GaussianParameters
from tests.backend_utils import numpy
from tests.test_member_chains import user_model, with_distinct_members

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

K = 3
CASES = {
    "batchensemble": dict(method="batchensemble"),
    "batchensemble_additive": dict(method="batchensemble", use_additive_perturbation=True),
    "rank1_mean": dict(method="rank1", train_size=100, inference="mean"),
    "lpbnn_mean": dict(method="lpbnn", inference="mean"),
    "bella": dict(method="bella", rank=2),
}


def sequence_regressor():
    """Causal Conv1D features, pooled, and a Gaussian head: the mixture's mean and scale are averaged."""
    inputs = keras.Input((12, 2))
    x = keras.layers.Conv1D(4, 3, padding="causal", activation="relu")(inputs)
    x = keras.layers.Conv1D(4, 2, dilation_rate=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, GaussianParameters()(keras.layers.Dense(2)(x)))


def converted_model(case, builder=user_model, seed=0):
    keras.utils.set_random_seed(seed)
    options = dict(CASES[case])
    method = options.pop("method")
    original = builder()
    return original, with_distinct_members(r1.convert(original, method, ensemble_size=K, **options), seed + 1)


def member_networks(folded):
    return [layer for layer in folded.layers if isinstance(layer, keras.Model)]


def assert_same_answers(converted, folded, x):
    np.testing.assert_allclose(numpy(folded(x, training=False)), numpy(converted(x, training=False)), rtol=1e-5, atol=1e-5)
    members = numpy(r1.member_outputs(folded)(x, training=False))
    np.testing.assert_allclose(members, numpy(r1.member_outputs(converted)(x, training=False)), rtol=1e-5, atol=1e-5)
    return members


@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_members_answer_as_the_converted_model(case):
    original, converted = converted_model(case)
    folded = r1.fold_members(converted)
    x = np.random.RandomState(2).standard_normal((5, 8, 8, 2)).astype("float32")
    members = assert_same_answers(converted, folded, x)
    assert_same_answers(converted, folded, x[:1])
    # Members differ, each a plain Keras network with the original's parameter count.
    assert np.abs(members[:, 0] - members[:, 1]).max() > 1e-3
    networks = member_networks(folded)
    assert len(networks) == K
    for network in networks:
        assert {type(layer).__module__.split(".")[0] for layer in network.layers} == {"keras"}
        assert network.count_params() == original.count_params()
    assert folded.count_params() == K * original.count_params()
    # A snapshot: it holds copies, never the converted model's variables.
    assert not {id(v) for v in folded.weights} & {id(v) for v in converted.weights}


def test_conv1d_causal_and_gaussian_heads_fold():
    _, converted = converted_model("batchensemble", sequence_regressor)
    folded = r1.fold_members(converted)
    assert member_output_types(folded) == ["gaussian"]
    x = np.random.RandomState(3).standard_normal((4, 12, 2)).astype("float32")
    assert_same_answers(converted, folded, x)


def test_a_saved_conversion_folds_and_the_folded_model_round_trips(tmp_path):
    _, converted = converted_model("rank1_mean")
    converted.save(tmp_path / "converted.keras")
    loaded = keras.saving.load_model(tmp_path / "converted.keras")
    folded = r1.fold_members(loaded, name="served")
    assert folded.name == "served"
    x = np.random.RandomState(4).standard_normal((3, 8, 8, 2)).astype("float32")
    assert_same_answers(converted, folded, x)
    folded.save(tmp_path / "folded.keras")
    reloaded = keras.saving.load_model(tmp_path / "folded.keras")
    np.testing.assert_allclose(numpy(reloaded(x)), numpy(folded(x)), rtol=1e-6, atol=1e-6)


def lstm_classifier():
    inputs = keras.Input((5, 3))
    x = keras.layers.LSTM(4)(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def test_layers_that_cannot_fold_are_named_with_the_reason():
    keras.utils.set_random_seed(0)
    sampled = r1.convert(user_model(), "rank1", ensemble_size=K, train_size=100)
    with pytest.raises(ValueError, match=r"Layer 'conv2d.*cannot be folded: it draws its factors at inference.*inference='mean'"):
        r1.fold_members(sampled)
    recurrent = r1.convert(lstm_classifier(), "batchensemble", ensemble_size=K)
    with pytest.raises(ValueError, match=r"cannot be folded: LSTMCellBatchEnsemble has no plain Keras form"):
        r1.fold_members(recurrent)
    joined = r1.join_ensemble([user_model() for _ in range(2)])
    with pytest.raises(ValueError, match=r"converted must come from rank1_keras.convert"):
        r1.fold_members(joined)
    with pytest.raises(ValueError, match=r"converted must come from rank1_keras.convert"):
        r1.fold_members(user_model())
    dropout = r1.convert(user_model(), "dropout", num_samples=K, dropout_rate=0.1)
    with pytest.raises(ValueError, match=r"no per-member layer to fold"):
        r1.fold_members(dropout)


@pytest.mark.backends("tensorflow")
def test_the_folded_model_traces_to_the_operations_of_a_joined_deep_ensemble():
    import collections

    import tensorflow as tf

    original, converted = converted_model("batchensemble")
    joined = r1.join_ensemble([keras.models.clone_model(original) for _ in range(K)])

    def operations(model):
        traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(
            tf.TensorSpec((None, 8, 8, 2), tf.float32)
        )
        return collections.Counter(op.type for op in traced.graph.get_operations())

    folded = operations(r1.fold_members(converted))
    assert folded == operations(joined)
    # The converted model's own member chains (a batch size known only when the graph runs takes
    # them) fold each layer's K kernels once and slice by unstacking: few operations beyond the
    # joined graph's (they were 3.7 times as many before, one fold and gather per member and layer).
    assert sum(operations(converted).values()) <= 1.5 * sum(folded.values())
