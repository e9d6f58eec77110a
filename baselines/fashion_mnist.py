r"""Trains and compares methods on the embedded Fashion-MNIST set; prints a table.

The product's main job on a fresh machine: real data (Debian's
`dataset-fashion-mnist`, 60k/10k), a small CNN per method, `model.fit` with
the ensemble likelihood and KL annealing, and accuracy / NLL / ECE / Brier of
the member-averaged probabilities on the test set.

    python -m baselines.fashion_mnist --methods=deterministic,batchensemble,rank1 --epochs=2

Results go to `--output_dir` as results.json (written atomically: a failed
run leaves the previous results in place).
"""

import json
import os
import tempfile
import time

from absl import app, flags

flags.DEFINE_list("methods", ["deterministic", "batchensemble", "rank1"], "Methods to train and compare.")
flags.DEFINE_integer("epochs", 2, "Training epochs per method.")
flags.DEFINE_integer("batch_size", 128, "Examples per batch (before tiling to the members).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("ensemble_size", 4, "Members K of the ensemble methods.")
flags.DEFINE_enum("prior", "normal", ["normal", "cauchy"], "Rank-1 prior family, centred at one.")
flags.DEFINE_float("prior_stddev", 0.1, "Rank-1 prior stddev (Normal) or scale (Cauchy).")
flags.DEFINE_float(
    "random_sign_init", -0.5, "> 0: random-sign means with P(+1)=value; <= 0: means ~ N(1, value^2)."
)
flags.DEFINE_float("kl_annealing_epochs", 1.0, "Epochs over which the KL weight rises from 0 to 1.")
flags.DEFINE_enum("inference", "sample", ["sample", "mean"], "Rank-1 factors at evaluation.")
flags.DEFINE_float("l2", 0.0, "L2 on the shared kernels (never on the rank-1 posteriors).")
flags.DEFINE_integer("train_examples", 0, "Use only the first N training examples (0: all 60,000).")
flags.DEFINE_integer("test_examples", 0, "Use only the first N test examples (0: all 10,000).")
flags.DEFINE_string("data_dir", None, "Directory with the Fashion-MNIST IDX files (default: Debian's).")
flags.DEFINE_string("output_dir", "runs/fashion_mnist", "Where results.json is written.")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def train_and_evaluate(
    method, train, test, *, epochs, batch_size, learning_rate, ensemble_size, seed, kl_annealing_epochs, **model_args
):
    """Trains one method and returns its metrics on `test`."""
    import keras

    from rank1_keras import metrics
    from rank1_keras.callbacks import KLAnnealing
    from rank1_keras.losses import AverageNLL
    from rank1_keras.models import build_small_cnn, inference_model

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = train, test
    members = 1 if method == "deterministic" else ensemble_size
    model = build_small_cnn(
        method,
        input_shape=x_train.shape[1:],
        num_classes=int(y_train.max()) + 1,
        ensemble_size=members,
        train_size=len(x_train),
        **model_args,
    )
    model.compile(keras.optimizers.Adam(learning_rate), AverageNLL(members))
    callbacks = [KLAnnealing(kl_annealing_epochs)] if method == "rank1" else []
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, callbacks=callbacks, verbose=2)
    train_seconds = time.perf_counter() - start
    probabilities = inference_model(model, members).predict(x_test, batch_size=batch_size, verbose=0)
    result = metrics.evaluate_classifier(probabilities.astype("float64"), y_test)
    result.update(
        method=method,
        ensemble_size=members,
        parameters=int(model.count_params()),
        train_seconds=round(train_seconds, 1),
        epochs=epochs,
    )
    return result


def format_table(results):
    header = f"{'method':<15}{'K':>3}{'accuracy':>10}{'NLL':>9}{'ECE':>9}{'Brier':>9}{'params':>10}{'train s':>9}"
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r['method']:<15}{r['ensemble_size']:>3}{r['accuracy']:>10.4f}{r['nll']:>9.4f}"
            f"{r['ece']:>9.4f}{r['brier']:>9.4f}{r['parameters']:>10d}{r['train_seconds']:>9.1f}"
        )
    return "\n".join(rows)


def write_json_atomically(payload, path):
    """Writes to a temporary file in the same directory, then renames over `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(payload, stream, indent=2)
    os.replace(temporary, path)


def main(argv):
    del argv
    from rank1_keras.data import load_fashion_mnist
    from rank1_keras.models import METHODS

    for method in FLAGS.methods:
        if method not in METHODS:
            raise app.UsageError(f"--methods entries must be in {list(METHODS)}; got {method!r}.")
    train = load_fashion_mnist(FLAGS.data_dir, "train")
    test = load_fashion_mnist(FLAGS.data_dir, "test")
    if FLAGS.train_examples:
        train = tuple(a[: FLAGS.train_examples] for a in train)
    if FLAGS.test_examples:
        test = tuple(a[: FLAGS.test_examples] for a in test)
    settings = dict(
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        ensemble_size=FLAGS.ensemble_size,
        seed=FLAGS.seed,
        prior=FLAGS.prior,
        prior_stddev=FLAGS.prior_stddev,
        random_sign_init=FLAGS.random_sign_init,
        kl_annealing_epochs=FLAGS.kl_annealing_epochs,
        inference=FLAGS.inference,
        l2=FLAGS.l2,
    )
    results = []
    for method in FLAGS.methods:
        print(f"== {method} ==", flush=True)
        results.append(train_and_evaluate(method, train, test, **settings))
    table = format_table(results)
    print(f"\nFashion-MNIST: {len(train[0])} train / {len(test[0])} test examples, {FLAGS.epochs} epochs, "
          f"batch {FLAGS.batch_size}, seed {FLAGS.seed}\n{table}")
    write_json_atomically(
        {"settings": {**settings, "train_examples": len(train[0]), "test_examples": len(test[0])}, "results": results},
        os.path.join(FLAGS.output_dir, "results.json"),
    )


if __name__ == "__main__":
    app.run(main)
