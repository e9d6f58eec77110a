"""Edward2 0.0.2 forward passes for tests/test_edward2_reference.py.

Run as a script, in its own process (never imported by pytest):

    python tests/edward2_reference.py CASES.npz OUTPUTS.npz [--verbose]

Edward2 needs Keras 2, so this process sets TF_USE_LEGACY_KERAS=1 before
TensorFlow is imported; importing edward2 in the pytest process would switch
`tf.keras` to Keras 2 there too. `import edward2` also pulls in its NumPy
backend, which fails with a recent SciPy, so a stub module stands in for it.

CASES.npz holds
  "spec": a JSON string {"cases": [{"name", "layer", "kwargs", "rnn", "masked"}]}
  "<name>/input": the input batch (K*B rows, block order),
  "<name>/weight/<role>": weights by role (kernel, recurrent_kernel, alpha,
      gamma, recurrent_alpha, recurrent_gamma, bias).
OUTPUTS.npz gets "<name>": the Edward2 layer's output for that input.

Weights are assigned by role to the Edward2 layer's attributes (see `ROLES`),
and every trainable variable of the Edward2 layer must receive exactly one of
them, so a renamed or forgotten weight fails loudly instead of keeping its
random initial value.
"""

import json
import os
import sys
import types

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# float32 on the CPU: no TF32 matmuls/convolutions on a GPU.
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
sys.modules["edward2.numpy"] = types.ModuleType("edward2.numpy")  # skip the broken NumPy backend

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import edward2 as ed  # noqa: E402

# role -> attribute of the Edward2 layer (or cell) that holds that weight.
_DENSE_CONV_ROLES = {"kernel": "kernel", "alpha": "alpha", "gamma": "gamma", "bias": "ensemble_bias"}
_LSTM_ROLES = {
    "kernel": "kernel",
    "recurrent_kernel": "recurrent_kernel",
    "alpha": "alpha",
    "gamma": "gamma",
    "recurrent_alpha": "recurrent_alpha",
    "recurrent_gamma": "recurrent_gamma",
    "bias": "bias",
}
ROLES = {
    "DenseBatchEnsemble": _DENSE_CONV_ROLES,
    "Conv1DBatchEnsemble": _DENSE_CONV_ROLES,
    "Conv2DBatchEnsemble": _DENSE_CONV_ROLES,
    "DenseRank1": _DENSE_CONV_ROLES,
    "Conv1DRank1": _DENSE_CONV_ROLES,
    "Conv2DRank1": _DENSE_CONV_ROLES,
    "LSTMCellRank1": _LSTM_ROLES,
}


def _assign_by_role(layer, roles, weights, verbose, name):
    assigned = set()
    for role, value in weights.items():
        attribute = roles[role]
        variable = getattr(layer, attribute)
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"{name}: role {role!r} -> {type(layer).__name__}.{attribute} has shape "
                f"{tuple(variable.shape)}, the test sent {value.shape}."
            )
        variable.assign(value)
        assigned.add(id(variable))
        if verbose:
            print(f"  {name}: {role:16s} -> {variable.name} {tuple(variable.shape)}", file=sys.stderr)
    missing = [v.name for v in layer.trainable_weights if id(v) not in assigned]
    if missing:
        raise ValueError(f"{name}: Edward2 weights left unassigned: {missing}; sent roles {sorted(weights)}.")


def run_case(case, data, verbose=False):
    name = case["name"]
    x = tf.constant(data[f"{name}/input"])
    prefix = f"{name}/weight/"
    weights = {key[len(prefix):]: data[key] for key in data.files if key.startswith(prefix)}
    layer_class = getattr(ed.layers, case["layer"])
    roles = ROLES[case["layer"]]
    if case.get("rnn"):
        cell = layer_class(**case["kwargs"])
        rnn = tf.keras.layers.RNN(cell, return_sequences=True)
        rnn.build(x.shape)
        _assign_by_role(cell, roles, weights, verbose, name)
        # LSTMCellRank1 caches its (tiled) factors on first use; make it read
        # the assigned values for this batch.
        cell.sampled_weights = False
        mask = None
        inputs = x
        if case.get("masked"):
            masking = tf.keras.layers.Masking(mask_value=0.0)
            inputs = masking(x)
            mask = masking.compute_mask(x)
        outputs = rnn(inputs, mask=mask, training=False)
    else:
        layer = layer_class(**case["kwargs"])
        layer.build(x.shape)
        _assign_by_role(layer, roles, weights, verbose, name)
        outputs = layer(x, training=False)
    if verbose:
        print(f"  {name}: edward2 weights {[(w.name, tuple(w.shape)) for w in (cell if case.get('rnn') else layer).weights]}", file=sys.stderr)
    return np.asarray(outputs, dtype=np.float32)


def main(argv):
    verbose = "--verbose" in argv
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 2:
        raise SystemExit("usage: edward2_reference.py CASES.npz OUTPUTS.npz [--verbose]")
    data = np.load(paths[0], allow_pickle=False)
    spec = json.loads(str(data["spec"]))
    outputs = {}
    with tf.device("/CPU:0"):
        for case in spec["cases"]:
            outputs[case["name"]] = run_case(case, data, verbose)
    np.savez(paths[1], **outputs)
    print(f"edward2 {ed.__version__}, tf {tf.__version__}: {len(outputs)} cases", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
