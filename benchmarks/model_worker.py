"""Worker: one method's model, its timed training step and prediction, and their peak memory.

    python -m benchmarks.model_worker --method rank1 [--depth 28 --width 2 --batch 16 --ensemble-size 4]

A fresh process per method, so each method's memory is measured on the same
clean process history. Run by `benchmarks.models` through
`common.WorkerParticipant`, which then takes its timing rounds interleaved
with the other methods' workers.
"""

import argparse
import os
import time

from benchmarks import common


def build(method, depth, width, ensemble_size, classes, image_size):
    import keras

    from rank1_keras.models import wide_resnet
    from rank1_keras.methods.settings import build_method_models

    keras.utils.set_random_seed(0)
    settings = common.method_settings(method, ensemble_size)
    models = build_method_models(
        lambda: wide_resnet(depth, width, num_classes=classes, input_shape=(image_size, image_size, 3)), settings
    )
    return settings, models


def training_options(model, settings):
    """The method's extra training-loop arguments (Bella's member streams / SVGD), if any."""
    from rank1_keras.methods.settings import training_options as method_training_options

    return method_training_options(model, settings)


def make_functions(settings, models, batch, classes, image_size):
    """{"train": ..., "predict": ...}: one training step / one prediction of `batch` examples.

    Deep ensembles run their K models one after another in both. A method
    trained on member streams (M blocks of B examples per step, one per
    member) gets M*B rows in training, so each member still sees B examples.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from rank1_keras.losses import AverageNLL

    rng = np.random.RandomState(0)
    x = tf.constant(rng.standard_normal((batch, image_size, image_size, 3)).astype(np.float32))
    y = tf.constant(rng.randint(0, classes, size=batch).astype(np.int32))
    loss_fn = AverageNLL(settings.members)

    def train_function(model):
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        optimizer.build(model.trainable_variables)
        options = training_options(model, settings)
        streams = options.get("member_streams", 1)
        transform = options.get("gradient_transform")
        x_train, y_train = (tf.tile(x, [streams, 1, 1, 1]), tf.tile(y, [streams])) if streams > 1 else (x, y)

        @tf.function(jit_compile=False)
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(y_train, model(x_train, training=True))
                if model.losses:
                    loss = loss + tf.add_n([tf.cast(term, loss.dtype) for term in model.losses])
            gradients = tape.gradient(loss, model.trainable_variables)
            if transform is not None:
                gradients = transform(model.trainable_variables, gradients)
            optimizer.apply(gradients, model.trainable_variables)
            return loss

        return step

    def predict_function(model):
        @tf.function(jit_compile=False)
        def predict():
            return model(x, training=False)

        return predict

    steps = [train_function(model) for model in models]
    predictions = [predict_function(model) for model in models]

    def train():
        return [step() for step in steps]

    def predict():
        probabilities = [function() for function in predictions]
        average = probabilities[0] if len(probabilities) == 1 else tf.add_n(probabilities) / len(probabilities)
        return tf.reduce_sum(average)

    return {"train": train, "predict": predict}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", required=True)
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ensemble-size", type=int, default=common.ENSEMBLE_SIZE)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--memory-calls", type=int, default=2)
    args = parser.parse_args()

    common.configure_tensorflow()
    started = time.perf_counter()
    settings, models = build(args.method, args.depth, args.width, args.ensemble_size, args.classes, args.image_size)
    from rank1_keras.methods.converter import _trainable_count

    info = {
        "method": args.method,
        "models": len(models),
        "members": settings.ensemble_members,
        "training_batch": getattr(settings, "effective_training_batch", settings.training_batch),
        "member_streams": training_options(models[0], settings).get("member_streams", 1),
        "trainable_parameters": sum(_trainable_count(m) for m in models),
        "build_s": time.perf_counter() - started,
        "pid": os.getpid(),
    }
    functions = make_functions(settings, models, args.batch, args.classes, args.image_size)
    started = time.perf_counter()
    for function in functions.values():
        common.run_timed(function)  # traces
    info["first_calls_s"] = time.perf_counter() - started
    for function in functions.values():
        common.run_timed(function)
    common.release_free_memory()
    info["resident_mb"] = common.rss_bytes() / 2**20
    # Prediction first: its transient memory is smaller, and is returned to
    # the system before the training step is measured.
    for name in ("predict", "train"):
        function = functions[name]
        peak, how = common.measure_peak_memory(lambda function=function: common.run_timed(function), args.memory_calls)
        info[f"{name}_peak_mb"] = peak / 2**20
        info["memory_measure"] = how
    common.serve(functions, info)


if __name__ == "__main__":
    common.worker_guard(main)
