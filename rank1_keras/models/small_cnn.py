"""A small CNN (conv32-conv64-dense128) built for each method from one definition.

The architecture the embedded Fashion-MNIST demo trains on 2 CPU cores. The
`method` argument picks the layer family; the architecture is written once.
Ensemble methods tile the plain batch inside the model (`TileEnsemble`) and
output per-member probabilities, shape (K*B, classes), for the ensemble
training losses; `inference_model` wraps it to return the members' average.
"""

import keras

from rank1_keras import initializers, regularizers, validation
from rank1_keras.ensemble import AverageMembers, TileEnsemble
from rank1_keras.layers import Conv2DBatchEnsemble, Conv2DRank1, DenseBatchEnsemble, DenseRank1

METHODS = ("deterministic", "batchensemble", "rank1")
PRIORS = ("normal", "cauchy")


def _rank1_factor_arguments(prior, prior_stddev, random_sign_init, train_size):
    """Initializer/regularizer arguments for the rank-1 factors of one layer.

    random_sign_init > 0: means start at +/-1 with P(+1) = random_sign_init;
    <= 0: means start at N(1, |random_sign_init|^2) (the paper's convention).
    """
    if random_sign_init > 0:
        mean_initializer = initializers.RandomSign(random_sign_init)
    else:
        mean_initializer = keras.initializers.RandomNormal(1.0, -random_sign_init or 0.5)
    scale_factor = 1.0 / train_size
    if prior == "normal":
        posterior = initializers.TrainableNormal(mean_initializer=mean_initializer)
        kl = regularizers.NormalKLDivergence(mean=1.0, stddev=prior_stddev, scale_factor=scale_factor)
    else:
        posterior = initializers.TrainableCauchy(loc_initializer=mean_initializer)
        kl = regularizers.CauchyKLDivergence(loc=1.0, scale=prior_stddev, scale_factor=scale_factor)
    return {
        "alpha_initializer": posterior,
        "gamma_initializer": posterior,
        "alpha_regularizer": kl,
        "gamma_regularizer": kl,
    }


def build_small_cnn(
    method="rank1",
    input_shape=(28, 28, 1),
    num_classes=10,
    ensemble_size=4,
    train_size=60000,
    prior="normal",
    prior_stddev=0.1,
    random_sign_init=-0.5,
    l2=0.0,
    inference="sample",
):
    """Builds the small CNN for `method`.

    Args:
        method: "deterministic", "batchensemble" or "rank1".
        input_shape, num_classes: data shape and number of classes.
        ensemble_size: K for the ensemble methods.
        train_size: N, the KL's 1/N scale for rank-1.
        prior: "normal" or "cauchy" rank-1 prior, centred at one.
        prior_stddev: prior stddev (Normal) or scale (Cauchy).
        random_sign_init: see `_rank1_factor_arguments`.
        l2: L2 on the shared kernels only (never on the rank-1 posteriors).
        inference: "sample" or "mean" for rank-1 factors at evaluation.

    Seeds: no layer gets a fixed seed (equal seeds would correlate the
    layers' draws); call `keras.utils.set_random_seed` first for a
    reproducible model.

    Returns:
        A Keras model mapping (B, *input_shape) to probabilities of shape
        (B, C) (deterministic) or (K*B, C) (ensemble methods, block order).
    """
    validation.check_choice(method, "method", METHODS)
    validation.check_choice(prior, "prior", PRIORS)
    kernel_regularizer = keras.regularizers.L2(l2) if l2 else None
    if method == "deterministic":
        conv, dense, extra = keras.layers.Conv2D, keras.layers.Dense, lambda: {}
    else:
        validation.check_positive_int(ensemble_size, "ensemble_size")
        if method == "batchensemble":
            conv, dense = Conv2DBatchEnsemble, DenseBatchEnsemble
            extra = lambda: {"ensemble_size": ensemble_size}  # noqa: E731
        else:
            conv, dense = Conv2DRank1, DenseRank1

            def extra():
                return {
                    "ensemble_size": ensemble_size,
                    "inference": inference,
                    **_rank1_factor_arguments(prior, prior_stddev, random_sign_init, train_size),
                }

    inputs = keras.Input(input_shape)
    x = inputs if method == "deterministic" else TileEnsemble(ensemble_size)(inputs)
    x = conv(32, 3, activation="relu", kernel_regularizer=kernel_regularizer, **extra())(x)
    x = keras.layers.MaxPooling2D()(x)
    x = conv(64, 3, activation="relu", kernel_regularizer=kernel_regularizer, **extra())(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = dense(128, activation="relu", kernel_regularizer=kernel_regularizer, **extra())(x)
    outputs = dense(num_classes, activation="softmax", kernel_regularizer=kernel_regularizer, **extra())(x)
    return keras.Model(inputs, outputs, name=f"small_cnn_{method}")


def inference_model(model, ensemble_size):
    """Wraps an ensemble model so it returns member-averaged probabilities (B, C)."""
    if ensemble_size == 1:
        return model
    return keras.Model(model.inputs, AverageMembers(ensemble_size)(model.outputs[0]))
