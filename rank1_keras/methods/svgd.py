"""Stein variational gradient descent (SVGD) over Bella's particles: the update rule.

Textbook SVGD (Liu & Wang, 2016), as Bella-SVGD (Doan et al., AAAI 2025)
describes it. Particle i is the vector theta_i (length D) that concatenates,
over every Bella layer, A[i].ravel() and B[i].ravel() (`flatten_particles`).
With n particles,

    phi(theta_i) = (1/n) sum_j [ k(theta_j, theta_i) grad log p(theta_j | D)
                                 + grad_{theta_j} k(theta_j, theta_i) ]

    k(a, b) = exp(-||a - b||^2 / h),   h = med^2 / log n   (median heuristic)

where med is the median of the n(n-1)/2 pairwise distances ||theta_i - theta_j||
(i < j), recomputed at every step and treated as a constant (no gradient flows
through it); if every particle coincides, h = 1 (the kernel is then 1 and the
repulsion 0 for any h). grad_{theta_j} k(theta_j, theta_i)
= -(2/h) (theta_j - theta_i) k(theta_j, theta_i): it pushes theta_i away from
its neighbours.

The log posterior is log p(theta | D) = -N L(theta) + log prior(theta), with L
the particle's mean training loss on the batch (an unbiased estimate of the
mean over the N = `train_size` training examples) and an optional isotropic
Normal prior N(0, prior_stddev^2 I) (None: flat). So

    grad log p(theta_j | D) = -N grad L(theta_j) - theta_j / prior_stddev^2.

The gradient handed to the optimizer is g_i = -phi(theta_i) / N:

    g_i = (1/n) sum_j k_ij grad L(theta_j)
          + 1/(n N) sum_j k_ij theta_j / prior_stddev^2
          - 2/(n h N) sum_j k_ij (theta_i - theta_j).

Dividing by N keeps the learning rate's meaning: with one particle and no
prior, g is the plain loss gradient. The repulsion then acts with weight 1/N
(and the prior as a 1/N-weighted log-density), which is the exact SVGD
direction of the posterior, rescaled.

Backend-agnostic (`keras.ops`). The binaries' loop applies `transform_gradients`
to each step's gradients (`Bella.training_options`); `fit` does so through
`rank1_keras.tensorflow.training.svgd.SVGDTrainer`.
"""

import math

import keras
import numpy as np
from keras import ops

from rank1_keras import validation


def _check_particles(particles, name="particles"):
    particles = ops.convert_to_tensor(particles)
    if len(particles.shape) != 2 or particles.shape[0] is None:
        raise ValueError(
            f"{name} must have shape (num_particles, D) with a known num_particles; got shape {particles.shape}."
        )
    if particles.shape[0] < 2:
        raise ValueError(
            f"SVGD needs at least 2 particles (the kernel bandwidth h = med^2 / log n is undefined "
            f"for n = 1); got {name} with num_particles={particles.shape[0]}."
        )
    return particles


def pairwise_squared_distances(particles):
    """(n, n) matrix of ||theta_i - theta_j||^2.

    Computed from differences, not from ||a||^2 + ||b||^2 - 2ab, which loses
    precision when particles are close compared to their norms; the loop over
    the (few) particles keeps memory at O(n D).
    """
    particles = ops.convert_to_tensor(particles)
    return ops.stack([ops.sum(ops.square(particles - particles[i]), axis=1) for i in range(particles.shape[0])])


def median_heuristic_bandwidth(particles):
    """h = med^2 / log n, med the median of the pairwise distances over i < j.

    Returns a scalar with no gradient (h is a constant of each step); 1 when
    all particles coincide.

    Example:

    >>> particles = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], "float32")   # distances 5, 5, 10
    >>> round(float(median_heuristic_bandwidth(particles)), 2)          # 25 / log 3
    22.76
    """
    particles = ops.stop_gradient(_check_particles(particles))
    return _bandwidth(pairwise_squared_distances(particles), particles.shape[0])


def _bandwidth(squared_distances, num_particles):
    rows, columns = np.triu_indices(num_particles, k=1)
    pairs = ops.take(ops.reshape(squared_distances, (-1,)), rows * num_particles + columns)
    distances = ops.sort(ops.sqrt(ops.maximum(pairs, 0.0)))
    count = len(rows)
    if count % 2:
        median = distances[count // 2]
    else:
        median = 0.5 * (distances[count // 2 - 1] + distances[count // 2])
    bandwidth = ops.square(median) / math.log(num_particles)
    bandwidth = ops.where(bandwidth > 0, bandwidth, ops.ones_like(bandwidth))
    return ops.stop_gradient(bandwidth)


def svgd_gradients(particles, loss_gradients, train_size, prior_stddev=None, num_replicas=1):
    """The SVGD update g_i = -phi(theta_i) / N for every particle (see the module docstring).

    Args:
        particles: (n, D) tensor, theta_i in row i; n >= 2.
        loss_gradients: (n, D) tensor, grad L(theta_i) in row i, L the
            particle's mean training loss on the batch.
        train_size: N, the number of training examples.
        prior_stddev: standard deviation of the isotropic Normal prior on
            theta, or None for a flat prior.
        num_replicas: under a distribution strategy, the replicas whose
            per-replica results are summed. Each replica's loss gradients are
            its share of the global one (Keras divides each replica's loss by
            the number of replicas), so the term linear in them sums right; the
            terms that do not depend on the loss (repulsion and prior) are the
            same on every replica and are divided by `num_replicas` here.

    Returns:
        (n, D) tensor g; gradient descent theta_i <- theta_i - lr g_i is an
        SVGD step of size lr / N.

    Example (zero loss gradients: only the repulsion acts, pushing the two
    particles apart):

    >>> g = svgd_gradients(np.array([[0.0], [1.0]], "float32"), np.zeros((2, 1), "float32"), train_size=1)
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(g).ravel()]     # +-(2/2) k_12 / h = +-(log 2) / 2
    [0.3466, -0.3466]
    """
    particles = _check_particles(particles)
    loss_gradients = ops.convert_to_tensor(loss_gradients, dtype=keras.backend.standardize_dtype(particles.dtype))
    if loss_gradients.shape != particles.shape:
        raise ValueError(
            f"loss_gradients must have the shape of particles {particles.shape}; got {loss_gradients.shape}."
        )
    train_size = validation.check_positive_int(train_size, "train_size")
    if prior_stddev is not None:
        prior_stddev = validation.check_positive_finite(prior_stddev, "prior_stddev")
    num_replicas = validation.check_positive_int(num_replicas, "num_replicas")
    num_particles = particles.shape[0]

    # theta is a constant of this step: SVGD is an update rule, not a loss.
    particles = ops.stop_gradient(particles)
    squared_distances = pairwise_squared_distances(particles)
    bandwidth = _bandwidth(squared_distances, num_particles)
    kernel = ops.exp(-squared_distances / bandwidth)  # symmetric: k_ij = k_ji

    driving = ops.matmul(kernel, loss_gradients) / num_particles
    kernel_weighted_particles = ops.matmul(kernel, particles)
    # sum_j k_ij (theta_i - theta_j) = theta_i sum_j k_ij - sum_j k_ij theta_j
    repulsion = particles * ops.sum(kernel, axis=1, keepdims=True) - kernel_weighted_particles
    independent_of_loss = -(2.0 / (num_particles * train_size)) * repulsion / bandwidth
    if prior_stddev is not None:
        independent_of_loss += kernel_weighted_particles / (num_particles * train_size * prior_stddev**2)
    return driving + independent_of_loss / num_replicas


# -- gathering the per-layer particle variables ---------------------------------


def flatten_particles(tensors):
    """Concatenates (n, ...) tensors into one (n, D) tensor, particle i in row i."""
    tensors = [ops.convert_to_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("tensors must hold at least one (num_particles, ...) tensor; got none.")
    num_particles = tensors[0].shape[0]
    for tensor in tensors:
        if tensor.shape[0] != num_particles:
            raise ValueError(
                f"every tensor needs the same leading particle axis; got shapes {[t.shape for t in tensors]}."
            )
    return ops.concatenate([ops.reshape(t, (num_particles, -1)) for t in tensors], axis=1)


def unflatten_particles(flat, like):
    """Inverse of `flatten_particles`: splits (n, D) into tensors shaped as `like`."""
    sizes = [int(np.prod(t.shape[1:])) for t in like]
    pieces = ops.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=1)
    return [ops.reshape(piece, t.shape) for piece, t in zip(pieces, like)]


def transform_gradients(
    variables,
    gradients,
    particle_variables,
    train_size,
    prior_stddev=None,
    loss_gradient_scale=1.0,
    num_replicas=1,
):
    """Replaces the gradients of the particle variables by the SVGD update.

    Args:
        variables: the variables the gradients belong to (e.g. a model's
            `trainable_variables`).
        gradients: their gradients of the training loss, in the same order.
        particle_variables: the (n, ...) variables that make up theta (e.g.
            `rank1_keras.bella.particle_variables(model)`); each must appear in
            `variables` (matched by identity, never by name).
        train_size, prior_stddev, num_replicas: as in `svgd_gradients`.
        loss_gradient_scale: multiplies the particle gradients to turn them
            into grad L(theta_i), the particles' own mean losses. A loss that
            averages the members' losses (`AverageNLL`: (1/n) sum_i L_i) needs n;
            one that sums them needs 1.

    Returns:
        The new list of gradients: SVGD updates for the particle variables,
        the other gradients untouched.
    """
    variables, gradients = list(variables), list(gradients)
    if len(variables) != len(gradients):
        raise ValueError(f"variables and gradients must pair up; got {len(variables)} and {len(gradients)}.")
    positions = []
    for particle_variable in particle_variables:
        matches = [i for i, variable in enumerate(variables) if variable is particle_variable]
        if not matches:
            raise ValueError(
                f"particle_variables holds '{particle_variable.path}', which is not among variables "
                "(is the layer frozen?)."
            )
        positions.append(matches[0])
    values = [ops.convert_to_tensor(variables[i]) for i in positions]
    particle_gradients = [
        ops.zeros_like(value) if gradients[i] is None else ops.convert_to_tensor(gradients[i])
        for i, value in zip(positions, values)
    ]
    updates = svgd_gradients(
        flatten_particles(values),
        flatten_particles(particle_gradients) * loss_gradient_scale,
        train_size,
        prior_stddev=prior_stddev,
        num_replicas=num_replicas,
    )
    transformed = list(gradients)
    for i, update in zip(positions, unflatten_particles(updates, values)):
        transformed[i] = update
    return transformed
