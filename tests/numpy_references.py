"""Float64 NumPy references shared by the layer tests."""

import itertools
import math

import numpy as np


def conv(x, kernel, strides=1, padding="valid", dilation=1, groups=1, data_format="channels_last"):
    """N-D convolution in float64 with Keras' conventions ("same" pads the extra cell at the end).

    `kernel` is (*window, channels / groups, filters): output group g sees input group g.
    """
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    spatial = x.ndim - 2
    strides, dilation = (strides,) * spatial, (dilation,) * spatial
    pads, sizes = [], []
    for axis in range(spatial):
        size, window = x.shape[1 + axis], dilation[axis] * (kernel.shape[axis] - 1) + 1
        if padding == "valid":
            sizes.append((size - window) // strides[axis] + 1)
            pads.append((0, 0))
        elif padding == "causal":
            sizes.append(math.ceil(size / strides[axis]))
            pads.append((window - 1, 0))
        else:  # same
            sizes.append(math.ceil(size / strides[axis]))
            total = max((sizes[-1] - 1) * strides[axis] + window - size, 0)
            pads.append((total // 2, total - total // 2))
    padded = np.pad(x, [(0, 0), *pads, (0, 0)])
    group_in, group_out = kernel.shape[-2], kernel.shape[-1] // groups
    outputs = np.zeros((x.shape[0], *sizes, kernel.shape[-1]))
    for offset in np.ndindex(*kernel.shape[:spatial]):
        index = tuple(
            slice(offset[a] * dilation[a], offset[a] * dilation[a] + (sizes[a] - 1) * strides[a] + 1, strides[a])
            for a in range(spatial)
        )
        window = padded[(slice(None), *index)]
        for g in range(groups):
            outputs[..., g * group_out:(g + 1) * group_out] += (
                window[..., g * group_in:(g + 1) * group_in] @ kernel[offset][:, g * group_out:(g + 1) * group_out]
            )
    return np.moveaxis(outputs, -1, 1) if data_format == "channels_first" else outputs


def svgd(particles, loss_gradients, train_size, prior_stddev=None):
    """Bella-SVGD's update g_i = -phi(theta_i) / N in float64, one particle pair at a time.

    phi_i = (1/n) sum_j [k(theta_j, theta_i) grad log p(theta_j) + grad_{theta_j} k(theta_j, theta_i)],
    grad log p = -N grad L - theta / sigma^2; returns (g, the median-heuristic bandwidth h).
    """
    particles = np.asarray(particles, np.float64)
    n = len(particles)
    distances = [np.linalg.norm(particles[i] - particles[j]) for i, j in itertools.combinations(range(n), 2)]
    bandwidth = np.median(distances) ** 2 / np.log(n)
    gradients = np.zeros_like(particles)
    for i in range(n):
        phi = np.zeros(particles.shape[1])
        for j in range(n):
            kernel = np.exp(-np.sum((particles[i] - particles[j]) ** 2) / bandwidth)
            grad_log_posterior = -train_size * np.asarray(loss_gradients[j], np.float64)
            if prior_stddev is not None:
                grad_log_posterior = grad_log_posterior - particles[j] / prior_stddev**2
            grad_kernel_wrt_theta_j = -2.0 / bandwidth * (particles[j] - particles[i]) * kernel
            phi += kernel * grad_log_posterior + grad_kernel_wrt_theta_j
        gradients[i] = -phi / n / train_size
    return gradients, bandwidth
