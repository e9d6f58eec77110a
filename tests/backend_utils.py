"""What the cross-backend tests need that Keras has no one API for: gradients, eager values."""

import keras
import numpy as np

ALL_BACKENDS = ("tensorflow", "jax", "torch")


def numpy(value):
    """Any backend tensor, variable or random variable as a float64-ready NumPy array."""
    if hasattr(value, "value") and not isinstance(value, np.ndarray) and hasattr(value, "assign"):
        value = value.value
    return np.asarray(keras.ops.convert_to_numpy(value))


def gradients(loss_fn, variables):
    """d loss_fn() / d variables, on the current backend (None where a variable does not matter).

    `loss_fn` takes no argument and reads the variables (a layer call, a loss).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, variables)
    if backend == "torch":
        import torch

        loss = loss_fn()
        return list(torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True))
    if backend == "jax":
        import jax

        def pure(values):
            # collect_losses: layer.losses inside the scope are the ones this call adds.
            with keras.StatelessScope(state_mapping=list(zip(variables, values)), collect_losses=True):
                return loss_fn()

        return list(jax.grad(pure)([v.value for v in variables]))
    raise ValueError(f"no gradient helper for backend {backend!r}")
