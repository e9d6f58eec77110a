"""Worker: the Keras 2 (tf_keras) side of the layer benchmark, in its own process.

    python -m benchmarks.tf_keras_layers [--cases dense,conv2d,lstm] [--scale 1]

edward2 0.0.2 and tfp.layers need Keras 2, so TF_USE_LEGACY_KERAS=1 is set
before TensorFlow is imported, and a stub replaces edward2's NumPy backend
(broken with a recent SciPy), as in tests/edward2_reference.py. The plain
tf_keras layer is timed here too, so these variants' ratios are to it.
Run by `benchmarks.layers` through `common.WorkerParticipant`.
"""

import argparse
import os
import sys
import types

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.modules["edward2.numpy"] = types.ModuleType("edward2.numpy")  # skip the broken NumPy backend

from benchmarks import common
from benchmarks.layer_steps import LAYER_CASES, make_layer_functions, tiled_batch

K = common.ENSEMBLE_SIZE
_POINT_LSTM_FACTORS = {
    f"{name}_{kind}": value
    for name in ("alpha", "gamma", "recurrent_alpha", "recurrent_gamma")
    for kind, value in (("initializer", "ones"), ("regularizer", None))
}

# variant -> label; the order of the table.
VARIANTS = {
    "tf_keras": "tf_keras plain",
    "edward2_batchensemble": "edward2 BatchEnsemble",
    "edward2_rank1": "edward2 rank-1",
    "tfp_flipout": "tfp.layers Flipout",
    "tfp_reparameterization": "tfp.layers Reparameterization",
}


def build_layer(tf, ed, tfp, case, variant):
    """The tf_keras layer for (case, variant), or None where it does not exist."""
    spec = LAYER_CASES[case]
    if case == "dense":
        units = spec["units"]
        return {
            "tf_keras": lambda: tf.keras.layers.Dense(units),
            "edward2_batchensemble": lambda: ed.layers.DenseBatchEnsemble(units, ensemble_size=K),
            "edward2_rank1": lambda: ed.layers.DenseRank1(units, ensemble_size=K),
            "tfp_flipout": lambda: tfp.layers.DenseFlipout(units),
            "tfp_reparameterization": lambda: tfp.layers.DenseReparameterization(units),
        }[variant]()
    if case == "conv2d":
        filters, size = spec["filters"], spec["kernel_size"]
        return {
            "tf_keras": lambda: tf.keras.layers.Conv2D(filters, size, padding="same"),
            "edward2_batchensemble": lambda: ed.layers.Conv2DBatchEnsemble(
                filters, size, padding="same", ensemble_size=K
            ),
            "edward2_rank1": lambda: ed.layers.Conv2DRank1(filters, size, padding="same", ensemble_size=K),
            "tfp_flipout": lambda: tfp.layers.Convolution2DFlipout(filters, size, padding="same"),
            "tfp_reparameterization": lambda: tfp.layers.Convolution2DReparameterization(
                filters, size, padding="same"
            ),
        }[variant]()
    units = spec["units"]
    if variant == "tf_keras":
        return tf.keras.layers.RNN(tf.keras.layers.LSTMCell(units))
    if variant == "edward2_rank1":
        return tf.keras.layers.RNN(ed.layers.LSTMCellRank1(units, ensemble_size=K))
    if variant == "edward2_batchensemble":
        # edward2 0.0.2 has no LSTMCellBatchEnsemble: its rank-1 cell with point factors.
        return tf.keras.layers.RNN(ed.layers.LSTMCellRank1(units, ensemble_size=K, **_POINT_LSTM_FACTORS))
    return None  # tfp.layers has no LSTM cell


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(LAYER_CASES))
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()

    tf = common.configure_tensorflow()
    import edward2 as ed
    import tensorflow_probability as tfp
    import tf_keras

    functions, info = {}, {"variants": {}, "labels": VARIANTS}
    info["versions"] = {"tf_keras": tf_keras.__version__, "edward2": ed.__version__, "tfp": tfp.__version__}
    for case in args.cases.split(","):
        x = tf.constant(tiled_batch(case, args.scale))
        for variant in VARIANTS:
            tf.keras.utils.set_random_seed(0)
            layer = build_layer(tf, ed, tfp, case, variant)
            if layer is None:
                continue
            optimizer = tf.keras.optimizers.SGD(0.01)

            def apply_gradients(gradients, variables, optimizer=optimizer):
                optimizer.apply_gradients(zip(gradients, variables))

            before_trace = None
            cell = getattr(layer, "cell", None)
            if cell is not None and hasattr(cell, "sampled_weights"):

                def before_trace(cell=cell):
                    cell.sampled_weights = False

            layer_functions, layer_info = make_layer_functions(tf, layer, x, apply_gradients, before_trace)
            for mode, function in layer_functions.items():
                functions[f"{case}/{variant}/{mode}"] = function
            info["variants"][f"{case}/{variant}"] = layer_info
    common.serve(functions, info)


if __name__ == "__main__":
    common.worker_guard(main)
