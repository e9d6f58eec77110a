"""Every method from one plain architecture (`rank1_keras.methods.settings`)."""

import dataclasses

import keras
import numpy as np
import pytest

from rank1_keras.callbacks import rank1_layers
from rank1_keras.convert import convert
from rank1_keras.convert import methods as convertible_methods
from rank1_keras.layers.dropout import MCDropout
from rank1_keras.methods import MethodSettings, build_method_models, inference_model, method_names
from rank1_keras.methods import MethodSpec, method_spec, register_method, unregister_method
from rank1_keras.models import small_cnn
from rank1_keras.probability import initializers, regularizers
from tests.backend_utils import numpy

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _plain():
    return small_cnn((12, 12, 1), 3)


def _factors(model):
    return [factor for layer in rank1_layers(model) for factor in layer.member_factors.values() if factor.name != "bias"]


def test_rank1_gets_the_prior_and_posterior_the_settings_name():
    settings = MethodSettings("rank1", ensemble_size=3, train_size=500, prior_mean=1.0, prior_stddev=0.2,
                              random_sign_init=0.75)
    (model,) = build_method_models(_plain, settings)
    factors = _factors(model)
    assert len(factors) == 2 * 4  # r and s of 2 convolutions and 2 dense layers
    for factor in factors:
        assert isinstance(factor.initializer, initializers.TrainableNormal)
        assert isinstance(factor.regularizer, regularizers.NormalKLDivergence)
        assert (factor.regularizer.mean, factor.regularizer.stddev) == (1.0, 0.2)
        assert factor.regularizer.scale_factor == pytest.approx(1 / 500)
    means = np.concatenate([np.ravel(numpy(v)) for layer in rank1_layers(model) for v in layer.posterior_variables
                            if v.path.endswith("_loc")])
    assert set(np.unique(means)) == {-1.0, 1.0}  # random-sign init
    assert np.mean(means > 0) == pytest.approx(0.75, abs=0.08)


def test_cauchy_prior_and_posterior():
    settings = MethodSettings("rank1", prior="cauchy", alpha_initializer="trainable_cauchy",
                              gamma_initializer="trainable_cauchy", prior_stddev=0.3, train_size=10)
    (model,) = build_method_models(_plain, settings)
    for factor in _factors(model):
        assert isinstance(factor.initializer, initializers.TrainableCauchy)
        assert isinstance(factor.regularizer, regularizers.CauchyKLDivergence)
        assert factor.regularizer.scale == 0.3


def test_batchensemble_has_point_factors_without_kl():
    (model,) = build_method_models(_plain, MethodSettings("batchensemble", ensemble_size=2, random_sign_init=-0.5))
    factors = _factors(model)
    assert factors and all(not f.is_stochastic and f.regularizer is None for f in factors)
    model(np.zeros((2, 12, 12, 1), "float32"), training=True)
    assert model.losses == []  # no KL, and no decay on the factors


def test_ensemble_members_are_independent_and_joined_by_averaging():
    keras.utils.set_random_seed(0)
    models = build_method_models(_plain, MethodSettings("ensemble", ensemble_size=3))
    assert len(models) == 3
    first_kernels = [numpy(m.layers[1].kernel) for m in models]
    assert not np.allclose(first_kernels[0], first_kernels[1])
    x = np.random.default_rng(0).uniform(size=(5, 12, 12, 1)).astype("float32")
    expected = np.mean([m.predict(x, verbose=0) for m in models], axis=0)
    np.testing.assert_allclose(inference_model(models).predict(x, verbose=0), expected, atol=1e-6)


def test_dropout_inserts_mc_dropout_only_when_the_model_has_none():
    (inserted,) = build_method_models(_plain, MethodSettings("dropout", dropout_rate=0.3))
    layers = [layer for layer in inserted._flatten_layers() if isinstance(layer, MCDropout)]
    assert [layer.rate for layer in layers] == [0.3, 0.3, 0.3]  # after 2 convs and the hidden dense layer
    (kept,) = build_method_models(lambda: small_cnn((12, 12, 1), 3, dropout_rate=0.4), MethodSettings("dropout"))
    assert [layer.rate for layer in kept._flatten_layers() if isinstance(layer, MCDropout)] == [0.4]


def test_members_and_samples_per_method():
    # The ensembles default to tiled batches (K member rows per example); split batches give one.
    assert MethodSettings("rank1", ensemble_size=4, num_eval_samples=3).members == 4
    assert MethodSettings("rank1", ensemble_size=4, training_batch="split").members == 1
    names = ("deterministic", "dropout", "ensemble", "batchensemble", "rank1", "lpbnn", "packed")
    assert [MethodSettings(m).effective_training_batch for m in names] == [
        "tile", "split", "tile", "tile", "tile", "tile", "tile"]
    # Unset, it follows the method (a replaced method takes its own default); `resolved()` records it.
    rank1 = dataclasses.replace(MethodSettings("dropout"), method="rank1")
    assert rank1.effective_training_batch == "tile" and rank1.resolved().training_batch == "tile"
    assert MethodSettings("dropout").resolved().training_batch == "split"
    assert MethodSettings("rank1", training_batch="split").resolved().training_batch == "split"
    assert MethodSettings("rank1", ensemble_size=4, num_eval_samples=3).eval_samples == 3
    assert MethodSettings("batchensemble", ensemble_size=4, num_eval_samples=3).eval_samples == 1
    assert MethodSettings("dropout", num_eval_samples=3).members == 1
    assert MethodSettings("ensemble", ensemble_size=4).members == 1  # members train one after another
    assert [MethodSettings(m, ensemble_size=4).ensemble_members for m in ("deterministic", "dropout", "ensemble",
            "batchensemble", "rank1")] == [1, 1, 4, 4, 4]
    assert MethodSettings("rank1", ensemble_size=4, training_batch="split").ensemble_members == 4


class _TwoPlainModels(MethodSpec):
    """A method of one's own, in a few lines: two plain models, averaged like a deep ensemble."""

    name = "test_only_pair"
    separate_models = True

    def size(self, settings):
        return 2

    def build(self, build_plain, settings):
        return [build_plain(), build_plain()]


def test_a_registered_method_is_one_spec_every_part_of_the_library_reads():
    register_method(_TwoPlainModels())
    try:
        assert "test_only_pair" in method_names()
        settings = MethodSettings("test_only_pair", ensemble_size=5)
        assert (settings.size, settings.ensemble_members, settings.members, settings.eval_samples) == (2, 2, 1, 1)
        models = build_method_models(_plain, settings)
        assert len(models) == 2 and models[0].output_shape == (None, 3)
        joined = inference_model(models)
        x = np.random.default_rng(0).normal(size=(5, 12, 12, 1)).astype("float32")
        expected = (models[0].predict(x, verbose=0) + models[1].predict(x, verbose=0)) / 2
        np.testing.assert_allclose(joined.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="method must be one of"):
            convert(_plain(), "test_only_pair")  # no conversion: convert refuses it by name
    finally:
        unregister_method("test_only_pair")
    with pytest.raises(ValueError, match="method must be one of .*test_only_pair"):
        MethodSettings("test_only_pair")


def test_every_builtin_method_has_one_spec_in_its_own_file():
    for name in method_names():
        spec = method_spec(name)
        assert spec.name == name
        module = type(spec).__module__
        assert module.startswith("rank1_keras.methods."), (name, module)
    converting = {name for name in method_names() if method_spec(name).conversion is not None}
    assert set(convertible_methods()) == converting
    assert {"deterministic", "ensemble"}.isdisjoint(converting)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"method": "bayes"}, "method must be one of"),
        ({"prior": "laplace"}, "prior must be one of"),
        ({"alpha_initializer": "zeros"}, "alpha_initializer must be one of"),
        ({"random_sign_init": 2.0}, "random_sign_init must be in"),
        ({"ensemble_size": 0}, "ensemble_size"),
        ({"training_batch": "interleave"}, "training_batch must be one of"),
        ({"num_eval_samples": 0}, "num_eval_samples"),
    ],
)
def test_bad_settings_name_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        MethodSettings(**arguments)


def test_lpbnn_latent_inference_is_selectable():
    from rank1_keras.layers.latent_posterior import LatentPosteriorMixin

    x = np.random.default_rng(0).uniform(size=(5, 12, 12, 1)).astype("float32")
    outputs = {}
    for mode in ("mean", "sample"):
        keras.utils.set_random_seed(0)
        settings = MethodSettings("lpbnn", ensemble_size=2, latent_inference=mode, num_eval_samples=3, train_size=10)
        (model,) = build_method_models(_plain, settings)
        layers = [layer for layer in model._flatten_layers() if isinstance(layer, LatentPosteriorMixin)]
        assert layers and all(layer.inference == mode for layer in layers)
        assert settings.eval_samples == (3 if mode == "sample" else 1)
        outputs[mode] = [numpy(model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*outputs["mean"])  # z = mu: one deterministic pass
    assert np.abs(outputs["sample"][0] - outputs["sample"][1]).max() > 1e-6  # fresh latent draws
    with pytest.raises(ValueError, match="latent_inference"):
        MethodSettings("lpbnn", latent_inference="median")


def _task_options(**options):
    # The training package (tf.data pipelines) is TensorFlow-only: imported where it is used.
    from rank1_keras.tensorflow.training.tasks import TaskOptions

    return TaskOptions(**options)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: MethodSettings(method="dropout", dropout_rate=1.0), r"dropout_rate must be in \[0, 1\)"),
        pytest.param(lambda: _task_options(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\)",
                     marks=pytest.mark.backends("tensorflow")),
        pytest.param(lambda: _task_options(train_examples=-5), r"train_examples must be a non-negative integer",
                     marks=pytest.mark.backends("tensorflow")),
        pytest.param(lambda: _task_options(test_examples=-1), r"test_examples must be a non-negative integer",
                     marks=pytest.mark.backends("tensorflow")),
        pytest.param(lambda: _task_options(shift_examples=-3), r"shift_examples must be a non-negative integer",
                     marks=pytest.mark.backends("tensorflow")),
    ],
)
def test_meaningless_values_are_refused(make, pattern):
    # --dropout_rate=1.0 trained at chance and --train_examples=-5 meant "all but the last 5".
    with pytest.raises(ValueError, match=pattern):
        make()
