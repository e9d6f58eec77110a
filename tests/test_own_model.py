"""The path most users take: their own Keras model, `convert` with the defaults, `fit`.

Each test builds the model a new user would build on a small real data set
that ships with scikit-learn, and checks what the result means: members
differ, the KL is the closed form / N, member k's rows are member k's,
logits and probabilities models give the same ensemble.
"""

import numpy as np
import pytest
import keras
from sklearn.datasets import load_diabetes, load_iris

import rank1_keras as r1
from rank1_keras.layers import GaussianParameters
from tests.backend_utils import numpy

# On JAX and PyTorch `fit` runs compiled (jit): the KL terms must reach the loss there too.
# TensorFlow only: SavedModel export and the (tf.data) training package, marked per test below.
pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
TENSORFLOW_ONLY = pytest.mark.backends("tensorflow")

K = 4


def _iris():
    x, y = load_iris(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    return x, y.astype("int32")


def _classifier(final_activation="softmax"):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation=final_activation)(hidden))


def _core(converted):
    """The converted layers' model inside a `convert` result."""
    return next(layer for layer in converted.layers if layer.name.endswith("_members"))


def _members(converted, x, batch_size=32):
    return r1.member_outputs(converted).predict(x, batch_size=batch_size, verbose=0)  # (N, K, C)


def _disagreement(members):
    classes = members.argmax(-1)
    pairs = [(i, j) for i in range(members.shape[1]) for j in range(i + 1, members.shape[1])]
    return float(np.mean([np.mean(classes[:, i] != classes[:, j]) for i, j in pairs]))


METHOD_OPTIONS = {
    "batchensemble": {},
    "rank1": {"train_size": 150},
    "lpbnn": {},
    "bella": {},
}


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_default_conversion_trains_members_that_differ(method):
    x, y = _iris()
    converted = r1.convert(_classifier(), method, ensemble_size=K, **METHOD_OPTIONS[method])
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(K))
    converted.fit(x, y, epochs=30, batch_size=32, verbose=0)
    members = _members(converted, x)
    spread = np.abs(members - members[:, :1]).max()
    assert spread > 0.05, f"{method}: members stayed copies of one network (max |p_k - p_0| = {spread:.2g})"
    accuracy = np.mean(members.mean(1).argmax(-1) == y)
    assert accuracy > 0.8, f"{method}: the ensemble did not learn iris (accuracy {accuracy:.3f})"


def test_batchensemble_with_ones_factors_is_k_copies_on_tiled_batches():
    # Why the factors default to N(1, 0.5^2) draws: on tiled batches (the default) factors at
    # one give every member the same gradient, so the members never part.
    x, y = _iris()
    converted = r1.convert(_classifier(), "batchensemble", K, alpha_initializer="ones", gamma_initializer="ones")
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(K))
    converted.fit(x, y, epochs=5, batch_size=32, verbose=0)
    members = _members(converted, x)
    np.testing.assert_allclose(members, np.repeat(members[:, :1], K, axis=1), atol=1e-6)
    # A split batch gives each member its own examples, so even factors at one part.
    converted = r1.convert(_classifier(), "batchensemble", K, alpha_initializer="ones", gamma_initializer="ones",
                           training_batch="split")
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(K))
    converted.fit(x, y, epochs=5, batch_size=32, verbose=0)
    members = _members(converted, x)
    assert np.abs(members - members[:, :1]).max() > 1e-3


def _factor_tables(converted):
    layers = [layer for layer in _core(converted).layers if hasattr(layer, "member_factors")]
    assert len(layers) == 2
    return [numpy(layer.member_factors[name].variable) for layer in layers for name in ("alpha", "gamma")]


def test_default_factors_are_normal_one_half_for_every_batchensemble_layer():
    # The measured default (docs/ensemble_gap.md): N(1, 0.5^2), the rank-1 means' start.
    keras.utils.set_random_seed(3)
    tables = _factor_tables(r1.convert(_classifier(), "batchensemble", K))
    pooled = np.concatenate([table.ravel() for table in tables])  # 4 x (4 + 32 + 32 + 3) = 284 draws
    # 5 standard errors of the mean (0.03) and of the stddev (0.021).
    assert abs(pooled.mean() - 1.0) < 0.15
    assert abs(pooled.std() - 0.5) < 0.1
    for table in tables:
        assert len({tuple(row) for row in table}) == K  # every member its own factors
    # Each table is its own draw.
    assert not np.allclose(tables[1][:, :3], tables[3][:, :3])


def test_random_sign_factors_remain_a_choice():
    tables = _factor_tables(
        r1.convert(_classifier(), "batchensemble", K, alpha_initializer="random_sign", gamma_initializer="random_sign")
    )
    for table in tables:
        assert set(np.unique(table)) == {-1.0, 1.0}
    # Four-wide rows can repeat a sign pattern by chance (16 patterns); 32-wide ones do not.
    assert all(len({tuple(row) for row in table}) == K for table in tables if table.shape[1] == 32)


# -- the KL scale ----------------------------------------------------------------


def _normal_kl(loc, scale, prior_mean=1.0, prior_stddev=0.1):
    loc, scale = np.asarray(loc, np.float64), np.asarray(scale, np.float64)
    return np.sum(
        np.log(prior_stddev / scale) + (scale**2 + (loc - prior_mean) ** 2) / (2 * prior_stddev**2) - 0.5
    )


def _closed_form_kl(converted):
    """The summed closed-form KL of every stochastic factor, from the posterior's current weights."""
    expected = 0.0
    for layer in _core(converted).layers:
        for factor in getattr(layer, "member_factors", {}).values():
            if factor.is_stochastic:
                expected += _normal_kl(numpy(factor.initializer.loc), numpy(factor.initializer.scale))
    return expected


def test_rank1_kl_is_the_closed_form_over_train_size():
    x, _ = _iris()
    train_size = 150
    converted = r1.convert(_classifier(), "rank1", K, train_size=train_size)
    converted(x[:8], training=True)
    kl = float(sum(numpy(loss) for loss in converted.losses))
    expected = _closed_form_kl(converted)
    assert expected > 0
    np.testing.assert_allclose(kl, expected / train_size, rtol=1e-4)


class _NoLikelihood(keras.losses.Loss):
    """A data term of zero: the loss `fit` reports is then the model's added losses (the KL) alone."""

    def call(self, y_true, y_pred):
        return 0.0 * keras.ops.mean(y_pred, axis=-1)


def test_rank1_kl_reaches_the_loss_of_the_compiled_fit_step():
    # On JAX `fit` runs a jitted, stateless train step: the KL must come out of it in the loss
    # (and its gradient pull the posterior towards the prior), not stay an eager side effect.
    x, y = _iris()
    train_size = len(x)
    converted = r1.convert(_classifier(), "rank1", K, train_size=train_size)
    converted.compile(keras.optimizers.Adam(0.01), _NoLikelihood())
    if keras.backend.backend() == "jax":
        assert converted.jit_compile is True
    expected = [_closed_form_kl(converted)]
    reported = []
    for _ in range(2):  # one step per epoch: the loss it reports is the KL before that step's update
        reported += converted.fit(x, y, epochs=1, batch_size=train_size, shuffle=False, verbose=0).history["loss"]
        expected.append(_closed_form_kl(converted))
    np.testing.assert_allclose(reported, np.array(expected[:2]) / train_size, rtol=1e-4)
    assert expected[2] < expected[1] < expected[0]  # the KL alone moves the posterior towards the prior


def test_rank1_without_train_size_names_it():
    with pytest.raises(ValueError, match="train_size is required for method='rank1'"):
        r1.convert(_classifier(), "rank1", K)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_train_size_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"train_size must be a positive integer"):
        r1.convert(_classifier(), "rank1", K, train_size=bad)


def test_explicit_regularizers_are_used_as_given():
    prior = r1.regularizers.NormalKLDivergence(stddev=0.5, scale_factor=1e-3)
    converted = r1.convert(_classifier(), "rank1", K, alpha_regularizer=prior, gamma_regularizer=prior)
    dense = _core(converted).layers[1]
    assert dense.alpha_regularizer is prior and dense.gamma_regularizer is prior


def test_a_directly_built_rank1_layer_warns_that_its_kl_is_unscaled():
    with pytest.warns(UserWarning, match=r"adds the KL unscaled .* train_size=N"):
        r1.layers.DenseRank1(4, ensemble_size=K)
    prior = r1.regularizers.NormalKLDivergence(scale_factor=1 / 150)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r1.layers.DenseRank1(4, ensemble_size=K, alpha_regularizer=prior, gamma_regularizer=prior)
        r1.layers.DenseBatchEnsemble(4, ensemble_size=K)


# -- member outputs -------------------------------------------------------------------


def _numpy_member(converted, x, member):
    """Member `member` of a two-layer BatchEnsemble MLP, from its weights, in float64."""
    hidden_layer, output_layer = _core(converted).layers[1:3]
    activations = x.astype(np.float64)
    for layer, activation in ((hidden_layer, lambda z: np.maximum(z, 0)), (output_layer, None)):
        factors = {name: numpy(f.variable).astype(np.float64) for name, f in layer.member_factors.items()}
        z = ((activations * factors["alpha"][member]) @ numpy(layer.kernel)) * factors["gamma"][member]
        z = z + factors["bias"][member]
        activations = activation(z) if activation else np.exp(z - z.max(-1, keepdims=True))
    return activations / activations.sum(-1, keepdims=True)


def test_member_outputs_keep_member_k_at_index_k_for_any_batch_size():
    x, y = _iris()
    converted = r1.convert(_classifier(), "batchensemble", K)
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(K))
    converted.fit(x, y, epochs=3, batch_size=32, verbose=0)
    whole = _members(converted, x, batch_size=len(x))
    assert whole.shape == (150, K, 3)
    for batch_size in (7, 32):
        np.testing.assert_allclose(_members(converted, x, batch_size), whole, atol=1e-6)
    for member in range(K):
        np.testing.assert_allclose(whole[:, member], _numpy_member(converted, x, member), atol=1e-5)
    np.testing.assert_allclose(whole.mean(1), converted.predict(x, batch_size=7, verbose=0), atol=1e-6)


# -- logits --------------------------------------------------------------------------


def _twins(method, options):
    """The same converted weights as a probabilities model and as a logits model."""
    probabilities_model = r1.convert(_classifier("softmax"), method, K, **options)
    logits_model = r1.convert(_classifier(None), method, K, output_type="logits", **options)
    logits_model.set_weights(probabilities_model.get_weights())
    return probabilities_model, logits_model


@pytest.mark.parametrize("method", ["batchensemble", "rank1"])
def test_logits_model_gives_the_same_ensemble_as_the_probabilities_model(method):
    x, y = _iris()
    options = {"train_size": 150, "inference": "mean"} if method == "rank1" else {}
    probabilities_model, logits_model = _twins(method, options)
    probabilities = probabilities_model.predict(x, verbose=0)
    logits = logits_model.predict(x, verbose=0)
    # The averaged output is the mixture's log-probabilities: softmax gives the mean probability,
    # which is not the softmax of the mean logit.
    np.testing.assert_allclose(numpy(keras.ops.softmax(logits)), probabilities, atol=1e-5)
    member_logits = _members(logits_model, x)
    mean_logit_softmax = numpy(keras.ops.softmax(member_logits.mean(1)))
    assert np.abs(mean_logit_softmax - probabilities).max() > 1e-3
    # Losses on member rows and on averaged outputs agree between the two forms.
    rows = {m: np.concatenate(np.moveaxis(_members(m, x), 1, 0)) for m in (probabilities_model, logits_model)}
    for loss in (r1.AverageNLL, r1.MixtureNLL):
        np.testing.assert_allclose(
            float(loss(K, from_logits=True)(y, rows[logits_model])),
            float(loss(K)(y, rows[probabilities_model])),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            float(loss(K, from_logits=True)(y, logits)), float(loss(K)(y, probabilities)), rtol=1e-5
        )


@TENSORFLOW_ONLY  # predict_members and TrainData: the tf.data training package
def test_logits_model_trains_with_from_logits_and_evaluates_in_probability_space():
    import tensorflow as tf

    from rank1_keras.tensorflow.training.evaluation import predict_members
    from rank1_keras.tensorflow.training.loop import TrainData

    x, y = _iris()
    converted = r1.convert(_classifier(None), "batchensemble", K, output_type="logits")
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(K, from_logits=True))
    converted.fit(x, y, epochs=20, batch_size=32, verbose=0)
    members, labels = predict_members(converted, TrainData(tf.data.Dataset.from_tensor_slices((x, y)), len(x)), batch_size=7)
    np.testing.assert_allclose(members.sum(-1), 1.0, atol=1e-9)
    expected = numpy(keras.ops.softmax(np.moveaxis(_members(converted, x), 1, 0)))
    np.testing.assert_allclose(members, expected, atol=1e-5)
    assert np.mean(members.mean(0).argmax(-1) == labels) > 0.8


def test_a_model_without_softmax_needs_output_type():
    with pytest.raises(ValueError, match=r"output_type is needed: .*'logits'.*'regression'"):
        r1.convert(_classifier(None), "batchensemble", K)
    with pytest.raises(ValueError, match=r"output_type must be one of"):
        r1.convert(_classifier(None), "batchensemble", K, output_type="logit")


@TENSORFLOW_ONLY  # a SavedModel
def test_export_of_a_logits_model_serves_probabilities(tmp_path):
    import tensorflow as tf

    from rank1_keras.tensorflow.export import export_for_serving

    x, _ = _iris()
    probabilities_model, logits_model = _twins("batchensemble", {})
    served = {}
    for name, model in (("probabilities", probabilities_model), ("logits", logits_model)):
        export_for_serving(model, str(tmp_path / name))
        served[name] = tf.saved_model.load(str(tmp_path / name)).signatures["serving_default"](
            tf.constant(x[:9])
        )
    for key in ("probabilities", "member_probabilities", "mutual_information"):
        np.testing.assert_allclose(served["logits"][key].numpy(), served["probabilities"][key].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        served["probabilities"]["member_probabilities"].numpy(), _members(probabilities_model, x[:9]), atol=1e-5
    )


# -- dense predictions ----------------------------------------------------------------------


def _segmenter(classes=3):
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(classes, 1, activation="softmax")(hidden))


def _numpy_dense_nll(member_probabilities, labels, ignore_class=None, mixture=False):
    """member_probabilities (K, B, H, W, C), labels (B, H, W) -> the mean over valid pixels."""
    picked = np.take_along_axis(member_probabilities, np.maximum(labels, 0)[None, ..., None], axis=-1)[..., 0]
    log_picked = np.log(picked.astype(np.float64))
    per_pixel = -np.log(np.mean(picked, axis=0)) if mixture else -np.mean(log_picked, axis=0)
    valid = np.ones_like(labels, bool) if ignore_class is None else labels != ignore_class
    return per_pixel[valid].mean()


@pytest.mark.parametrize("loss_class,mixture", [(r1.AverageNLL, False), (r1.MixtureNLL, True)])
@pytest.mark.parametrize("ignore_class", [None, -1])
def test_per_pixel_losses_match_numpy(loss_class, mixture, ignore_class):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(K * 2, 8, 8, 3)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 3, size=(2, 8, 8))
    if ignore_class is not None:
        labels[0, :3] = ignore_class
    expected = _numpy_dense_nll(probabilities.reshape(K, 2, 8, 8, 3), labels, ignore_class, mixture)
    loss = loss_class(K, ignore_class=ignore_class)
    np.testing.assert_allclose(float(loss(labels, probabilities)), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(loss_class(K, from_logits=True, ignore_class=ignore_class)(labels, logits)), expected, rtol=1e-5
    )
    # One-hot labels (no ignore) give the same.
    if ignore_class is None:
        np.testing.assert_allclose(float(loss(np.eye(3)[labels], probabilities)), expected, rtol=1e-5)


@pytest.mark.parametrize("method", ["batchensemble", "rank1"])
def test_segmentation_model_converts_and_fits(method):
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 1)).astype(np.float32)
    labels = (images[..., 0] > 0.33).astype(np.int32) + (images[..., 0] > 0.66).astype(np.int32)
    options = {"train_size": len(images)} if method == "rank1" else {}
    converted = r1.convert(_segmenter(), method, K, **options)
    converted.compile(keras.optimizers.Adam(0.02), r1.AverageNLL(K))
    history = converted.fit(images, labels, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    members = _members(converted, images)
    assert members.shape == (64, K, 8, 8, 3)
    accuracy = np.mean(members.mean(1).argmax(-1) == labels)
    assert accuracy > 0.8


# -- regression -------------------------------------------------------------------------------


def _diabetes():
    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    y = ((y - y.mean()) / y.std()).astype("float32")[:, None]
    return x, y


def _gaussian_regressor():
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, GaussianParameters()(keras.layers.Dense(2)(hidden)))


def test_gaussian_losses_match_the_closed_form():
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    means = rng.normal(size=(K, 5, 2))
    scales = rng.uniform(0.3, 2.0, size=(K, 5, 2))
    targets = rng.normal(size=(5, 2))
    heads = np.concatenate([means, scales], axis=-1).reshape(K * 5, 4).astype(np.float32)
    log_density = norm.logpdf(targets[None], means, scales).sum(-1)  # (K, 5)
    average = -log_density.mean(0).mean()
    mixture = -np.mean(np.log(np.exp(log_density).mean(0)))
    np.testing.assert_allclose(float(r1.losses.AverageGaussianNLL(K)(targets, heads)), average, rtol=1e-5)
    np.testing.assert_allclose(float(r1.losses.MixtureGaussianNLL(K)(targets, heads)), mixture, rtol=1e-5)


def test_gaussian_mixture_moments():
    rng = np.random.default_rng(2)
    means, scales = rng.normal(size=(K, 3, 1)), rng.uniform(0.5, 1.5, size=(K, 3, 1))
    heads = np.concatenate([means, scales], -1).reshape(K * 3, 2).astype(np.float32)
    averaged = numpy(r1.AverageMembers(K, output_type="gaussian")(heads))
    np.testing.assert_allclose(averaged[:, :1], means.mean(0), rtol=1e-5)
    total_variance = (scales**2).mean(0) + means.var(0)  # aleatoric + epistemic
    np.testing.assert_allclose(averaged[:, 1:] ** 2, total_variance, rtol=1e-5)


@pytest.mark.parametrize("method", ["batchensemble", "rank1"])
def test_gaussian_regression_converts_and_fits(method):
    x, y = _diabetes()
    options = {"train_size": len(x)} if method == "rank1" else {}
    converted = r1.convert(_gaussian_regressor(), method, K, **options)
    converted.compile(keras.optimizers.Adam(0.01), r1.losses.AverageGaussianNLL(K))
    history = converted.fit(x, y, epochs=20, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    prediction = converted.predict(x, verbose=0)
    rmse = np.sqrt(np.mean((prediction[:, :1] - y) ** 2))
    assert rmse < 0.85  # standardised targets: 1.0 is predicting the mean
    assert np.all(prediction[:, 1] > 0)


def test_point_regression_trains_each_member_on_its_squared_error():
    x, y = _diabetes()
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(32, activation="relu")(inputs)))
    converted = r1.convert(model, "batchensemble", K, output_type="regression")
    converted.compile(keras.optimizers.Adam(0.01), r1.losses.MemberMeanSquaredError(K))
    converted.fit(x, y, epochs=20, batch_size=32, verbose=0)
    members = _members(converted, x)  # (N, K, 1)
    np.testing.assert_allclose(converted.predict(x, verbose=0), members.mean(1), atol=1e-5)
    assert np.sqrt(np.mean((members.mean(1) - y) ** 2)) < 0.85


# -- bad input ------------------------------------------------------------------------------


def test_bad_labels_are_one_clear_error():
    probabilities = np.full((K * 2, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match=r"y_true has 3 rows"):
        r1.AverageNLL(K)(np.zeros(3, np.int32), probabilities)
    with pytest.raises(ValueError, match=r"one-hot rows with 3 classes"):
        r1.AverageNLL(K)(np.eye(5)[[0, 1]], probabilities)
    with pytest.raises(ValueError, match=r"class index outside \[0, 3\)"):
        r1.AverageNLL(K)(np.array([0, 7]), probabilities)
    with pytest.raises(ValueError, match=r"ignore_class must be an integer"):
        r1.AverageNLL(K, ignore_class="void")


def test_a_bad_label_in_fit_stops_the_step_or_makes_its_loss_nan():
    """Inside `fit` the labels' values are unknown while the step is traced (documented in losses.py)."""
    x, y = _iris()
    y = y.copy()
    y[40] = 7  # in the second batch
    converted = r1.convert(_classifier(), "batchensemble", K)
    backend = keras.backend.backend()
    # TensorFlow: a tf.function step (no XLA, which would drop the assertion) stops at run time.
    jit_compile = False if backend == "tensorflow" else "auto"
    converted.compile(keras.optimizers.Adam(0.01), r1.AverageNLL(K), jit_compile=jit_compile)
    if backend == "tensorflow":
        import tensorflow as tf

        with pytest.raises(tf.errors.InvalidArgumentError, match=r"class index outside \[0, 3\)"):
            converted.fit(x, y, batch_size=32, shuffle=False, verbose=0)
    elif backend == "torch":  # an eager step: the values are known
        with pytest.raises(ValueError, match=r"class index outside \[0, 3\) .*min and max: 0 7"):
            converted.fit(x, y, batch_size=32, shuffle=False, verbose=0)
    else:  # JAX's jit: nothing can raise; the bad label's loss is NaN, which TerminateOnNonFinite stops at
        assert converted.jit_compile is True
        before = [numpy(v).copy() for v in converted.trainable_variables]
        with pytest.raises(FloatingPointError, match=r"epoch 1, batch 2: the training loss became nan"):
            converted.fit(x, y, batch_size=32, shuffle=False, verbose=0, callbacks=[r1.TerminateOnNonFinite()])
        assert int(converted.optimizer.iterations) == 1
        assert all(np.isfinite(numpy(v)).all() for v in converted.trainable_variables)
        assert any(np.abs(numpy(v) - b).max() > 0 for v, b in zip(converted.trainable_variables, before))
        history = converted.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
        assert np.isnan(history.history["loss"][0])


def test_a_regression_head_of_the_wrong_width_is_named():
    heads = np.ones((K * 2, 4), np.float32)  # two outputs
    with pytest.raises(ValueError, match=r"y_true must have shape \(B, \.\.\., 2\)"):
        r1.losses.AverageGaussianNLL(K)(np.zeros((2, 3), np.float32), heads)
    with pytest.raises(ValueError, match=r"2\*D outputs"):
        r1.losses.AverageGaussianNLL(K)(np.zeros((2, 1), np.float32), np.ones((K * 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"needs an even last input dimension"):
        GaussianParameters()(np.ones((2, 3), np.float32))


def test_mean_iou_against_a_hand_count():
    from rank1_keras.metrics import mean_iou

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=500)
    probabilities = rng.dirichlet(np.ones(3), size=500)
    predictions = probabilities.argmax(-1)
    expected = np.mean(
        [np.sum((predictions == c) & (labels == c)) / np.sum((predictions == c) | (labels == c)) for c in range(3)]
    )
    assert mean_iou(probabilities, labels) == pytest.approx(expected)


@TENSORFLOW_ONLY  # predict_members and TrainData: the tf.data training package
def test_per_pixel_evaluation_leaves_out_the_ignore_label():
    import tensorflow as tf

    from rank1_keras.tensorflow.training.evaluation import predict_members
    from rank1_keras.tensorflow.training.loop import TrainData

    rng = np.random.default_rng(6)
    images = rng.random((10, 8, 8, 1)).astype(np.float32)
    labels = (images[..., 0] > 0.5).astype(np.int32)
    labels[:, 0] = 255  # a void row in every image
    converted = r1.convert(_segmenter(classes=2), "batchensemble", K)
    data = TrainData(tf.data.Dataset.from_tensor_slices((images, labels)), len(images))
    members, kept_labels = predict_members(converted, data, batch_size=3, ignore_class=255)
    assert members.shape == (K, 10 * 7 * 8, 2) and kept_labels.shape == (10 * 7 * 8,)
    expected = np.moveaxis(_members(converted, images), 1, 0)[:, :, 1:].reshape(K, -1, 2)
    np.testing.assert_allclose(members, expected, atol=1e-5)


@TENSORFLOW_ONLY  # a SavedModel
def test_export_of_a_segmentation_model_serves_per_pixel_uncertainty(tmp_path):
    import tensorflow as tf

    from rank1_keras.tensorflow.export import export_for_serving

    rng = np.random.default_rng(7)
    images = rng.random((3, 8, 8, 1)).astype(np.float32)
    converted = r1.convert(_segmenter(), "batchensemble", K)
    served = tf.saved_model.load(export_for_serving(converted, str(tmp_path / "segmenter"))).signatures[
        "serving_default"
    ](tf.constant(images))
    members = _members(converted, images)  # (3, K, 8, 8, 3)
    np.testing.assert_allclose(served["member_probabilities"].numpy(), members, atol=1e-5)
    np.testing.assert_allclose(served["probabilities"].numpy(), members.mean(1), atol=1e-5)
    assert served["predicted_class"].shape == (3, 8, 8)
    entropy = -np.sum(members.mean(1) * np.log(members.mean(1)), axis=-1)
    np.testing.assert_allclose(served["predictive_entropy"].numpy(), entropy, atol=1e-4)


def test_streaming_metrics_count_pixels_and_skip_the_ignore_label():
    from rank1_keras import metrics

    rng = np.random.default_rng(8)
    logits = rng.normal(size=(K * 3, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(3, 4, 4))
    labels[0, 0] = 255
    member_probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    averaged = member_probabilities.reshape(K, 3, 4, 4, 3).mean(0).reshape(-1, 3).astype(np.float64)
    kept = labels.reshape(-1) != 255
    averaged, flat_labels = averaged[kept], labels.reshape(-1)[kept]
    for metric, expected in (
        (metrics.EnsembleAccuracy(K, ignore_class=255), metrics.accuracy(averaged, flat_labels)),
        (metrics.EnsembleNLL(K, ignore_class=255), metrics.negative_log_likelihood(averaged, flat_labels)),
        (metrics.ExpectedCalibrationError(K, ignore_class=255), metrics.expected_calibration_error(averaged, flat_labels)),
    ):
        metric.update_state(labels, member_probabilities)
        assert float(metric.result()) == pytest.approx(expected, abs=1e-5)
        from_logits = type(metric)(K, from_logits=True, ignore_class=255)
        from_logits.update_state(labels, logits)
        assert float(from_logits.result()) == pytest.approx(expected, abs=1e-5)


@TENSORFLOW_ONLY  # a SavedModel
def test_a_float_feature_export_refuses_non_finite_inputs(tmp_path):
    import tensorflow as tf

    from rank1_keras.tensorflow.export import export_for_serving

    x, _ = _iris()
    converted = r1.convert(_classifier(), "batchensemble", K)
    serve = tf.saved_model.load(export_for_serving(converted, str(tmp_path / "iris"))).signatures["serving_default"]
    assert np.isfinite(serve(tf.constant(x[:3]))["confidence"].numpy()).all()
    for bad in (np.nan, np.inf):
        features = x[:3].copy()
        features[1, 2] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="inputs must be finite"):
            serve(tf.constant(features))
