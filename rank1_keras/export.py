"""SavedModel export whose `serving_default` answers with uncertainty.

    export_for_serving(model, "exports/rank1", num_samples=4)

The exported signature takes a plain batch (B, ...) of float features and
returns, all computed inside the graph (tiling, sampling, averaging):

| output                | shape        | meaning                                              |
|-----------------------|--------------|------------------------------------------------------|
| probabilities         | (B, C)       | mean over the M = K x S member passes                |
| predicted_class       | (B,)  int64  | argmax of `probabilities`                            |
| confidence            | (B,)         | max of `probabilities`                               |
| predictive_entropy    | (B,)         | H[pbar] in nats                                      |
| mutual_information    | (B,)         | H[pbar] - mean_m H[p_m] (epistemic part)             |
| member_probabilities  | (B, M, C)    | every member's (and sample's) probabilities          |

It works for every model `rank1_keras.models.build_method_models` /
`inference_model` returns (plain, converted, joined ensembles) and loads
with TensorFlow alone (`tf.saved_model.load`), without rank1_keras.
Stochastic layers draw from seed-generator states saved in the export, so a
fresh load answers the same input the same way.
"""

import keras
import tensorflow as tf

from rank1_keras import validation
from rank1_keras.convert import member_outputs
from rank1_keras.ensemble import AverageMembers


def _entropy(probabilities):
    return -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(probabilities), probabilities), axis=-1)


def export_for_serving(model, path, num_samples=1):
    """Writes a SavedModel of `model` with the uncertainty signature above.

    Args:
        model: a single-input Keras model returning class probabilities:
            plain, or from `rank1_keras.convert` / `join_ensemble` (its K
            member rows are read through `member_outputs`).
        path: the SavedModel directory.
        num_samples: forward passes averaged per member (S); > 1 only helps
            stochastic models (rank-1 with sampling, MC dropout).

    Returns:
        `path`.
    """
    validation.check_positive_int(num_samples, "num_samples")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"model must have one input and one output to export; got {len(model.inputs)} and {len(model.outputs)}."
        )
    has_members = any(isinstance(layer, AverageMembers) for layer in model.layers)
    rows_model = member_outputs(model) if has_members else model
    input_spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="inputs")

    def serve(inputs):
        batch = tf.shape(inputs)[0]
        passes = []
        for _ in range(num_samples):
            rows = tf.cast(rows_model(inputs, training=False), tf.float32)
            # Block order: rows [k*B, (k+1)*B) are member k's.
            passes.append(tf.reshape(rows, tf.stack([-1, batch, tf.shape(rows)[-1]])))
        members = tf.concat(passes, axis=0)  # (M, B, C)
        members = members / tf.reduce_sum(members, axis=-1, keepdims=True)
        probabilities = tf.reduce_mean(members, axis=0)
        entropy = _entropy(probabilities)
        return {
            "probabilities": probabilities,
            "predicted_class": tf.argmax(probabilities, axis=-1),
            "confidence": tf.reduce_max(probabilities, axis=-1),
            "predictive_entropy": entropy,
            "mutual_information": entropy - tf.reduce_mean(_entropy(members), axis=0),
            "member_probabilities": tf.transpose(members, [1, 0, 2]),
        }

    archive = keras.export.ExportArchive()
    archive.track(rows_model)
    archive.add_endpoint("serving_default", serve, input_signature=[input_spec])
    archive.write_out(path, verbose=False)
    return path
