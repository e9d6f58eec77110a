"""The tasks' data as `TrainData` (tf.data): in-memory arrays and the tfds CIFAR/ImageNet splits (TensorFlow only)."""

import numpy as np
import tensorflow as tf

from rank1_keras.tensorflow.training.loop import TrainData


def arrays_data(features, labels):
    """In-memory (features, labels) as a `TrainData`: float32 features, int32 labels."""
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    return TrainData(tf.data.Dataset.from_tensor_slices((features, labels)), len(labels))


def tfds_data(name, split, data_dir, preprocess, limit=0):
    """The tfds `split` of the data set `name` in `data_dir` as a `TrainData` (its first `limit` examples; 0: all)."""
    from rank1_keras.tensorflow import tfds_images

    dataset = tfds_images.load_tfds_split(name, split, data_dir)
    try:
        count = tfds_images.num_examples(name, split, data_dir)
    except tfds_images.DataNotFoundError:
        # The data loaded but tfds has no split sizes (tfds.testing.mock_data):
        # the data set's own cardinality is the count.
        count = int(dataset.cardinality())
        if count < 0:
            raise
    if limit:
        dataset, count = dataset.take(limit), min(count, limit)
    return TrainData(dataset, count, preprocess)


def cifar_sets(name, options):
    """The `TrainData` of the CIFAR task `name` ("cifar10" or "cifar100") under `options` (a `TaskOptions`).

    Returns (train, test, validation or None, ood, shifted): `ood` holds the
    other CIFAR's test set, `shifted` CIFAR-10-C per (corruption, severity)
    (cifar10 only).
    """
    from rank1_keras.tensorflow import tfds_images

    preprocess = tfds_images.preprocess_cifar
    held = options.validation_percent
    train_split = f"train[:{100 - held:g}%]" if held else "train"
    # The requested set first, so a missing data_dir names it (not the OOD set).
    train = tfds_data(name, train_split, options.data_dir, preprocess, options.train_examples)
    test = tfds_data(name, "test", options.data_dir, preprocess, options.test_examples)
    validation_set = (
        tfds_data(name, f"train[{100 - held:g}%:]", options.data_dir, preprocess) if held else None
    )
    ood = {}
    if options.ood:
        other = "cifar100" if name == "cifar10" else "cifar10"
        ood[other] = tfds_data(other, "test", options.data_dir, preprocess, options.test_examples)
    shifted = {}
    if name == "cifar10":
        corruptions = tfds_images.CIFAR10_CORRUPTIONS if options.corruptions is None else options.corruptions
        for corruption in corruptions:
            for severity in options.corruption_severities:
                config = tfds_images.cifar10_corrupted_name(corruption, severity)
                shifted[(corruption, severity)] = tfds_data(
                    config, "test", options.data_dir, preprocess, options.test_examples
                )
    return train, test, validation_set, ood, shifted


def imagenet_sets(options):
    """The `TrainData` of ImageNet (tfds `imagenet2012`) under `options` (a `TaskOptions`), cropped to `image_size`.

    Returns (train, test, validation or None); test is tfds' validation split.
    """
    from rank1_keras.tensorflow import tfds_images

    image_size = options.image_size

    def preprocess(image, label, seed, training):
        return tfds_images.preprocess_imagenet(image, label, seed, training, image_size=image_size)

    held = options.validation_percent
    train = tfds_data(
        "imagenet2012", f"train[:{100 - held:g}%]" if held else "train", options.data_dir, preprocess,
        options.train_examples,
    )
    test = tfds_data("imagenet2012", "validation", options.data_dir, preprocess, options.test_examples)
    validation_set = (
        tfds_data("imagenet2012", f"train[{100 - held:g}%:]", options.data_dir, preprocess) if held else None
    )
    return train, test, validation_set
