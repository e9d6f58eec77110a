"""CIFAR-10-C-style distribution shifts for in-memory images (NumPy only).

Three of the corruptions of CIFAR-10-C (Hendrycks & Dietterich, 2019,
"Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR; code at https://github.com/hendrycks/robustness,
``ImageNet-C/create_c/make_cifar_c.py``, Apache-2.0), with the same
severity parameters, so that the small embedded data sets (digits,
Fashion-MNIST) can be evaluated under shift without any download. For an
image ``x`` in ``[0, 1]`` of shape ``(H, W, C)`` and severity ``s`` in 1..5:

* ``gaussian_noise``: ``x + N(0, c^2)`` i.i.d. per value, with standard
  deviation ``c = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]``.
* ``gaussian_blur``: a Gaussian filter of standard deviation
  ``sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[s - 1]`` pixels over H and W, each
  channel separately. The reference calls ``skimage.filters.gaussian(x,
  sigma, multichannel=True)``, whose defaults are ``mode='nearest'`` (the
  edge pixel is repeated outside the image) and ``truncate=4.0``, i.e.
  ``scipy.ndimage.gaussian_filter(x, (sigma, sigma, 0), mode='nearest',
  truncate=4.0)``; it is reimplemented here as a separable NumPy
  convolution with scipy's kernel (radius ``int(4 * sigma + 0.5)``,
  weights ``exp(-k^2 / (2 sigma^2))`` normalised to sum 1), so scipy is not
  needed at run time.
* ``contrast``: ``(x - m) * c + m`` with ``c = (0.75, 0.5, 0.4, 0.3,
  0.15)[s - 1]`` and ``m`` the mean of the image over H and W, one mean per
  channel (``np.mean(x, axis=(0, 1), keepdims=True)`` in the reference; the
  same as the mean over H, W and C for one-channel images).

Every result is then clipped to ``[0, 1]``; the clipping is part of the
CIFAR-10-C definition (``np.clip(..., 0, 1)`` in the reference). Unlike the
published CIFAR-10-C files, the output is not quantised back to ``uint8``.

Example:

>>> import numpy as np
>>> images = np.full((2, 4, 4, 1), 0.5)
>>> corrupt_images(images, "contrast", 5)[0, 0, 0, 0]
np.float32(0.5)
>>> noisy = corrupt_images(images, "gaussian_noise", 3, seed=1)
>>> noisy.dtype, noisy.shape, bool(np.all((noisy >= 0) & (noisy <= 1)))
(dtype('float32'), (2, 4, 4, 1), True)
"""

import numbers

import numpy as np

from rank1_keras import validation
from rank1_keras.data.splits import first_examples

SHIFT_CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast")
"""Corruptions implemented by ``corrupt_images``."""

SHIFT_SEVERITIES = (1, 2, 3, 4, 5)

SEVERITY_PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sigma in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor
}
"""CIFAR-10-C parameter per severity 1..5 (``make_cifar_c.py``)."""

GAUSSIAN_TRUNCATE = 4.0
"""Kernel radius in standard deviations (scipy/skimage default)."""


def corrupt_images(images, corruption, severity, seed=0):
    """Applies a CIFAR-10-C corruption to a batch of images.

    Args:
        images: Float array-like of shape ``(N, H, W, C)`` with values in
            ``[0, 1]``.
        corruption: One of ``SHIFT_CORRUPTIONS``: ``"gaussian_noise"``,
            ``"gaussian_blur"`` or ``"contrast"`` (see the module docstring).
        severity: Integer from 1 (mildest) to 5.
        seed: Seed of the ``np.random.default_rng`` generator that draws the
            Gaussian noise (unused by the deterministic corruptions); the same
            seed gives the same output.

    Returns:
        float32 array of the input's shape, clipped to ``[0, 1]``.

    Raises:
        ValueError: Naming the bad argument and the allowed values.
    """
    validation.check_corruption(corruption, severity, SHIFT_CORRUPTIONS, SHIFT_SEVERITIES)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got seed={seed!r}.")
    x = np.asarray(images)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.floating)
                               or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(
            f"images must be a float array with values in [0, 1]; got dtype {x.dtype}."
        )
    if x.ndim != 4:
        raise ValueError(
            f"images must have shape (N, H, W, C) (4 dimensions); got shape {x.shape}."
        )
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("images must have finite values in [0, 1]; found NaN or infinity.")
    if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError(
            "images must have finite values in [0, 1]; got values in "
            f"[{x.min()}, {x.max()}] (divide uint8 images by 255)."
        )

    c = SEVERITY_PARAMETERS[corruption][int(severity) - 1]
    if corruption == "gaussian_noise":
        rng = np.random.default_rng(seed)
        x = x + rng.normal(loc=0.0, scale=c, size=x.shape)
    elif corruption == "gaussian_blur":
        x = gaussian_blur(x, c)
    else:  # contrast
        means = x.mean(axis=(1, 2), keepdims=True)
        x = (x - means) * c + means
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def shifted_sets(images, labels, corruptions=None, severities=SHIFT_SEVERITIES, count=0, seed=0):
    """Every (corruption, severity) of the first `count` images (0: all): {(corruption, severity): (images, labels)}.

    `corruptions`: names from ``SHIFT_CORRUPTIONS`` (None: all of them), all
    checked before any image is corrupted; `seed` seeds every ``corrupt_images``.
    """
    corruptions = SHIFT_CORRUPTIONS if corruptions is None else corruptions
    for corruption in corruptions:
        validation.check_choice(corruption, "corruptions", SHIFT_CORRUPTIONS)
    images, labels = first_examples((images, labels), count)
    return {
        (corruption, severity): (corrupt_images(images, corruption, severity, seed=seed), labels)
        for corruption in corruptions
        for severity in severities
    }


def _gaussian_kernel(sigma, truncate=GAUSSIAN_TRUNCATE):
    """scipy.ndimage's 1-D Gaussian kernel (order 0)."""
    radius = int(truncate * float(sigma) + 0.5)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (k / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(images, sigma, truncate=GAUSSIAN_TRUNCATE):
    """Blurs ``(N, H, W, C)`` images over H and W, channels separately.

    Equal, up to float rounding, to
    ``scipy.ndimage.gaussian_filter(images, (0, sigma, sigma, 0),
    mode='nearest', truncate=truncate)``; returns float64, unclipped.
    """
    x = np.asarray(images, dtype=np.float64)
    weights = _gaussian_kernel(sigma, truncate)
    radius = len(weights) // 2
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        # mode="edge" repeats the border pixel: scipy's mode="nearest".
        padded = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        out = np.zeros_like(x)
        for offset, w in enumerate(weights):
            out += w * np.take(padded, np.arange(offset, offset + n), axis=axis)
        x = out
    return x
