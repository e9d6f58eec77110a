r"""Regression, every method in one table: Gaussian-head MLPs on scikit-learn's diabetes data.

    python -m examples.regression_comparison --seeds=3

The data (442 patients, 10 features, a disease-progression target) ship with
scikit-learn. One fixed split (seeded permutation): 70% train, 15% validation,
15% test; features and target standardised with the training statistics, so an
RMSE of 1 is predicting the mean. One plain model, Dense 50-ReLU-Dense 2 ending in
`GaussianParameters` (mean and softplus scale), is written once and made into
each method:

| method | how |
|---|---|
| deterministic | the plain model |
| dropout | `convert(model, "dropout", dropout_rate=0.1, num_samples=K)` |
| ensemble | K plain models, `join_ensemble` (mixture of their Gaussians) |
| batchensemble, rank1, lpbnn | `convert(model, method, K)` (rank-1: `train_size=N`) |
| bella | `convert(trained deterministic, "bella", K)`: low-rank perturbations of it |

Every model trains with `model.fit` on `AverageGaussianNLL(K)` (Adam 1e-3,
batch 32, at most `--epochs`), stopped early on the validation split's NLL
(the NLL without the KL / VAE terms; patience `--patience`, best weights restored:
heteroscedastic heads overfit 309 examples within a few hundred epochs), is evaluated as the mixture of its
members, and gets one variance scale s fitted on the validation split (the
regression analogue of temperature scaling). The validation split makes every
choice; the test split is read once. Columns are mean ± std over `--seeds`
initialisations.
"""

import numpy as np
from absl import app, flags

flags.DEFINE_integer("seeds", 3, "Initialisations per method.")
flags.DEFINE_integer("epochs", 500, "Most training epochs (early stopping on the validation NLL).")
flags.DEFINE_integer("patience", 20, "Epochs without a better validation NLL before stopping.")
flags.DEFINE_integer("ensemble_size", 4, "Members K.")
flags.DEFINE_list(
    "methods",
    ["deterministic", "dropout", "ensemble", "batchensemble", "rank1", "lpbnn", "bella"],
    "Methods, in table order.",
)
FLAGS = flags.FLAGS

COLUMNS = (
    ("RMSE", "rmse"),
    ("NLL", "nll"),
    ("NLL (s)", "nll_scaled"),
    ("cover 90%", "coverage_90"),
    ("width 90%", "width_90"),
    ("cover 95%", "coverage_95"),
    ("cal. error", "calibration_error"),
    ("cal. error (s)", "calibration_error_scaled"),
    ("aleatoric var", "aleatoric_variance"),
    ("epistemic var", "epistemic_variance"),
)


def diabetes_splits():
    """((x, y) train, validation, test), standardised with the training statistics."""
    from sklearn.datasets import load_diabetes

    features, targets = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(targets))
    cuts = (int(0.7 * len(order)), int(0.85 * len(order)))
    parts = np.split(order, cuts)
    mean, std = features[parts[0]].mean(0), features[parts[0]].std(0)
    target_mean, target_std = targets[parts[0]].mean(), targets[parts[0]].std()
    return [
        (((features[p] - mean) / std).astype("float32"), ((targets[p] - target_mean) / target_std)[:, None].astype("float32"))
        for p in parts
    ]


def gaussian_mlp(inputs=10, hidden=50):
    import keras

    from rank1_keras.layers import GaussianParameters

    x = keras.Input((inputs,))
    return keras.Model(x, GaussianParameters()(keras.layers.Dense(2)(keras.layers.Dense(hidden, activation="relu")(x))))


def _fit(model, data, members, epochs, patience):
    import keras

    from rank1_keras.losses import AverageGaussianNLL

    train, validation = data
    # Stop on the validation NLL alone: Keras' val_loss adds the KL / VAE terms, which keep
    # falling while the likelihood overfits.
    nll = keras.metrics.MeanMetricWrapper(AverageGaussianNLL(members), name="nll")
    model.compile(keras.optimizers.Adam(1e-3), AverageGaussianNLL(members), metrics=[nll])
    stop = keras.callbacks.EarlyStopping(monitor="val_nll", mode="min", patience=patience, restore_best_weights=True)
    model.fit(*train, batch_size=32, epochs=epochs, verbose=0, validation_data=validation, callbacks=[stop])
    return model


def build_and_train(method, data, ensemble_size, epochs, patience=20):
    """`data`: (train, validation) pairs; validation only stops training."""
    """The trained method's model (one whose `member_outputs` give (B, K, 2) heads, or a plain model)."""
    import rank1_keras as r1

    def fit(model, members):
        return _fit(model, data, members, epochs, patience)

    if method == "deterministic":
        return fit(gaussian_mlp(), 1)
    if method == "ensemble":
        return r1.join_ensemble([fit(gaussian_mlp(), 1) for _ in range(ensemble_size)])
    if method == "bella":
        return fit(r1.convert(fit(gaussian_mlp(), 1), "bella", ensemble_size), ensemble_size)
    if method == "dropout":
        return fit(r1.convert(gaussian_mlp(), "dropout", num_samples=ensemble_size, dropout_rate=0.1), ensemble_size)
    options = {"train_size": len(data[0][0])} if method == "rank1" else {}
    return fit(r1.convert(gaussian_mlp(), method, ensemble_size, **options), ensemble_size)


def member_heads(model, features):
    """(means, scales), each (K, N, 1), of a trained model's members."""
    import rank1_keras as r1
    from rank1_keras.models.ensemble import AverageMembers

    if any(isinstance(layer, AverageMembers) for layer in model.layers):
        heads = np.moveaxis(r1.member_outputs(model).predict(features, verbose=0), 1, 0)
    else:
        heads = model.predict(features, verbose=0)[None]
    return heads[..., :1].astype(np.float64), heads[..., 1:].astype(np.float64)


def evaluate_method(model, validation, test):
    from rank1_keras.metrics import regression as regression_metrics

    means, scales = member_heads(model, validation[0])
    mean, aleatoric, epistemic = regression_metrics.mixture_moments(means, scales)
    scale = regression_metrics.fit_variance_scale(mean, np.sqrt(aleatoric + epistemic), validation[1])
    means, scales = member_heads(model, test[0])
    result = regression_metrics.evaluate_regressor(means, scales, test[1])
    scaled = regression_metrics.evaluate_regressor(means, scales, test[1], variance_scale=scale)
    result.update(nll_scaled=scaled["nll"], calibration_error_scaled=scaled["calibration_error"], variance_scale=scale)
    return result


def compare(methods, seeds, epochs, ensemble_size, patience=20):
    """{method: [result per seed]} and the Markdown table (mean ± std)."""
    import keras

    train, validation, test = diabetes_splits()
    results = {}
    for method in methods:
        results[method] = []
        for seed in range(seeds):
            keras.utils.set_random_seed(seed)
            model = build_and_train(method, (train, validation), ensemble_size, epochs, patience)
            results[method].append(evaluate_method(model, validation, test))
    header = "| method | " + " | ".join(name for name, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for method, runs in results.items():
        cells = []
        for _, key in COLUMNS:
            values = np.array([run[key] for run in runs])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return results, "\n".join(lines)


def main(argv):
    del argv
    _, table = compare(FLAGS.methods, FLAGS.seeds, FLAGS.epochs, FLAGS.ensemble_size, FLAGS.patience)
    print(
        f"diabetes (scikit-learn): 309 train / 66 validation / 67 test, K={FLAGS.ensemble_size}, at most "
        f"{FLAGS.epochs} epochs, early stopping on the validation NLL (patience {FLAGS.patience}), "
        f"{FLAGS.seeds} seeds (mean ± std); (s): after variance scaling\n"
    )
    print(table)


if __name__ == "__main__":
    app.run(main)
