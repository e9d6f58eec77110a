"""SavedModel export whose `serving_default` answers with uncertainty.

    export_for_serving(model, "exports/rank1", num_samples=4, seed=0,
                       serving_input=ServingInput.images(scale=1 / 255))

The exported signature takes a plain batch of raw examples and returns, all
computed inside the graph (preprocessing, tiling, sampling, averaging):

| output                | shape        | meaning                                              |
|-----------------------|--------------|------------------------------------------------------|
| probabilities         | (B, C)       | mean pbar over the M = K x S member passes, then     |
|                       |              | temperature-scaled: pbar^(1/T), renormalised         |
| predicted_class       | (B,)  int64  | argmax of `probabilities`                            |
| confidence            | (B,)         | max of `probabilities`                               |
| predictive_entropy    | (B,)         | H of `probabilities` in nats                         |
| mutual_information    | (B,)         | H[pbar] - mean_m H[p_m] (epistemic part, unscaled)   |
| member_probabilities  | (B, M, C)    | every member's (and sample's) probabilities          |

`temperature` (T, default 1: none) is the validation-fitted temperature of
`rank1_keras.post_processing.fit_temperature_from_probabilities`, applied as the
evaluation's "(T)" columns apply it: to the averaged probabilities. The
members' own outputs and their disagreement stay unscaled.

Inputs, by `ServingInput.kind`:

| kind       | signature inputs                                   | turned into the model's input            |
|------------|----------------------------------------------------|------------------------------------------|
| features   | `inputs` (B, ...) float32                           | as they are                              |
| images     | `inputs` (B, H, W, C) uint8 or float32              | x * scale, then (x - mean) / stddev; with `central_crop_fraction`, any H, W: central square crop, bilinear resize |
| sequences  | `sequences` (B, T, F) float32, `lengths` (B,) int32 | steps >= length zeroed, (x - mean) / stddev on real steps, a 1-on-real-steps channel appended |

Shapes, ranks and lengths are checked inside the graph: bad input fails with
an InvalidArgumentError that names the expected shape (a wrong dtype is
refused by TensorFlow before the graph runs, naming the expected dtype).

It works for every model `rank1_keras.models.build_method_models` /
`inference_model` returns (plain, converted, joined ensembles) and loads
with TensorFlow alone (`tf.saved_model.load`, `saved_model_cli`,
TensorFlow Serving), without rank1_keras. Sampling is seeded: with `seed`
set, every request starts the model's random streams from the same state,
so the same input gives the same answer, from any fresh load.
"""

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from rank1_keras import validation
from rank1_keras.convert import fold_members, member_output_types, member_outputs
from rank1_keras.methods.folding import folding_obstacle_of
from rank1_keras.layers.walk import layers_of
from rank1_keras.models.ensemble import (
    AverageMembers,
    MemberChains,
    check_classifier_output,
    class_probabilities,
    swap_member_axes,
)

SERVING_INPUT_KINDS = ("features", "images", "sequences")
#: From this many examples per request a foldable ensemble is served as K plain networks with its
#: members' folded kernels (`fold_members`); fewer go through the converted model's one tiled pass,
#: which is faster there (TensorFlow, 2 cores: 1.54x one network at B = 1 against 1.75x folded;
#: 2.02x folded against 2.41x tiled at B = 8; docs/benchmarks.md, "Serving cost").
FOLDED_FROM_EXAMPLES = 8
_INPUT_DTYPES = ("float32", "uint8")


@dataclasses.dataclass(frozen=True)
class ServingInput:
    """How the served signature's raw inputs become the model's input.

    Attributes:
        kind: "features" (the model's own input), "images" or "sequences".
        dtype: "float32" or "uint8" (images; sequences are float32).
        scale: images: raw values are multiplied by it first (1/255 for
            uint8 pixels a model saw in [0, 1]).
        mean, stddev: per-channel normalisation after scaling (images) or of
            the raw features (sequences); empty for none.
        central_crop_fraction: images of any size: the central square of side
            floor(fraction * min(H, W)) is resized (bilinear) to the model's
            size, as the ImageNet evaluation crop (0.875). None: the images
            must have the model's size.
        observed_channel: sequences: append the channel that is 1 on real
            steps and 0 on padding (what the tasks' sequence models take).
    """

    kind: str = "features"
    dtype: str = "float32"
    scale: float = 1.0
    mean: tuple = ()
    stddev: tuple = ()
    central_crop_fraction: float = None
    observed_channel: bool = True

    def __post_init__(self):
        validation.check_choice(self.kind, "kind", SERVING_INPUT_KINDS)
        validation.check_choice(self.dtype, "dtype", _INPUT_DTYPES)
        if self.kind != "images" and self.dtype != "float32":
            raise ValueError(f"dtype={self.dtype!r} applies to kind='images' only; {self.kind} are float32.")
        validation.check_positive_finite(self.scale, "scale")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "stddev", tuple(float(v) for v in self.stddev))
        if len(self.mean) != len(self.stddev):
            raise ValueError(
                f"mean and stddev need one value per channel each; got {len(self.mean)} and {len(self.stddev)}."
            )
        if any(not np.isfinite(v) or v <= 0 for v in self.stddev):
            raise ValueError(f"stddev values must be positive and finite; got {self.stddev}.")
        if self.central_crop_fraction is not None:
            if self.kind != "images":
                raise ValueError("central_crop_fraction applies to kind='images' only.")
            if not 0.0 < self.central_crop_fraction <= 1.0:
                raise ValueError(f"central_crop_fraction must be in (0, 1]; got {self.central_crop_fraction}.")

    @classmethod
    def images(cls, dtype="uint8", scale=1.0 / 255.0, mean=(), stddev=(), central_crop_fraction=None):
        return cls("images", dtype, scale, mean, stddev, central_crop_fraction)

    @classmethod
    def sequences(cls, mean=(), stddev=(), observed_channel=True):
        return cls("sequences", "float32", 1.0, mean, stddev, None, observed_channel)

    def get_config(self):
        return {**dataclasses.asdict(self), "mean": list(self.mean), "stddev": list(self.stddev)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# -- raw input -> model input, with checks that name the expected shape ----------


def _shape_text(dims):
    return "(" + ", ".join("batch" if i == 0 else ("any" if d is None else str(d)) for i, d in enumerate(dims)) + ")"


def _check_shape(tensor, name, expected, dtype):
    """Asserts `tensor` has shape `expected` ((None for any size) incl. the batch), batch >= 1.

    Returns the tensor with that static shape, for the Keras model.
    """
    message = f"{name} must have shape {_shape_text(expected)} and dtype {dtype}, with at least one example; got shape"
    shape = tf.shape(tensor)
    # Padded to the expected rank, so the checks below never index past a short shape.
    padded = tf.concat([shape, tf.fill([len(expected)], -1)], axis=0)[: len(expected)]
    checks = [tf.equal(tf.rank(tensor), len(expected)), padded[0] > 0]
    checks += [tf.equal(padded[i], d) for i, d in enumerate(expected) if i and d is not None]
    ok = tf.reduce_all(tf.stack(checks))
    with tf.control_dependencies([tf.debugging.Assert(ok, [message, shape], summarize=10)]):
        tensor = tf.identity(tensor)
    return tf.ensure_shape(tensor, [None, *expected[1:]])


def _normalize(values, serving_input):
    if not serving_input.mean:
        return values
    return (values - tf.constant(serving_input.mean, tf.float32)) / tf.constant(serving_input.stddev, tf.float32)


def _check_channels(serving_input, channels, what):
    if serving_input.mean and len(serving_input.mean) != channels:
        raise ValueError(
            f"serving_input has {len(serving_input.mean)} mean/stddev values; the model's {what} has {channels} channels."
        )


def _image_preprocessor(serving_input, model_shape):
    """(spec, function raw images -> model input) for `kind="images"`."""
    height, width, channels = model_shape[1:]
    _check_channels(serving_input, channels, "input")
    crop = serving_input.central_crop_fraction
    expected = (None, None, None, channels) if crop else (None, height, width, channels)

    def preprocess(inputs):
        images = _check_shape(inputs, "inputs", expected, serving_input.dtype)
        images = tf.cast(images, tf.float32)
        if crop:
            shape = tf.shape(images)
            side = tf.maximum(tf.cast(crop * tf.cast(tf.minimum(shape[1], shape[2]), tf.float32), tf.int32), 1)
            top, left = (shape[1] - side + 1) // 2, (shape[2] - side + 1) // 2
            images = tf.slice(images, tf.stack([0, top, left, 0]), tf.stack([-1, side, side, -1]))
            images = tf.image.resize(images, [height, width], method="bilinear")
        return _normalize(images * serving_input.scale, serving_input)

    spec = {"inputs": tf.TensorSpec(None, tf.as_dtype(serving_input.dtype), name="inputs")}
    return spec, preprocess


def _sequence_preprocessor(serving_input, model_shape):
    """(spec, function (sequences, lengths) -> model input) for `kind="sequences"`."""
    model_steps, model_features = model_shape[1:]
    features = model_features - 1 if serving_input.observed_channel else model_features
    _check_channels(serving_input, features, "sequences (without the observed channel)")

    def preprocess(sequences, lengths):
        sequences = _check_shape(sequences, "sequences", (None, model_steps, features), "float32")
        lengths = _check_shape(lengths, "lengths", (None,), "int32")
        shape = tf.shape(sequences)
        valid = tf.logical_and(
            tf.equal(tf.shape(lengths)[0], shape[0]),
            tf.logical_and(tf.reduce_all(lengths >= 0), tf.reduce_all(lengths <= shape[1])),
        )
        message = "lengths must hold one value per sequence, each in [0, steps]; got lengths and sequences shape"
        with tf.control_dependencies([tf.debugging.Assert(valid, [message, lengths, shape], summarize=10)]):
            real = tf.sequence_mask(lengths, shape[1], dtype=tf.float32)[..., None]
        # Missing values (NaN) count as 0 before standardising, as the tasks' loaders do.
        sequences = tf.where(tf.math.is_nan(sequences), tf.zeros_like(sequences), sequences)
        values = _normalize(sequences, serving_input) * real  # padding stays exactly 0 for the Masking layer
        if serving_input.observed_channel:
            values = tf.concat([values, real], axis=-1)
        return values

    spec = {
        "sequences": tf.TensorSpec(None, tf.float32, name="sequences"),
        "lengths": tf.TensorSpec(None, tf.int32, name="lengths"),
    }
    return spec, preprocess


def _features_preprocessor(model_shape):
    def preprocess(inputs):
        inputs = _check_shape(inputs, "inputs", tuple(model_shape), "float32")
        # A NaN or inf input is refused, not answered: what a network makes of it depends on
        # how the CPU's min/max treat NaN, and a finite answer would look like a real one.
        finite = tf.reduce_all(tf.math.is_finite(inputs))
        with tf.control_dependencies([tf.debugging.Assert(finite, ["inputs must be finite (no NaN or inf)"])]):
            return tf.identity(inputs)

    return {"inputs": tf.TensorSpec(None, tf.float32, name="inputs")}, preprocess


def _preprocessor(serving_input, model_shape):
    if serving_input.kind == "images":
        if len(model_shape) != 4:
            raise ValueError(f"serving_input kind='images' needs a model taking (B, H, W, C); it takes {model_shape}.")
        return _image_preprocessor(serving_input, model_shape)
    if serving_input.kind == "sequences":
        if len(model_shape) != 3:
            raise ValueError(f"serving_input kind='sequences' needs a model taking (B, T, F); it takes {model_shape}.")
        return _sequence_preprocessor(serving_input, model_shape)
    return _features_preprocessor(model_shape)


# -- random streams -------------------------------------------------------------


def seed_generators(model):
    """Every `keras.random.SeedGenerator` of `model`'s layers (nested ones included), in a fixed order."""
    generators = []
    for layer in layers_of(model, include_self=True):
        for generator in layer._seed_generators:
            if all(generator is not g for g in generators):
                generators.append(generator)
    return generators


def _seed_states(seed, count):
    # A distinct, seed-determined starting state per generator.
    states = np.random.default_rng(seed).integers(0, 2**31 - 1, size=(count, 2))
    states[:, 1] = 0
    return states


def reset_seed_generators(model, seed):
    """Sets every random stream of `model` to the state an export with `seed` starts each request from.

    Calling it before `model(x)` reproduces the exported signature's draws
    eagerly (used by the tests, and by users comparing with a served model).
    """
    generators = seed_generators(model)
    for generator, state in zip(generators, _seed_states(seed, len(generators))):
        generator.state.assign(tf.cast(state, generator.state.dtype))


# -- the export -------------------------------------------------------------------


def _entropy(probabilities):
    return -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(probabilities), probabilities), axis=-1)


# The smallest positive normal float32: log(0) stays finite under the temperature, as in
# `post_processing.apply_temperature_to_probabilities` (which floors at float64's).
_LOG_FLOOR = float(np.finfo(np.float32).tiny)


def uncertainty_outputs(member_probabilities, temperature=1.0):
    """The signature's outputs from (M, B, C) member probabilities (or (M, B, d..., C): per position)."""
    members = member_probabilities / tf.reduce_sum(member_probabilities, axis=-1, keepdims=True)
    mean = tf.reduce_mean(members, axis=0)
    probabilities = mean
    if temperature != 1.0:
        probabilities = tf.nn.softmax(tf.math.log(tf.maximum(mean, _LOG_FLOOR)) / temperature, axis=-1)
    return {
        "probabilities": probabilities,
        "predicted_class": tf.argmax(probabilities, axis=-1),
        "confidence": tf.reduce_max(probabilities, axis=-1),
        "predictive_entropy": _entropy(probabilities),
        "mutual_information": _entropy(mean) - tf.reduce_mean(_entropy(members), axis=0),
        "member_probabilities": swap_member_axes(members),
    }


def export_for_serving(model, path, num_samples=1, seed=0, serving_input=None, temperature=1.0):
    """Writes a SavedModel of `model` with the uncertainty signature above.

    Args:
        model: a single-input Keras classifier: a plain model returning
            class probabilities, or one from `rank1_keras.convert` /
            `join_ensemble` (its K members are read through `member_outputs`;
            logits members, `output_type="logits"`, are turned into
            probabilities before averaging). Regression models are refused.
        path: the SavedModel directory.
        num_samples: forward passes averaged per member (S); > 1 only helps
            stochastic models (rank-1 with sampling, MC dropout, LP-BNN).
        seed: every request starts the random streams from the state
            `reset_seed_generators(model, seed)` sets, so answers depend on
            the input only. None: the streams continue from call to call
            (each fresh load starts from the state saved with the model).
        serving_input: a `ServingInput` (None: float features of the model's
            input shape).
        temperature: positive T the averaged probabilities are scaled by
            (1: unscaled); fit it on held-out data with
            `post_processing.fit_temperature_from_probabilities`.

    A converted ensemble whose layers fold (`fold_members`: no factors drawn
    at inference) is served, from `FOLDED_FROM_EXAMPLES` examples per request,
    as K plain networks with its members' folded kernels, and below that by
    its one tiled pass: the same answers, whichever is faster.

    Returns:
        `path`.
    """
    validation.require_tensorflow("export_for_serving", "it writes a TensorFlow SavedModel with tf.function signatures")
    validation.check_positive_int(num_samples, "num_samples")
    temperature = validation.check_positive_finite(temperature, "temperature")
    if seed is not None:
        seed = validation.check_non_negative_int(seed, "seed")
    serving_input = serving_input or ServingInput()
    if not isinstance(serving_input, ServingInput):
        raise ValueError(f"serving_input must be a ServingInput or None; got {type(serving_input).__name__}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"model must have one input and one output to export; got {len(model.inputs)} and {len(model.outputs)}."
        )
    has_members = any(isinstance(layer, AverageMembers) for layer in model.layers)
    rows_model = member_outputs(model) if has_members else model
    # The same answers as K plain networks (a deep ensemble's graph) for requests of FOLDED_FROM_EXAMPLES or more.
    folded_rows_model = member_outputs(fold_members(model)) if has_members and folding_obstacle_of(model) is None else None
    output_type = check_classifier_output(member_output_types(model)[0] if has_members else "probabilities")
    model_shape = tuple(model.inputs[0].shape)
    spec, preprocess = _preprocessor(serving_input, model_shape)
    generators = seed_generators(rows_model)
    initial_states = _seed_states(seed, len(generators)) if seed is not None else None

    def serve(raw):
        if initial_states is not None:
            for generator, state in zip(generators, initial_states):
                generator.state.assign(tf.constant(state, generator.state.dtype))
        inputs = preprocess(**raw)

        def member_rows(rows_model_of_request):
            return tf.cast(rows_model_of_request(inputs, training=False), tf.float32)

        passes = []
        for _ in range(num_samples):
            if folded_rows_model is None:
                outputs = member_rows(rows_model)
            else:
                outputs = tf.cond(
                    tf.shape(keras.tree.flatten(inputs)[0])[0] < FOLDED_FROM_EXAMPLES,
                    lambda: member_rows(rows_model),
                    lambda: member_rows(folded_rows_model),
                )
            # Members come on axis 1, (B, K, C); a plain model gives (B, C), one member.
            members = swap_member_axes(outputs) if has_members else outputs[None]
            passes.append(class_probabilities(members, output_type))
        return uncertainty_outputs(tf.concat(passes, axis=0), temperature)

    archive = keras.export.ExportArchive()
    archive.track(rows_model)
    if folded_rows_model is not None:
        archive.track(folded_rows_model)
    with _tiled_below_folding(model, folded_rows_model is not None):
        archive.add_endpoint("serving_default", serve, input_signature=[spec])
        archive.write_out(path, verbose=False)
    return path


@contextlib.contextmanager
def _tiled_below_folding(model, folds):
    """While the export traces: the converted model's member chains off when the folded networks
    take the large requests, so the small ones get its one tiled pass (chains would otherwise run
    for a batch size known only when the graph runs)."""
    chains = [layer for layer in model.layers if isinstance(layer, MemberChains)] if folds else []
    saved = [layer.__dict__.get("_chains_from_batch", _UNSET) for layer in chains]
    try:
        for layer in chains:
            layer.chains_from_batch = None
        yield
    finally:
        for layer, value in zip(chains, saved):
            if value is _UNSET:
                layer.__dict__.pop("_chains_from_batch", None)
            else:
                layer.chains_from_batch = value


_UNSET = object()
