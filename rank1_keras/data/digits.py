"""Offline loader for scikit-learn's bundled 8x8 hand-written digits.

The digits are the test set of the "Optical Recognition of Handwritten
Digits" data set of the UCI Machine Learning Repository (Alpaydin & Kaynak,
1998; https://archive.ics.uci.edu/dataset/80), as shipped inside scikit-learn
(``sklearn.datasets.load_digits``; scikit-learn is under the BSD-3-Clause
licence). It holds 1,797 greyscale 8x8 images of the digits 0 to 9 (about 180
per class); each pixel counts the "on" bits of a 4x4 block of the original
32x32 bitmap, so pixel values are the integers 0 to 16.

This module never touches the network: scikit-learn reads the data from a
file inside its own package. scikit-learn is imported only when
``load_digits`` is called (it is not imported with this module, which imports
NumPy only and no TensorFlow); if it is missing, ``DataNotFoundError`` says to
run ``pip install scikit-learn``.

With ``image_size=(28, 28)`` the digits are upsampled to the size of
Fashion-MNIST images, so they can serve as an out-of-distribution set for
Fashion-MNIST models. The resize (``resize_bilinear``) is plain bilinear
interpolation written in NumPy, with the "half-pixel centres" alignment of
``tf.image.resize(..., method="bilinear")`` and ``keras.layers.Resizing``
(TensorFlow 2; no antialiasing): output pixel ``i`` of ``n_out`` samples the
input at ``(i + 0.5) * n_in / n_out - 0.5``, clamped to ``[0, n_in - 1]``, so
the outer corners of the input and output pixel grids coincide and
downsampling by an integer factor averages neighbouring pixels symmetrically.
``resize_bilinear(..., align_corners=True)`` gives the other common convention
(``tf.compat.v1.image.resize_bilinear(align_corners=True)``), in which the
centres of the four corner pixels coincide.

Example:

>>> images, labels = load_digits()
>>> images.shape, images.dtype, labels.shape, labels.dtype
((1797, 8, 8, 1), dtype('float32'), (1797,), dtype('int64'))
>>> float(images.min()), float(images.max())
(0.0, 1.0)
>>> images_28, _ = load_digits(image_size=(28, 28))
>>> images_28.shape
(1797, 28, 28, 1)
"""

import numpy as np

from rank1_keras.data.fashion_mnist import DataNotFoundError

INSTALL_COMMAND = "pip install scikit-learn"

DIGITS_IMAGE_SIZE = 8
"""Height and width of the original images."""

DIGITS_MAX_VALUE = 16
"""Largest pixel value (the number of bits in a 4x4 block)."""

DIGITS_NUM_EXAMPLES = 1797
DIGITS_NUM_CLASSES = 10


def load_digits(image_size=None, normalize=True):
    """Loads scikit-learn's 1,797 hand-written digits as an image array.

    Args:
        image_size: ``None`` to keep the original 8x8 images, or a pair of
            positive integers ``(height, width)`` (e.g. ``(28, 28)``, the
            Fashion-MNIST size) to resize them with ``resize_bilinear``
            (half-pixel centres, as ``tf.image.resize``; see the module
            docstring).
        normalize: If ``True``, pixel values are divided by 16 so they lie in
            ``[0, 1]`` (the value 16 becomes exactly ``1.0``); if ``False``
            they keep the original ``[0, 16]`` scale. Images are ``float32``
            either way (resized pixels are not integers).

    Returns:
        A tuple ``(images, labels)``: ``float32`` images of shape
        ``(1797, height, width, 1)`` (a trailing channel axis, as Keras
        ``Conv2D`` expects with ``channels_last``) and ``int64`` labels of
        shape ``(1797,)``: the digit shown, 0 to 9.

    Raises:
        ValueError: If ``image_size`` is not ``None`` or a pair of positive
            integers.
        DataNotFoundError: If scikit-learn is not installed (the message
            gives the install command).

    Example:

    >>> images, labels = load_digits(image_size=(28, 28), normalize=False)
    >>> images.shape, float(images.max()) <= 16.0
    ((1797, 28, 28, 1), True)
    """
    size = _check_image_size(image_size)
    try:
        from sklearn import datasets
    except ImportError as e:
        raise DataNotFoundError(
            "The digits data set ships with scikit-learn, which could not be "
            f"imported ({e}). Install it with `{INSTALL_COMMAND}`."
        ) from e

    bunch = datasets.load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if size is not None and size != images.shape[1:]:
        images = resize_bilinear(images, size)
    if normalize:
        # Resized pixels are convex combinations of the originals, so they
        # stay in [0, 16] up to rounding; the clip makes [0, 1] exact.
        images = np.clip(images / DIGITS_MAX_VALUE, 0.0, 1.0)
    return images[..., np.newaxis].astype(np.float32), labels


def resize_bilinear(images, size, align_corners=False):
    """Resizes the two last axes of ``images`` with bilinear interpolation.

    Args:
        images: Array of shape ``(..., height, width)`` (no channel axis; put
            the channel axis first, or loop, to resize colour images).
        size: Pair of positive integers ``(new_height, new_width)``.
        align_corners: If ``False`` (the default, as TensorFlow 2's
            ``tf.image.resize`` and ``keras.layers.Resizing``), output pixel
            ``i`` of ``n_out`` samples the input at
            ``(i + 0.5) * n_in / n_out - 0.5`` clamped to ``[0, n_in - 1]``
            ("half-pixel centres": the outer corners of the pixel grids
            coincide). If ``True`` (``tf.compat.v1.image.resize_bilinear``
            with ``align_corners=True``), it samples at
            ``i * (n_in - 1) / (n_out - 1)``, so the centres of the corner
            pixels coincide and are copied exactly.

    Returns:
        A ``float64`` array of shape ``(..., new_height, new_width)``. Each
        axis is interpolated in the form ``a + t * (b - a)`` between the two
        nearest input pixels ``a`` and ``b`` (rows first, then columns), so a
        constant image stays exactly constant, and enlarging the 2x2 image
        ``[[0, 1], [2, 3]]`` to 3x3 gives
        ``[[0, .5, 1], [1, 1.5, 2], [2, 2.5, 3]]`` under either convention.

    Raises:
        ValueError: If ``size`` is not a pair of positive integers, or if
            ``images`` has fewer than 2 dimensions or an empty image axis.

    Example:

    >>> resize_bilinear(np.array([[0.0, 4.0]]), (1, 4))
    array([[0., 1., 3., 4.]])
    >>> resize_bilinear(np.array([[0.0, 4.0]]), (1, 3), align_corners=True)
    array([[0., 2., 4.]])
    """
    size = _check_image_size(size, name="size")
    images = np.asarray(images, dtype=np.float64)
    if images.ndim < 2 or 0 in images.shape[-2:]:
        raise ValueError(
            "images must have shape (..., height, width) with height and "
            f"width >= 1; got shape {images.shape}"
        )
    # Interpolate along the rows (axis -2), then along the columns (axis -1).
    low, high, t = _sample_points(images.shape[-2], size[0], align_corners)
    top = images[..., low, :]
    images = top + t[:, np.newaxis] * (images[..., high, :] - top)
    low, high, t = _sample_points(images.shape[-1], size[1], align_corners)
    left = images[..., low]
    return left + t * (images[..., high] - left)


def _sample_points(n_in, n_out, align_corners):
    """Returns the neighbour indices and weights for one resized axis.

    Output pixel ``i`` is ``x[low[i]] + t[i] * (x[high[i]] - x[low[i]])``.
    """
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        if n_out > 1:
            src = i * ((n_in - 1) / (n_out - 1))
        else:
            src = np.zeros(1)
    else:
        src = (i + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, src - low


def _check_image_size(image_size, name="image_size"):
    """Returns ``image_size`` as a tuple of two ints, or ``None``."""
    if image_size is None and name == "image_size":
        return None
    try:
        height, width = image_size
        valid = all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool)
            and d > 0
            for d in (height, width)
        )
    except (TypeError, ValueError):
        valid = False
    if not valid:
        allowed = "None or " if name == "image_size" else ""
        raise ValueError(
            f"{name} must be {allowed}a pair of positive integers "
            f"(height, width), e.g. (28, 28); got {image_size!r}"
        )
    return int(height), int(width)
