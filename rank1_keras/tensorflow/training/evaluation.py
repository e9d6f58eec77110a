"""Evaluating a trained method: member probabilities -> the comparison metrics.

Every method is evaluated the same way: each example's K members (and S
stochastic passes) give probabilities p_mi (m over K*S); the prediction is
their average, so

    accuracy, NLL, ECE (15 bins), Brier     of the averaged probabilities,
    disagreement, average KL, mutual info   of the members (when M > 1),
    OOD AUROC / AUPR                        test set vs each OOD set, score 1 - max p,
    temperature-scaled NLL / ECE            T fitted on the validation split,
    accuracy / NLL / ECE per shift          each corruption type and severity.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from rank1_keras import metrics, post_processing
from rank1_keras.convert import member_output_types, member_outputs
from rank1_keras.models.ensemble import AverageMembers, class_probabilities, swap_member_axes
from rank1_keras.tensorflow.training.loop import TrainData, epoch_dataset


@dataclasses.dataclass
class EvaluationSets:
    """What to evaluate on; every entry is a `TrainData` of unbatched examples.

    Attributes:
        test: the in-distribution test set.
        validation: held-out training examples for temperature scaling (or None).
        ood: {name: set} of out-of-distribution inputs (labels ignored).
        shifted: {(corruption, severity): set} of shifted test inputs.
        background_class: for segmentation (labels per pixel): the background
            class. Then `mean_iou` is reported, and OOD is scored per pixel:
            the test set's non-background pixels against the pixels labelled 1
            (the OOD object) in each OOD set.
    """

    test: TrainData
    validation: TrainData = None
    ood: dict = dataclasses.field(default_factory=dict)
    shifted: dict = dataclasses.field(default_factory=dict)
    background_class: int = None


def member_predictor(model):
    """A traced function: features -> member class probabilities (M, B, ..., C).

    M = K for `convert` / `join_ensemble` models (their members, read
    through `member_outputs`, logits turned into probabilities), 1 for a
    plain model returning probabilities.
    """
    if any(isinstance(layer, AverageMembers) for layer in model.layers):
        members_model, output_type = member_outputs(model), member_output_types(model)[0]

        def predict(features):
            members = members_model(features, training=False)  # (B, K, ..., C)
            return class_probabilities(swap_member_axes(members), output_type)

    else:

        def predict(features):
            return model(features, training=False)[None]

    # reduce_retracing: the last batch of a set is smaller.
    return tf.function(predict, reduce_retracing=True)


def predict_members(model, data, num_samples=1, batch_size=256, predict=None, ignore_class=None):
    """Member probabilities (M, N, C), M = K * num_samples, and labels (N,).

    Dense predictions (B, d..., C) with labels (B, d...) count every position
    as one example (per-pixel metrics): N = examples x positions, less the
    positions labelled `ignore_class`. `num_samples` passes are stacked for
    stochastic methods. `predict`: a `member_predictor(model)` to reuse
    across sets.
    """
    predict = predict or member_predictor(model)
    passes, labels = [], None
    for _ in range(num_samples):
        chunks, label_chunks = [], []
        for features, batch_labels in epoch_dataset(data, 0, batch_size, seed=0, training=False):
            members = np.asarray(predict(features), dtype=np.float64)
            chunks.append(members.reshape(members.shape[0], -1, members.shape[-1]))
            label_chunks.append(np.asarray(batch_labels).reshape(-1))
        passes.append(np.concatenate(chunks, axis=1))
        labels = np.concatenate(label_chunks)
    member_probabilities = np.concatenate(passes, axis=0)
    if ignore_class is not None:
        kept = labels != ignore_class
        member_probabilities, labels = member_probabilities[:, kept], labels[kept]
    # float32 softmax rows can sum to 1 +- 1e-7; renormalise in float64.
    member_probabilities /= member_probabilities.sum(axis=-1, keepdims=True)
    return member_probabilities, labels.astype(np.int64)


def classification_metrics(member_probabilities, labels):
    """Accuracy, NLL, ECE, Brier, entropy (+ diversity and mutual information for M > 1)."""
    probabilities = member_probabilities.mean(axis=0)
    result = metrics.evaluate_classifier(probabilities, labels)
    result["predictive_entropy"] = float(metrics.predictive_entropy(probabilities).mean())
    if member_probabilities.shape[0] > 1:
        result["mutual_information"] = float(metrics.mutual_information(member_probabilities).mean())
        result["disagreement"] = metrics.disagreement(member_probabilities)
        result["average_kl"] = metrics.average_kl(member_probabilities)
    return result


def evaluate(model, sets, num_samples=1, batch_size=256, reliability_path=None):
    """All metrics of `model` on `sets` (an `EvaluationSets`), as a flat dict.

    Keys: the test metrics (`accuracy`, `nll`, `ece`, `brier`, ...);
    `validation_nll`, `validation_ece`, `validation_accuracy` (the split that
    every choice of settings is made on; the test metrics are reported once);
    `temperature`, `nll_temperature_scaled`, `ece_temperature_scaled` with a
    validation split (or `temperature_skipped` with the reason when every
    validation example is right, so no finite temperature minimises its NLL); `ood/<name>/auroc`, `ood/<name>/aupr` and `ood_auroc`
    (the first set); `shift/<corruption>/<severity>/{accuracy,nll,ece}` and
    `shift_accuracy`, `shift_nll`, `shift_ece` (means over all shifts) and,
    with a fitted temperature, `shift_ece_temperature_scaled`.
    """
    predict = member_predictor(model)

    def members_of(data):
        return predict_members(model, data, num_samples, batch_size, predict)

    member_probabilities, labels = members_of(sets.test)
    probabilities = member_probabilities.mean(axis=0)
    result = classification_metrics(member_probabilities, labels)
    result["test_examples"] = int(sets.test.num_examples)
    pixels = sets.background_class is not None
    if pixels:
        result["mean_iou"] = metrics.mean_iou(probabilities, labels)

    if sets.validation is not None:
        validation_members, validation_labels = members_of(sets.validation)
        validation_probabilities = validation_members.mean(axis=0)
        validation_metrics = metrics.evaluate_classifier(validation_probabilities, validation_labels)
        for name in ("accuracy", "nll", "ece"):
            result[f"validation_{name}"] = validation_metrics[name]
    temperature = None
    if sets.validation is not None and np.all(validation_probabilities.argmax(-1) == validation_labels):
        # Every validation example right: the validation NLL falls all the way to T -> 0,
        # so there is no temperature to fit (it would sharpen test predictions without limit).
        result["temperature_skipped"] = "every validation example is classified correctly"
    elif sets.validation is not None:
        temperature = post_processing.fit_temperature_from_probabilities(validation_probabilities, validation_labels)
        scaled = post_processing.apply_temperature_to_probabilities(probabilities, temperature)
        result["temperature"] = float(temperature)
        result["nll_temperature_scaled"] = metrics.negative_log_likelihood(scaled, labels)
        result["ece_temperature_scaled"] = metrics.expected_calibration_error(scaled, labels)

    in_scores = metrics.ood_scores(probabilities)
    if pixels:  # in-distribution objects' pixels, not the easy background
        in_scores = in_scores[labels != sets.background_class]
    for index, (name, data) in enumerate(sets.ood.items()):
        ood_members, ood_labels = members_of(data)
        out_scores = metrics.ood_scores(ood_members.mean(axis=0))
        if pixels:  # the OOD object's pixels
            out_scores = out_scores[ood_labels == 1]
        result[f"ood/{name}/auroc"] = metrics.ood_auroc(in_scores, out_scores)
        result[f"ood/{name}/aupr"] = metrics.ood_aupr(in_scores, out_scores)
        if index == 0:
            result["ood_auroc"] = result[f"ood/{name}/auroc"]
            result["ood_aupr"] = result[f"ood/{name}/aupr"]

    shifts = {"accuracy": [], "nll": [], "ece": [], "ece_temperature_scaled": []}
    for (corruption, severity), data in sets.shifted.items():
        shifted_members, shifted_labels = members_of(data)
        shifted_probabilities = shifted_members.mean(axis=0)
        shifted = metrics.evaluate_classifier(shifted_probabilities, shifted_labels)
        for name in ("accuracy", "nll", "ece"):
            result[f"shift/{corruption}/{severity}/{name}"] = shifted[name]
            shifts[name].append(shifted[name])
        if temperature is not None:
            # The validation split's temperature, as a user would deploy it: shifted data has no labels to fit one.
            scaled = post_processing.apply_temperature_to_probabilities(shifted_probabilities, temperature)
            shifts["ece_temperature_scaled"].append(metrics.expected_calibration_error(scaled, shifted_labels))
    for name, values in shifts.items():
        if values:
            result[f"shift_{name}"] = float(np.mean(values))

    if reliability_path:
        try:
            metrics.reliability_diagram(probabilities, labels, reliability_path, title=model.name)
        except ImportError as error:  # matplotlib is an optional extra
            print(f"Skipping the reliability diagram: {error}", flush=True)
    return result


# -- tables -------------------------------------------------------------------

TABLE_COLUMNS = (
    ("method", "method", "{}"),
    ("K", "ensemble_size", "{}"),
    ("params", "parameters", "{:,}"),
    ("trainable / base", "trainable_fraction", "{:.2%}"),  # Bella: its low-rank parameters over the frozen net's
    ("train s", "train_seconds", "{:.0f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("NLL", "nll", "{:.4f}"),
    # Shown when the table has a deterministic and a deep-ensemble row: see `gap_closed`.
    ("NLL gap closed", "nll_gap_closed", "{:.0%}"),
    ("ECE", "ece", "{:.4f}"),
    ("Brier", "brier", "{:.4f}"),
    ("OOD AUROC", "ood_auroc", "{:.4f}"),
    ("mIoU", "mean_iou", "{:.4f}"),  # segmentation
    ("disagreement", "disagreement", "{:.4f}"),
    ("NLL (T)", "nll_temperature_scaled", "{:.4f}"),
    ("ECE (T)", "ece_temperature_scaled", "{:.4f}"),
    ("shift acc", "shift_accuracy", "{:.4f}"),
    ("shift ECE", "shift_ece", "{:.4f}"),
)


def _cell(result, key, form):
    value = result.get(key)
    return "-" if value is None else form.format(value)


# Task-specific columns, shown only when a row has them (classification tables keep their layout).
_OPTIONAL_COLUMNS = {"mean_iou", "nll_gap_closed"}


def _columns(results):
    return [
        column for column in TABLE_COLUMNS
        if column[1] not in _OPTIONAL_COLUMNS or any(result.get(column[1]) is not None for result in results)
    ]


def markdown_header(results=()):
    names = [name for name, _, _ in _columns(results)]
    return "| " + " | ".join(names) + " |\n|" + "|".join("---" for _ in names) + "|"


def markdown_row(result, results=None):
    """One run's row of the comparison table (Markdown); `results`: the table's rows, for its columns."""
    columns = _columns(results if results is not None else [result])
    return "| " + " | ".join(_cell(result, key, form) for _, key, form in columns) + " |"


def gap_closed(value, deterministic, ensemble, lower_is_better=True):
    """Share of the deterministic -> deep-ensemble gap a method closes: 0 = one network's, 1 = the ensemble's.

        (deterministic - value) / (deterministic - ensemble)      (lower is better; the other way round else)

    None when the deep ensemble is no better than one network: there is no gap to close.

    >>> round(gap_closed(0.37, deterministic=0.40, ensemble=0.34), 2)
    0.5
    """
    gap = deterministic - ensemble if lower_is_better else ensemble - deterministic
    if gap <= 0:
        return None
    return (deterministic - value if lower_is_better else value - deterministic) / gap


def with_gap_closed(results):
    """Copies of `results` with `nll_gap_closed`, when one row is "deterministic" and one "ensemble"."""
    reference = {result.get("method"): result.get("nll") for result in results}
    deterministic, ensemble = reference.get("deterministic"), reference.get("ensemble")
    if deterministic is None or ensemble is None:
        return list(results)
    return [
        dict(result, nll_gap_closed=None if result.get("nll") is None else gap_closed(result["nll"], deterministic, ensemble))
        for result in results
    ]


def markdown_table(results):
    results = with_gap_closed(results)
    return "\n".join([markdown_header(results)] + [markdown_row(result, results) for result in results])
