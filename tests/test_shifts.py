"""Tests for rank1_keras.data.shifts (CIFAR-10-C-style corruptions)."""

import numpy as np
import pytest
from scipy import ndimage

from rank1_keras.data import SHIFT_CORRUPTIONS
from rank1_keras.data import corrupt_images
from rank1_keras.data import shifts

# Hendrycks & Dietterich's make_cifar_c.py parameters, severities 1..5.
NOISE_C = [0.04, 0.06, 0.08, 0.09, 0.10]
BLUR_SIGMA = [0.4, 0.6, 0.7, 0.8, 1.0]
CONTRAST_C = [0.75, 0.5, 0.4, 0.3, 0.15]


def _images(shape=(3, 12, 10, 3), seed=0, low=0.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_noise_statistics(severity):
    c = NOISE_C[severity - 1]
    grey = np.full((32, 32, 32, 3), 0.5)  # 98,304 values; 0.5 is 5 sigma from a bound.
    out = corrupt_images(grey, "gaussian_noise", severity, seed=severity)
    noise = out.astype(np.float64) - 0.5
    n = noise.size
    assert abs(noise.mean()) < 4 * c / np.sqrt(n)
    assert abs(noise.std() / c - 1) < 4 / np.sqrt(2 * n) + 1e-3
    # Independent across values: neighbouring pixels uncorrelated.
    flat = noise.reshape(-1)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 4 / np.sqrt(n)


def test_gaussian_noise_definition_and_seed():
    images = _images()
    for severity in (1, 5):
        expected = np.clip(images + np.random.default_rng(7).normal(
            scale=NOISE_C[severity - 1], size=images.shape), 0, 1)
        out = corrupt_images(images, "gaussian_noise", severity, seed=7)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    a = corrupt_images(images, "gaussian_noise", 3, seed=1)
    b = corrupt_images(images, "gaussian_noise", 3, seed=1)
    c = corrupt_images(images, "gaussian_noise", 3, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The default seed is 0.
    np.testing.assert_array_equal(corrupt_images(images, "gaussian_noise", 3),
                                  corrupt_images(images, "gaussian_noise", 3, seed=0))


def test_clipping_at_the_bounds():
    images = np.zeros((4, 8, 8, 1))
    images[:2] = 1.0
    for corruption in SHIFT_CORRUPTIONS:
        for severity in range(1, 6):
            out = corrupt_images(images, corruption, severity)
            assert out.dtype == np.float32 and out.shape == images.shape
            assert out.min() >= 0.0 and out.max() <= 1.0
    noisy = corrupt_images(images, "gaussian_noise", 5)
    assert np.all(noisy[:2] <= 1.0) and np.mean(noisy[:2] == 1.0) > 0.4
    assert np.mean(noisy[2:] == 0.0) > 0.4


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_contrast_closed_form(severity):
    c = CONTRAST_C[severity - 1]
    images = _images(seed=severity)
    means = images.mean(axis=(1, 2), keepdims=True)  # Per image and channel.
    expected = np.clip((images - means) * c + means, 0, 1)
    out = corrupt_images(images, "contrast", severity)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


def test_contrast_keeps_per_channel_means():
    # Channels with very different means: each keeps its own mean (the
    # reference averages over H and W only), and deviations scale by c.
    images = _images(shape=(2, 9, 9, 3), low=0.3, high=0.45)
    images[..., 1] += 0.3
    images[..., 2] -= 0.2
    out = corrupt_images(images, "contrast", 2).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=1e-6)
    deviation_in = images - images.mean(axis=(1, 2), keepdims=True)
    deviation_out = out - out.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(deviation_out, 0.5 * deviation_in, atol=1e-6)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_blur_matches_scipy(severity):
    sigma = BLUR_SIGMA[severity - 1]
    images = _images(shape=(2, 11, 14, 3), seed=severity)
    out = corrupt_images(images, "gaussian_blur", severity)
    for n in range(images.shape[0]):
        for channel in range(images.shape[3]):
            expected = ndimage.gaussian_filter(images[n, :, :, channel], sigma,
                                               mode="nearest", truncate=4.0)
            np.testing.assert_allclose(out[n, :, :, channel], np.clip(expected, 0, 1),
                                       rtol=0, atol=1e-6)
    # The whole-batch form of the reference (sigma 0 on N and C).
    expected = ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="nearest")
    np.testing.assert_allclose(shifts.gaussian_blur(images, sigma), expected, atol=1e-12)
    # The border mode matters: scipy's default "reflect" differs at the edges
    # (from 2 pixels out, where the weight is tiny for the two smallest sigmas).
    if sigma >= 0.7:
        reflect = ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="reflect")
        assert np.abs(shifts.gaussian_blur(images, sigma) - reflect).max() > 1e-3


def test_gaussian_blur_single_channel_and_tiny_images():
    images = _images(shape=(1, 2, 3, 1))  # Smaller than the kernel radius (4).
    out = corrupt_images(images, "gaussian_blur", 5)
    expected = ndimage.gaussian_filter(images[0, :, :, 0], 1.0, mode="nearest")
    np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-6)


def test_severity_is_monotone():
    images = _images(shape=(4, 16, 16, 3))
    noise_std = [np.std(corrupt_images(images, "gaussian_noise", s, seed=3) - images)
                 for s in range(1, 6)]
    blur_distance = [np.abs(corrupt_images(images, "gaussian_blur", s) - images).mean()
                     for s in range(1, 6)]
    contrast_std = [corrupt_images(images, "contrast", s).std(axis=(1, 2)).mean()
                    for s in range(1, 6)]
    assert np.all(np.diff(noise_std) > 0)
    assert np.all(np.diff(blur_distance) > 0)
    assert np.all(np.diff(contrast_std) < 0)


def test_constants_and_input_untouched():
    assert SHIFT_CORRUPTIONS == ("gaussian_noise", "gaussian_blur", "contrast")
    assert shifts.SEVERITY_PARAMETERS == {
        "gaussian_noise": tuple(NOISE_C), "gaussian_blur": tuple(BLUR_SIGMA),
        "contrast": tuple(CONTRAST_C)}
    images = _images().astype(np.float32)
    copy = images.copy()
    for corruption in SHIFT_CORRUPTIONS:
        corrupt_images(images, corruption, 3)
    np.testing.assert_array_equal(images, copy)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"corruption": "shot_noise"},
     (r"corruption must be one of \['gaussian_noise', 'gaussian_blur', 'contrast'\]; "
      r"got corruption='shot_noise'")),
    ({"corruption": None}, "corruption must be one of"),
    ({"severity": 0}, r"severity must be one of \[1, 2, 3, 4, 5\]; got severity=0"),
    ({"severity": 6}, "severity must be one of"),
    ({"severity": True}, "severity must be one of"),
    ({"severity": 2.0}, "severity must be one of"),
    ({"severity": "2"}, "severity must be one of"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"seed": 1.5}, "seed must be a non-negative integer"),
    ({"images": np.zeros((8, 8, 3))}, r"images must have shape \(N, H, W, C\)"),
    ({"images": np.full((1, 4, 4, 3), 255, np.uint8)}, r"values in \[0, 1\].*255"),
    ({"images": np.full((1, 4, 4, 1), -0.1)}, r"values in \[0, 1\]"),
    ({"images": np.full((1, 4, 4, 1), np.nan)}, r"finite values in \[0, 1\]; found NaN"),
    ({"images": np.full((1, 4, 4, 1), np.inf)}, "found NaN or infinity"),
    ({"images": np.full((1, 4, 4, 1), "a")}, "images must be a float array"),
])
def test_bad_arguments(kwargs, pattern):
    arguments = {"images": np.zeros((1, 4, 4, 3)), "corruption": "contrast",
                 "severity": 1, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        corrupt_images(**arguments)


def test_accepts_numpy_integer_severity():
    images = _images()
    np.testing.assert_array_equal(corrupt_images(images, "contrast", np.int64(4)),
                                  corrupt_images(images, "contrast", 4))
