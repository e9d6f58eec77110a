r"""The README's converter walk-through, runnable: a small CNN and ResNet-50.

    python -m examples.convert_models --train_examples=10000 --epochs=1

Converts a plain Keras CNN into a rank-1 BNN (K=4), prints the conversion
summary, trains it with `model.fit` on Fashion-MNIST and prints the test
accuracy of the member average; then converts `keras.applications.ResNet50`
(weights=None, nothing downloaded) into BatchEnsemble and rank-1 models and
prints their summaries.
"""

from absl import app, flags

flags.DEFINE_integer("ensemble_size", 4, "Members K.")
flags.DEFINE_integer("train_examples", 10000, "Training examples used.")
flags.DEFINE_integer("test_examples", 2000, "Test examples used.")
flags.DEFINE_integer("epochs", 1, "Training epochs.")
flags.DEFINE_boolean("resnet", True, "Also convert ResNet-50 and print its summaries.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras

    import rank1_keras as r1
    from rank1_keras import metrics
    from rank1_keras.data import load_fashion_mnist

    keras.utils.set_random_seed(0)
    ensemble_size = FLAGS.ensemble_size
    x_train, y_train = (a[: FLAGS.train_examples] for a in load_fashion_mnist(split="train"))
    x_test, y_test = (a[: FLAGS.test_examples] for a in load_fashion_mnist(split="test"))

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    prior = r1.regularizers.NormalKLDivergence(mean=1.0, stddev=0.1, scale_factor=1 / len(x_train))
    ensemble = r1.convert(
        model, "rank1", ensemble_size=ensemble_size, alpha_regularizer=prior, gamma_regularizer=prior
    )
    print(r1.conversion_summary(model, ensemble))
    ensemble.compile(keras.optimizers.Adam(1e-3), r1.AverageNLL(ensemble_size))
    ensemble.fit(x_train, y_train, batch_size=128, epochs=FLAGS.epochs, callbacks=[r1.KLAnnealing(1)], verbose=2)
    probabilities = ensemble.predict(x_test, batch_size=256, verbose=0)
    print(f"rank-1 CNN (K={ensemble_size}) test accuracy: {metrics.accuracy(probabilities.astype('float64'), y_test):.4f}")

    if FLAGS.resnet:
        resnet = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
        for method in ("batchensemble", "rank1"):
            for size in (ensemble_size, 10):
                converted = r1.convert(resnet, method, ensemble_size=size, batch_norm="shared")
                summary = r1.conversion_summary(resnet, converted)
                print(
                    f"ResNet-50 {method} K={size} (shared batch norm): {len(summary.changed_layers)} layers "
                    f"converted, trainable parameters {summary.trainable_parameters_before:,} -> "
                    f"{summary.trainable_parameters_after:,} (+{summary.overhead_percent:.2f}%)"
                )


if __name__ == "__main__":
    app.run(main)
