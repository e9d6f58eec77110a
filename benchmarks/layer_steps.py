"""The layer cases and their timed steps, shared by the Keras 3 process and the
tf_keras (edward2 / tfp.layers) worker. Takes the `tf` module as an argument
and imports no Keras, so either Keras can use it.
"""

import numpy as np

from benchmarks.common import ENSEMBLE_SIZE

# B examples, tiled to K*B rows (block order) for every variant, the plain
# layer included: the question is the per-row overhead of the rank-1 mechanics.
LAYER_CASES = {
    "dense": {
        "label": "Dense 1024→1024",
        "examples": 64,
        "example_shape": (1024,),
        "units": 1024,
    },
    "conv2d": {
        "label": "Conv2D 32×32×64 → 64, 3×3",
        "examples": 2,
        "example_shape": (32, 32, 64),
        "filters": 64,
        "kernel_size": 3,
    },
    "lstm": {
        "label": "LSTMCell 128 units, 48 steps",
        "examples": 16,
        "example_shape": (48, 128),  # (time steps, features)
        "units": 128,
    },
}

MODES = {
    "train": "training step: forward + backward (weights and the layer's input) + SGD update",
    "train_first": "training step of a first layer: as `train`, without the input's gradient",
    "infer": "inference: forward with training=False (rank-1 factors still sampled)",
}


def tiled_batch(case, scale=1, ensemble_size=ENSEMBLE_SIZE, seed=0):
    """The (K*B, ...) float32 batch: B examples repeated K times, block order."""
    examples = LAYER_CASES[case]["examples"] * scale
    rng = np.random.RandomState(seed)
    batch = rng.standard_normal((examples,) + LAYER_CASES[case]["example_shape"]).astype(np.float32)
    return np.concatenate([batch] * ensemble_size, axis=0)


def make_layer_functions(tf, layer, x, apply_gradients, before_trace=None):
    """{mode: zero-argument function} timing `layer` on the constant batch `x`.

    Every function is a `tf.function` (no XLA) returning a small tensor, so
    fetching it waits for the work. The loss is mean(y²) plus the layer's own
    losses (the KL terms of the Bayesian layers).

    Args:
        tf: the tensorflow module.
        layer: a built or unbuilt layer; called once here to build it.
        x: the input batch (a tf constant).
        apply_gradients: f(gradients, variables) applying one optimizer step.
        before_trace: called at the start of each trace (edward2's LSTM cell
            caches its factor draws on the Python object; this resets them).
    """
    if before_trace:
        before_trace()
    layer(x)
    variables = list(layer.trainable_variables)

    traced_loss_terms = []

    def loss_of(outputs):
        loss = tf.reduce_mean(tf.square(outputs))
        extra = [tf.cast(term, loss.dtype) for term in layer.losses]
        traced_loss_terms.append(len(extra))
        return loss + tf.add_n(extra) if extra else loss

    @tf.function(jit_compile=False)
    def train():
        if before_trace:
            before_trace()
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_of(layer(x, training=True))
        gradients = tape.gradient(loss, variables + [x])
        apply_gradients(gradients[:-1], variables)
        # Fetching a sum of the input gradient keeps it from being pruned.
        return tf.stack([loss, tf.reduce_sum(gradients[-1])])

    @tf.function(jit_compile=False)
    def train_first():
        if before_trace:
            before_trace()
        with tf.GradientTape() as tape:
            loss = loss_of(layer(x, training=True))
        apply_gradients(tape.gradient(loss, variables), variables)
        return loss

    @tf.function(jit_compile=False)
    def infer():
        if before_trace:
            before_trace()
        return tf.reduce_sum(layer(x, training=False))

    functions = {"train": train, "train_first": train_first, "infer": infer}
    info = {"parameters": int(sum(np.prod(v.shape) for v in variables))}
    # Trace now, and check that the Bayesian layers' KL terms joined the loss.
    for function in functions.values():
        function()
    info["loss_terms"] = traced_loss_terms  # per trace: train, train_first
    return functions, info
