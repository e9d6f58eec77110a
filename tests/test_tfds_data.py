"""Tests for rank1_keras.tensorflow.tfds_images (no downloads, no real data).

Two kinds of fake data:

* A tfds data_dir really prepared here, offline: each builder's
  ``download_and_prepare`` runs with its ``_split_generators`` replaced by
  known examples and its download manager replaced by a mock (so nothing can
  be fetched; it also avoids ``importlib_resources``, which tfds' checksum
  lookup needs). ``load_tfds_split`` then reads genuine tfrecord files and
  metadata, unmocked, so values, split sizes and slicing can be checked.
* ``tfds.testing.mock_data`` with ``MockPolicy.USE_CODE``: tfds does not ship
  the metadata files of these data sets (``tensorflow_datasets/testing/
  metadata`` is absent), so the default AUTO policy falls back to USE_CODE
  anyway; we name it explicitly. Under USE_CODE split sizes are unknown,
  so only the examples themselves are checked there.
"""

import itertools
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rank1_keras.data import DataNotFoundError
from rank1_keras.tensorflow import tfds_images
from rank1_keras.tensorflow.tfds_images import (
    CIFAR10_CORRUPTIONS,
    CORRUPTION_SEVERITIES,
    TFDS_IMAGE_DATASETS,
    cifar10_corrupted_name,
    load_tfds_split,
    num_classes,
    num_examples,
    preprocess_cifar,
    preprocess_imagenet,
)

CORRUPTED = "cifar10_corrupted/gaussian_noise_3"
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616])
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


# --------------------------------------------------------------------------
# A data_dir prepared offline with known examples.
# --------------------------------------------------------------------------


def _cifar_examples(rng, n, num_labels, extra=None):
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_labels, size=n)
    labels[0] = num_labels - 1  # The largest label is present.
    examples = []
    for i in range(n):
        example = {"image": images[i], "label": int(labels[i])}
        example.update(extra(i) if extra else {})
        examples.append(example)
    return examples


def _imagenet_examples(rng, sizes):
    return [
        {
            "image": rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8),
            "label": int(rng.integers(0, 1000)),
            "file_name": f"n{i:08d}_{i}.JPEG",
        }
        for i, (h, w) in enumerate(sizes)
    ]


def _prepare(name, data_dir, splits):
    """Runs the real download_and_prepare of `name` on `splits` examples."""
    builder = tfds.builder(name, data_dir=data_dir)
    cls = type(builder)

    def generate(examples):
        yield from enumerate(examples)

    def split_generators(self, dl_manager):
        del self, dl_manager
        return {split: generate(examples) for split, examples in splits.items()}

    with mock.patch.object(cls, "_split_generators", split_generators), \
            mock.patch.object(cls, "_make_download_manager",
                              lambda self, **kwargs: mock.MagicMock()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)

    def cifar_id(i):
        return {"id": f"train_{i:05d}"}

    written = {
        "cifar10": {
            "train": _cifar_examples(rng, 12, 10, cifar_id),
            "test": _cifar_examples(rng, 4, 10, cifar_id),
        },
        "cifar100": {
            "train": _cifar_examples(
                rng, 6, 100, lambda i: {"id": f"train_{i:05d}", "coarse_label": i % 20}),
            "test": _cifar_examples(
                rng, 3, 100, lambda i: {"id": f"test_{i:05d}", "coarse_label": 0}),
        },
        CORRUPTED: {"test": _cifar_examples(rng, 5, 10)},
        "imagenet2012": {
            "train": _imagenet_examples(rng, [(20, 31), (17, 17), (40, 12), (9, 25)]),
            "validation": _imagenet_examples(rng, [(33, 21), (16, 48), (27, 26)]),
        },
    }
    for name, splits in written.items():
        _prepare(name, data_dir, splits)
    return data_dir, written


def _as_numpy(ds):
    return [(image.numpy(), label.numpy()) for image, label in ds]


def _key(image, label):
    return image.tobytes(), int(label)


@pytest.mark.parametrize("name,split", [
    ("cifar10", "train"), ("cifar10", "test"), ("cifar100", "train"),
    ("cifar100", "test"), (CORRUPTED, "test"),
])
def test_prepared_cifar_values(prepared, name, split):
    data_dir, written = prepared
    ds = load_tfds_split(name, split, data_dir)
    assert ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[1].dtype == tf.int32
    examples = _as_numpy(ds)
    expected = written[name][split]
    assert len(examples) == len(expected) == num_examples(name, split, data_dir)
    for image, label in examples:
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert label.dtype == np.int32 and 0 <= label < num_classes(name)
    # tfds writes examples in a hashed order: compare as multisets.
    assert sorted(_key(i, l) for i, l in examples) == sorted(
        _key(e["image"], e["label"]) for e in expected)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_prepared_imagenet_sizes_and_labels(prepared, split):
    data_dir, written = prepared
    examples = _as_numpy(load_tfds_split("imagenet2012", split, data_dir))
    expected = written["imagenet2012"][split]
    assert len(examples) == len(expected) == num_examples("imagenet2012", split, data_dir)
    # JPEG is lossy: compare the sizes and labels, then the pixels loosely.
    got = sorted((i.shape, int(l)) for i, l in examples)
    assert got == sorted((e["image"].shape, e["label"]) for e in expected)
    for image, label in examples:
        assert image.dtype == np.uint8 and label.dtype == np.int32
        assert 0 <= label < 1000


def test_prepared_slicing(prepared):
    data_dir, _ = prepared
    assert num_examples("cifar10", "train[:50%]", data_dir) == 6
    assert num_examples("cifar10", "train[2:5]", data_dir) == 3
    assert num_examples("cifar10", "train[-25%:]", data_dir) == 3
    everything = _as_numpy(load_tfds_split("cifar10", "train", data_dir))
    head = _as_numpy(load_tfds_split("cifar10", "train[:50%]", data_dir))
    tail = _as_numpy(load_tfds_split("cifar10", "train[50%:]", data_dir))
    assert len(head) == 6 and len(tail) == 6
    # Unshuffled: the slices are the two halves, in file order.
    assert [_key(*e) for e in head + tail] == [_key(*e) for e in everything]
    # The same file order on every read (needed for exact resume).
    again = _as_numpy(load_tfds_split("cifar10", "train", data_dir))
    assert [_key(*e) for e in again] == [_key(*e) for e in everything]


def test_reads_without_preparing_or_shuffling(prepared):
    from tensorflow_datasets.core import dataset_builder

    data_dir, _ = prepared
    base = dataset_builder.DatasetBuilder
    with mock.patch.object(base, "as_dataset", autospec=True,
                           side_effect=base.as_dataset) as as_dataset, \
            mock.patch.object(base, "download_and_prepare",
                              side_effect=AssertionError("no download")) as prepare:
        load_tfds_split("cifar100", "test[:2]", data_dir)
        with pytest.raises(DataNotFoundError):
            load_tfds_split("cifar10", "test", data_dir + "/elsewhere")
    prepare.assert_not_called()
    as_dataset.assert_called_once()
    kwargs = as_dataset.call_args.kwargs
    assert kwargs == {"split": "test[:2]", "shuffle_files": False, "as_supervised": True}
    assert as_dataset.call_args.args[0].data_dir.startswith(data_dir)


def test_prepared_unknown_split_raises(prepared):
    data_dir, _ = prepared
    with pytest.raises(ValueError, match=r"'validation'.*cifar10.*\['test', 'train'\]"):
        load_tfds_split("cifar10", "validation", data_dir)
    with pytest.raises(ValueError, match="'train'.*cifar10_corrupted"):
        num_examples(CORRUPTED, "train", data_dir)


def test_other_corruption_not_prepared_raises(prepared):
    data_dir, _ = prepared
    name = cifar10_corrupted_name("contrast", 1)
    for call in (load_tfds_split, num_examples):
        with pytest.raises(DataNotFoundError) as info:
            call(name, "test", data_dir)
        message = str(info.value)
        assert name in message and data_dir in message
        assert f"tfds build {name} --data_dir={data_dir}" in message


# --------------------------------------------------------------------------
# tfds.testing.mock_data.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,split", [
    ("cifar10", "train"), ("cifar100", "test"), (CORRUPTED, "test"),
    ("imagenet2012", "validation"), ("cifar10", "train[:90%]"),
])
def test_mock_data(tmp_path, name, split):
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_tfds_split(name, split, str(tmp_path))
        examples = _as_numpy(ds)
    assert len(examples) == 7
    shapes = set()
    for image, label in examples:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert label.dtype == np.int32 and 0 <= label < num_classes(name)
        shapes.add(image.shape)
    if name == "imagenet2012":
        assert len(shapes) > 1  # Mock ImageNet images have random sizes.
    else:
        assert shapes == {(32, 32, 3)}


def test_mock_imagenet_preprocessing_pipeline(tmp_path):
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_tfds_split("imagenet2012", "train", str(tmp_path))
    for training in (True, False):
        mapped = ds.enumerate().map(
            lambda i, xy, training=training: preprocess_imagenet(
                xy[0], xy[1], seed=tf.stack([tf.constant(3, tf.int64), i]),
                training=training, image_size=24))
        first, second = _as_numpy(mapped), _as_numpy(mapped)
        assert len(first) == 5
        for (x, y), (x2, y2) in zip(first, second):
            assert x.shape == (24, 24, 3) and x.dtype == np.float32
            assert y.dtype == np.int32
            np.testing.assert_array_equal(x, x2)  # Same seeds, same output.
            # Inside the normalised range of [0, 1] pixels.
            low, high = -IMAGENET_MEAN / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
            assert np.all(x >= low - 1e-5) and np.all(x <= high + 1e-5)


# --------------------------------------------------------------------------
# Missing data and bad arguments.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TFDS_IMAGE_DATASETS + (CORRUPTED,))
def test_missing_data_dir_raises(tmp_path, name):
    missing = str(tmp_path / "nowhere")
    empty = str(tmp_path)
    for data_dir in (None, missing, empty):
        for call in (load_tfds_split, num_examples):
            with pytest.raises(DataNotFoundError) as info:
                call(name, "test", data_dir)
            message = str(info.value)
            assert isinstance(info.value, FileNotFoundError)
            assert repr(name) in message and repr(data_dir) in message
            assert f"tfds build {name} --data_dir=" in message
            assert "never downloads" in message
            if name == "imagenet2012":
                assert "--manual_dir=" in message and "ILSVRC2012_img_train.tar" in message
    assert list(tmp_path.iterdir()) == []  # Nothing was created.


@pytest.mark.parametrize("name", [
    "mnist", "CIFAR10", "cifar10_corrupted", "cifar10_corrupted/contrast_6",
    "cifar10_corrupted/glass_blur_1", "cifar10_corrupted/contrast", None,
])
def test_bad_name_raises(tmp_path, name):
    for call in (lambda: load_tfds_split(name, "test", str(tmp_path)),
                 lambda: num_examples(name, "test", str(tmp_path)),
                 lambda: num_classes(name)):
        with pytest.raises(ValueError, match=r"name must be one of \['cifar10'"):
            call()


def test_num_classes():
    assert [num_classes(n) for n in TFDS_IMAGE_DATASETS] == [10, 100, 1000]
    assert all(num_classes(cifar10_corrupted_name(c, s)) == 10
               for c in CIFAR10_CORRUPTIONS for s in CORRUPTION_SEVERITIES)


def test_corruptions_match_tfds_builder_configs():
    from tensorflow_datasets.image_classification import cifar10_corrupted

    configs = cifar10_corrupted.Cifar10Corrupted.BUILDER_CONFIGS
    assert [c.name for c in configs] == [
        cifar10_corrupted_name(c, s)[len("cifar10_corrupted/"):]
        for c in CIFAR10_CORRUPTIONS for s in CORRUPTION_SEVERITIES]
    assert len(CIFAR10_CORRUPTIONS) == 19
    assert CORRUPTION_SEVERITIES == (1, 2, 3, 4, 5)
    assert cifar10_corrupted_name("frosted_glass_blur", 5) == (
        "cifar10_corrupted/frosted_glass_blur_5")


@pytest.mark.parametrize("corruption,severity,argument", [
    ("glass_blur", 1, "corruption"), ("Contrast", 1, "corruption"), (None, 1, "corruption"),
    ("contrast", 0, "severity"), ("contrast", 6, "severity"), ("contrast", True, "severity"),
    ("contrast", 3.0, "severity"), ("contrast", "3", "severity"),
])
def test_cifar10_corrupted_name_validates(corruption, severity, argument):
    with pytest.raises(ValueError, match=f"{argument} must be one of .*got {argument}="):
        cifar10_corrupted_name(corruption, severity)


def test_cifar10_corrupted_name_accepts_numpy_int():
    assert cifar10_corrupted_name("snow", np.int64(2)) == "cifar10_corrupted/snow_2"


# --------------------------------------------------------------------------
# preprocess_cifar.
# --------------------------------------------------------------------------


def _random_image(seed, shape=(32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_preprocess_cifar_eval_matches_numpy():
    image = _random_image(1)
    image[0, 0] = 0
    image[0, 1] = 255
    x, y = preprocess_cifar(tf.constant(image), tf.constant(7, tf.int64),
                            seed=tf.constant([1, 2]), training=False)
    expected = (image / 255.0 - CIFAR_MEAN) / CIFAR_STD
    assert x.dtype == tf.float32 and x.shape == (32, 32, 3)
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=2e-6)
    assert y.dtype == tf.int32 and int(y) == 7
    # The constants are the documented ones.
    np.testing.assert_array_equal(tfds_images.CIFAR_MEAN, CIFAR_MEAN)
    np.testing.assert_array_equal(tfds_images.CIFAR_STD, CIFAR_STD)


def _cifar_candidates(image):
    """All 81 windows of the zero-padded image and their mirror images."""
    padded = np.pad(image / 255.0, [(4, 4), (4, 4), (0, 0)])  # Zero padding.
    for top, left, flip in itertools.product(range(9), range(9), (False, True)):
        window = padded[top:top + 32, left:left + 32]
        if flip:
            window = window[:, ::-1]
        yield (top, left, flip), (window - CIFAR_MEAN) / CIFAR_STD


def test_preprocess_cifar_training_is_a_padded_window():
    image = _random_image(2)
    candidates = list(_cifar_candidates(image))
    found = []
    for s in range(24):
        x, y = preprocess_cifar(image, 3, seed=tf.constant([s, 99]), training=True)
        assert x.shape == (32, 32, 3) and x.dtype == tf.float32 and int(y) == 3
        matches = [where for where, window in candidates
                   if np.allclose(x.numpy(), window, rtol=0, atol=2e-6)]
        assert len(matches) == 1, f"seed {s}: output is not one padded window"
        found.append(matches[0])
    offsets = {(top, left) for top, left, _ in found}
    flips = {flip for _, _, flip in found}
    assert len(offsets) >= 10  # Offsets vary with the seed...
    assert any(o != (4, 4) for o in offsets)  # ...and use the zero padding,
    assert flips == {False, True}  # and both flips occur.


def test_preprocess_cifar_training_seeded():
    image = tf.constant(_random_image(3))
    outputs = [preprocess_cifar(image, 0, seed=tf.constant(s), training=True)[0].numpy()
               for s in ([5, 6], [5, 6], [5, 7], [6, 6])]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])
    assert not np.array_equal(outputs[0], outputs[3])
    # int64 seeds work too (as made by Dataset.enumerate).
    x64 = preprocess_cifar(image, 0, seed=tf.constant([5, 6], tf.int64), training=True)[0]
    assert x64.shape == (32, 32, 3)


def test_preprocess_cifar_in_dataset_map():
    images = np.stack([_random_image(s) for s in range(4)])
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(4)))

    def mapped(training):
        return ds.enumerate().map(
            lambda i, xy: preprocess_cifar(xy[0], xy[1], tf.stack([tf.constant(0, tf.int64), i]),
                                           training))

    train_a, train_b = _as_numpy(mapped(True)), _as_numpy(mapped(True))
    for (a, la), (b, lb), (i, label) in zip(train_a, train_b, zip(images, range(4))):
        np.testing.assert_array_equal(a, b)
        assert la == lb == label and la.dtype == np.int32
        eager = preprocess_cifar(i, label, tf.constant([0, label], tf.int64), True)[0]
        np.testing.assert_array_equal(a, eager.numpy())
    for (x, _), image in zip(_as_numpy(mapped(False)), images):
        np.testing.assert_allclose(x, (image / 255.0 - CIFAR_MEAN) / CIFAR_STD, atol=2e-6)


# --------------------------------------------------------------------------
# preprocess_imagenet.
# --------------------------------------------------------------------------


def _resize_bilinear(image, size):
    """NumPy bilinear resize with half-pixel centres (tf.image.resize)."""

    def coordinates(out_size, in_size):
        x = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        low = np.floor(x).astype(int)
        return (np.clip(low, 0, in_size - 1), np.clip(low + 1, 0, in_size - 1), x - low)

    y0, y1, fy = coordinates(size, image.shape[0])
    x0, x1, fx = coordinates(size, image.shape[1])
    fx = fx[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy[:, None, None]) + bottom * fy[:, None, None]


@pytest.mark.parametrize("shape,top,left,side", [
    ((10, 13, 3), 1, 3, 8),  # floor(0.875 * 10) = 8; offsets (2+1)//2, (5+1)//2.
    ((13, 10, 3), 3, 1, 8),
    ((16, 16, 3), 1, 1, 14),
])
@pytest.mark.parametrize("image_size", [None, 6, 11])
def test_preprocess_imagenet_eval_matches_numpy(shape, top, left, side, image_size):
    image = _random_image(4, shape)
    size = side if image_size is None else image_size
    x, y = preprocess_imagenet(tf.constant(image), 5, seed=tf.constant([0, 0]),
                               training=False, image_size=size)
    crop = image[top:top + side, left:left + side] / 255.0
    expected = (_resize_bilinear(crop, size) - IMAGENET_MEAN) / IMAGENET_STD
    assert x.shape == (size, size, 3) and x.dtype == tf.float32
    assert y.dtype == tf.int32 and int(y) == 5
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)


def test_preprocess_imagenet_training():
    image = tf.constant(_random_image(5, (40, 57, 3)))
    outputs = {s: preprocess_imagenet(image, 1, seed=tf.constant([s, 1]), training=True,
                                      image_size=16)[0].numpy() for s in range(8)}
    again = preprocess_imagenet(image, 1, seed=tf.constant([0, 1]), training=True,
                                image_size=16)[0].numpy()
    np.testing.assert_array_equal(outputs[0], again)
    assert all(o.shape == (16, 16, 3) and o.dtype == np.float32 for o in outputs.values())
    assert len({o.tobytes() for o in outputs.values()}) == len(outputs)
    # A constant image stays constant: crop, resize and flip move no value.
    grey = np.full((30, 20, 3), [10, 128, 250], np.uint8)
    x = preprocess_imagenet(grey, 1, seed=tf.constant([4, 2]), training=True,
                            image_size=8)[0].numpy()
    expected = (np.array([10, 128, 250]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x, np.broadcast_to(expected, (8, 8, 3)), atol=1e-5)


def test_preprocess_imagenet_training_crop_is_a_box_of_the_image():
    # Rows hold their index, so each output row reveals which input rows it
    # interpolates: a crop of at least 8% of the area, at most the image.
    height, width = 64, 48
    rows = np.repeat(np.arange(height, dtype=np.uint8)[:, None], width, axis=1)
    image = np.stack([rows] * 3, axis=-1)
    for s in range(10):
        x = preprocess_imagenet(image, 0, seed=tf.constant([s, 3]), training=True,
                                image_size=32)[0].numpy()
        value = x[..., 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # Back to [0, 1].
        row_index = value * 255.0
        # Constant along each output row (flip-invariant), increasing down.
        np.testing.assert_allclose(row_index, row_index[:, :1] * np.ones((1, 32)), atol=1e-3)
        assert np.all(np.diff(row_index[:, 0]) >= -1e-3)
        span = row_index[-1, 0] - row_index[0, 0]
        assert -1e-3 <= row_index[0, 0] and row_index[-1, 0] <= height - 1 + 1e-3
        # Crop height >= sqrt(0.08 * 3/4) of the image height, roughly.
        assert span > 0.2 * height * (31 / 32) - 2


def test_imagenet_constants():
    np.testing.assert_array_equal(tfds_images.IMAGENET_MEAN, IMAGENET_MEAN)
    np.testing.assert_array_equal(tfds_images.IMAGENET_STD, IMAGENET_STD)
    assert tfds_images.CENTRAL_CROP_FRACTION == 0.875
