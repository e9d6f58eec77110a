"""Image classification pipelines over prepared TensorFlow Datasets (tfds).

Data sets (``TFDS_IMAGE_DATASETS`` and the CIFAR-10-C configurations):

* ``cifar10`` / ``cifar100``: CIFAR-10 and CIFAR-100 (Krizhevsky, 2009,
  "Learning Multiple Layers of Features from Tiny Images", technical report,
  University of Toronto; https://www.cs.toronto.edu/~kriz/cifar.html), 32x32
  colour images, 50,000 training and 10,000 test images in 10 or 100
  classes. The site publishes no licence; it asks users to cite the report.
* ``cifar10_corrupted/<corruption>_<severity>``: CIFAR-10-C (Hendrycks &
  Dietterich, 2019, "Benchmarking Neural Network Robustness to Common
  Corruptions and Perturbations", ICLR; https://github.com/hendrycks/robustness),
  the 10,000 CIFAR-10 test images under each of ``CIFAR10_CORRUPTIONS`` at
  ``CORRUPTION_SEVERITIES`` 1 to 5 (only a ``test`` split). The files are
  distributed on Zenodo (doi:10.5281/zenodo.2535967) under the Creative
  Commons Attribution 4.0 (CC BY 4.0) licence stated on that record.
* ``imagenet2012``: ILSVRC-2012 (Russakovsky et al., 2015, "ImageNet Large
  Scale Visual Recognition Challenge", IJCV 115), 1,281,167 training and
  50,000 validation images of varying size in 1,000 classes. It is only
  available under ImageNet's own terms of access (non-commercial research
  and education, https://image-net.org/download.php); tfds cannot download
  it and builds it from the tar files placed in its ``manual_dir``.

Nothing here downloads anything: ``load_tfds_split`` only reads a data
directory that already holds the prepared tfds files (``<data_dir>/<name>/
<version>/``). Prepare it once, on a machine that has the data, with e.g.
``tfds build cifar10 --data_dir=/path/to/tensorflow_datasets`` (ImageNet:
``tfds build imagenet2012 --data_dir=... --manual_dir=<dir with
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar>``) and copy that
directory over. ``tensorflow_datasets`` is imported inside the functions, so
importing this module stays cheap.

The ``preprocess_*`` functions work eagerly and inside ``tf.data.Dataset.map``
(graph mode). Their random augmentations use only stateless ops driven by an
explicit ``seed`` (an integer tensor of shape ``[2]``), so the same seed
always gives the same augmented example, which makes an interrupted training
run resumable exactly. A per-example seed can be made from the epoch and the
example's position, e.g. ``ds.enumerate().map(lambda i, xy:
preprocess_cifar(*xy, seed=tf.stack([epoch, i]), training=True))`` with an
int64 ``epoch``.

Example (synthetic data; no tfds files needed):

>>> import numpy as np
>>> import tensorflow as tf
>>> image = tf.constant(np.full((32, 32, 3), 128, np.uint8))
>>> x, y = preprocess_cifar(image, 3, seed=tf.constant([0, 1]), training=True)
>>> x.shape, x.dtype, y.dtype
(TensorShape([32, 32, 3]), tf.float32, tf.int32)
>>> num_classes(cifar10_corrupted_name("contrast", 5))
10
"""

import os

import tensorflow as tf

from rank1_keras import validation
from rank1_keras.data.fashion_mnist import DataNotFoundError

TFDS_IMAGE_DATASETS = ("cifar10", "cifar100", "imagenet2012")
"""Names accepted by ``load_tfds_split`` besides the CIFAR-10-C configs."""

CIFAR10_CORRUPTIONS = (
    "brightness",
    "contrast",
    "defocus_blur",
    "elastic",
    "fog",
    "frost",
    "frosted_glass_blur",
    "gaussian_blur",
    "gaussian_noise",
    "impulse_noise",
    "jpeg_compression",
    "motion_blur",
    "pixelate",
    "saturate",
    "shot_noise",
    "snow",
    "spatter",
    "speckle_noise",
    "zoom_blur",
)
"""The 19 corruption types of tfds' ``cifar10_corrupted`` builder (the 15
benchmark corruptions plus 4 extra), in the order of its builder configs
(alphabetical, as in ``tensorflow_datasets/image_classification/
cifar10_corrupted.py``). tfds calls ``glass_blur`` ``frosted_glass_blur`` and
``elastic_transform`` ``elastic``."""

CORRUPTION_SEVERITIES = (1, 2, 3, 4, 5)
"""Severity levels of every CIFAR-10-C corruption."""

CIFAR10_CORRUPTED = "cifar10_corrupted"

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000,
                CIFAR10_CORRUPTED: 10}

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel (RGB) mean of the CIFAR-10 training images scaled to [0, 1];
``preprocess_cifar`` uses it for CIFAR-10, CIFAR-10-C and CIFAR-100 alike."""

CIFAR_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel (RGB) standard deviation of the CIFAR-10 training pixels in
[0, 1] (not the often copied ``(0.2023, 0.1994, 0.2010)``)."""

CIFAR_PAD = 4
"""Zero pixels added on each side before the random training crop."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel (RGB) ImageNet mean in [0, 1] (the torchvision constants)."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel (RGB) ImageNet standard deviation in [0, 1]."""

CENTRAL_CROP_FRACTION = 0.875
"""Side of the evaluation centre crop over the shorter image side (224/256)."""

IMAGENET_AREA_RANGE = (0.08, 1.0)
IMAGENET_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
IMAGENET_MIN_OBJECT_COVERED = 0.1
IMAGENET_MAX_ATTEMPTS = 10


def cifar10_corrupted_name(corruption, severity):
    """Returns the tfds name ``'cifar10_corrupted/<corruption>_<severity>'``.

    Args:
        corruption: One of ``CIFAR10_CORRUPTIONS``.
        severity: An integer in ``CORRUPTION_SEVERITIES`` (1 to 5).

    Raises:
        ValueError: Naming the bad argument and the allowed values.

    >>> cifar10_corrupted_name("gaussian_noise", 3)
    'cifar10_corrupted/gaussian_noise_3'
    """
    validation.check_corruption(corruption, severity, CIFAR10_CORRUPTIONS, CORRUPTION_SEVERITIES)
    return f"{CIFAR10_CORRUPTED}/{corruption}_{int(severity)}"


def _check_name(name):
    """Returns the key of ``_NUM_CLASSES`` for a valid dataset name."""
    if isinstance(name, str):
        if name in TFDS_IMAGE_DATASETS:
            return name
        prefix = CIFAR10_CORRUPTED + "/"
        if name.startswith(prefix):
            config = name[len(prefix):]
            corruption, _, severity = config.rpartition("_")
            if (corruption in CIFAR10_CORRUPTIONS
                    and severity in {str(s) for s in CORRUPTION_SEVERITIES}):
                return CIFAR10_CORRUPTED
    raise ValueError(
        f"name must be one of {list(TFDS_IMAGE_DATASETS)} or "
        f"'{CIFAR10_CORRUPTED}/<corruption>_<severity>' with corruption in "
        f"{list(CIFAR10_CORRUPTIONS)} and severity in "
        f"{list(CORRUPTION_SEVERITIES)}; got name={name!r}."
    )


def num_classes(name):
    """Number of classes of a data set: 10, 100, 1000 (CIFAR-10-C: 10).

    >>> num_classes("cifar100"), num_classes("imagenet2012")
    (100, 1000)
    """
    return _NUM_CLASSES[_check_name(name)]


def _how_to_prepare(name, data_dir):
    command = f"tfds build {name} --data_dir={data_dir}"
    if name == "imagenet2012":
        return (
            f"Prepare it offline with `{command} --manual_dir=<manual_dir>`, where "
            "<manual_dir> holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            "(obtained under ImageNet's terms of access)"
        )
    return (
        f"Prepare it with `{command}` on a machine that has the data (or can "
        "download it), then copy that data_dir here"
    )


def _not_found(name, data_dir, reason):
    return DataNotFoundError(
        f"tfds data set {name!r} is not prepared in data_dir={data_dir!r}: "
        f"{reason}. This loader never downloads. {_how_to_prepare(name, data_dir or '<data_dir>')} "
        f"(files go to <data_dir>/{name}/<version>/)."
    )


def _builder(name, data_dir):
    """Validates the arguments and returns the tfds builder (no download)."""
    _check_name(name)
    if data_dir is None:
        raise _not_found(name, None, "no data_dir was given")
    data_dir = os.fspath(data_dir)
    if not tf.io.gfile.isdir(data_dir):
        raise _not_found(name, data_dir, "the directory does not exist")
    import tensorflow_datasets as tfds  # Lazy: importing tfds is slow.

    return tfds.builder(name, data_dir=data_dir), data_dir


def load_tfds_split(name, split, data_dir):
    """Reads one split of a prepared tfds image data set, unbatched.

    Args:
        name: One of ``TFDS_IMAGE_DATASETS`` or
            ``'cifar10_corrupted/<corruption>_<severity>'`` (see
            ``cifar10_corrupted_name``).
        split: A split of the data set (``'train'``, ``'test'``;
            ImageNet: ``'validation'``; CIFAR-10-C: only ``'test'``) or a
            tfds slice such as ``'train[:90%]'`` or ``'train[45000:]'``.
        data_dir: The tfds data directory holding ``<name>/<version>/``.

    Returns:
        A ``tf.data.Dataset`` of ``(image, label)``: ``uint8`` images of shape
        ``(H, W, 3)`` (32x32 for CIFAR; varying for ImageNet) and ``int32``
        labels in ``[0, num_classes(name))``, in file order (files are not
        shuffled).

    Raises:
        ValueError: If ``name`` or ``split`` is not valid.
        DataNotFoundError: If ``data_dir`` is None or missing or the data set
            is not prepared in it (the message says how to prepare it).
    """
    builder, data_dir = _builder(name, data_dir)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False,
                                as_supervised=True)
    except AssertionError as error:
        # tfds' as_dataset asserts that the prepared directory exists.
        raise _not_found(name, data_dir, "no prepared files under "
                         f"{builder.data_dir}") from error
    except (ValueError, KeyError) as error:
        if not builder.is_prepared():
            raise _not_found(name, data_dir, "no dataset_info.json found "
                             f"in {builder.data_dir}") from error
        raise ValueError(
            f"Bad split {split!r} for {name!r}: {error}. Prepared splits: "
            f"{sorted(builder.info.splits)}."
        ) from error
    return ds.map(lambda image, label: (image, tf.cast(label, tf.int32)),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def num_examples(name, split, data_dir):
    """Number of examples of a (possibly sliced) split, from the tfds metadata.

    Raises the same errors as ``load_tfds_split``.
    """
    builder, data_dir = _builder(name, data_dir)
    if not builder.is_prepared():
        raise _not_found(name, data_dir, "no dataset_info.json found in "
                         f"{builder.data_dir}")
    try:
        return int(builder.info.splits[split].num_examples)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Bad split {split!r} for {name!r}: {error}. Prepared splits: "
            f"{sorted(builder.info.splits)}."
        ) from error


def _to_unit_float(image):
    """uint8 [0, 255] -> float32 [0, 1]; floating images are assumed in [0, 1]."""
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    if image.dtype.is_floating:
        return tf.cast(image, tf.float32)
    raise ValueError(f"image must be uint8 or floating; got dtype {image.dtype.name}.")


def _split_seed(seed):
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), num=2)
    return seeds[0], seeds[1]


def _normalize(image, mean, std):
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def preprocess_cifar(image, label, seed, training):
    """CIFAR preprocessing: optional augmentation, then mean/std normalisation.

    The image is scaled to float32 ``[0, 1]`` (``x / 255`` for ``uint8``).
    With ``training=True`` it is then zero-padded by ``CIFAR_PAD`` = 4 black
    pixels on each side (40x40 for CIFAR; zero padding, as in He et al., 2016
    and torchvision's ``RandomCrop(32, padding=4)``), a random window of the
    input's size (32x32) is cropped with ``tf.image.stateless_random_crop``
    and flipped left-right with probability 1/2 with
    ``tf.image.stateless_random_flip_left_right``; the crop and flip seeds are
    derived from ``seed`` with ``tf.random.experimental.stateless_split``.
    Finally ``(x - CIFAR_MEAN) / CIFAR_STD`` per channel, with
    ``CIFAR_MEAN = (0.4914, 0.4822, 0.4465)`` and
    ``CIFAR_STD = (0.2470, 0.2435, 0.2616)``.

    Args:
        image: ``(H, W, 3)`` ``uint8`` (or float in ``[0, 1]``) image.
        label: Integer label, returned as ``int32``.
        seed: Integer tensor of shape ``[2]``; the same seed gives the same
            augmentation. Unused when ``training`` is False.
        training: Python bool: augment (True) or not.

    Returns:
        ``(image, label)``: float32 ``(H, W, 3)`` and int32.
    """
    image = _to_unit_float(image)
    if training:
        crop_seed, flip_seed = _split_seed(seed)
        size = image.shape if image.shape.is_fully_defined() else tf.shape(image)
        padded = tf.pad(image, [[CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
        cropped = tf.image.stateless_random_crop(padded, size=size, seed=crop_seed)
        image = tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)
    return _normalize(image, CIFAR_MEAN, CIFAR_STD), tf.cast(label, tf.int32)


def _central_crop(image):
    """Square centre crop of side ``floor(0.875 * min(H, W))`` (at least 1)."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    crop = tf.cast(CENTRAL_CROP_FRACTION * tf.cast(tf.minimum(height, width), tf.float32),
                   tf.int32)
    crop = tf.maximum(crop, 1)
    top = (height - crop + 1) // 2
    left = (width - crop + 1) // 2
    return tf.slice(image, tf.stack([top, left, 0]), tf.stack([crop, crop, -1]))


def _resize(image, image_size):
    # Bilinear with half-pixel centres and no antialiasing (tf.image.resize
    # default); returns float32 in the input's value range.
    return tf.image.resize(image, [image_size, image_size], method="bilinear")


def preprocess_imagenet(image, label, seed, training, image_size=224):
    """ResNet-style ImageNet preprocessing for images of any size.

    Training (as the TensorFlow ResNet reference, ``resnet_preprocessing.py``
    of ``tensorflow/tpu``): a box is sampled with
    ``tf.image.stateless_sample_distorted_bounding_box`` over the whole image
    (area fraction in ``[0.08, 1]``, aspect ratio in ``[3/4, 4/3]``,
    ``min_object_covered=0.1``, 10 attempts); that crop is resized to
    ``image_size`` x ``image_size`` and flipped left-right with probability
    1/2 (``tf.image.stateless_random_flip_left_right``). When no box is
    found in 10 attempts (the sampler then returns the whole image) the
    evaluation crop is used instead, as in the reference.

    Evaluation: the central square of side ``floor(0.875 * min(H, W))``
    (224/256; offsets ``(H - side + 1) // 2`` and ``(W - side + 1) // 2``) is
    resized to ``image_size`` x ``image_size``.

    Resizing is bilinear (``tf.image.resize``: half-pixel centres, no
    antialiasing). The result is scaled to ``[0, 1]`` and normalised by
    ``IMAGENET_MEAN = (0.485, 0.456, 0.406)`` and
    ``IMAGENET_STD = (0.229, 0.224, 0.225)``.

    Args:
        image: ``(H, W, 3)`` ``uint8`` (or float in ``[0, 1]``) image.
        label: Integer label, returned as ``int32``.
        seed: Integer tensor of shape ``[2]`` driving the stateless ops (box
            and flip seeds are split from it). Unused when not training.
        training: Python bool.
        image_size: Side of the square output.

    Returns:
        ``(image, label)``: float32 ``(image_size, image_size, 3)`` and int32.
    """
    image = _to_unit_float(image)
    if training:
        box_seed, flip_seed = _split_seed(seed)
        shape = tf.shape(image)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4]),
            seed=box_seed,
            min_object_covered=IMAGENET_MIN_OBJECT_COVERED,
            aspect_ratio_range=IMAGENET_ASPECT_RATIO_RANGE,
            area_range=IMAGENET_AREA_RANGE,
            max_attempts=IMAGENET_MAX_ATTEMPTS,
            use_image_if_no_bounding_boxes=True,
        )
        whole_image = tf.reduce_all(tf.equal(size[:2], shape[:2]))
        cropped = tf.cond(
            whole_image,
            lambda: _central_crop(image),
            lambda: tf.slice(image, begin, size),
        )
        image = _resize(cropped, image_size)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    else:
        image = _resize(_central_crop(image), image_size)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return _normalize(image, IMAGENET_MEAN, IMAGENET_STD), tf.cast(label, tf.int32)
