"""The shared training loop: schedules, data order, checkpoints, exact resume."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rank1_keras.methods.settings import MethodSettings, build_method_models
from rank1_keras.models.small_cnn import small_cnn
from rank1_keras.runs import checkpoint as checkpoints
from rank1_keras.tensorflow.training.loop import TrainData, TrainingSettings, epoch_dataset, train
from rank1_keras.tensorflow.training.schedules import WarmupPiecewiseDecay


def _data(count=256, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(count, 12, 12, 1)).astype("float32")
    labels = (images[:, :6].mean(axis=(1, 2, 3)) > images[:, 6:].mean(axis=(1, 2, 3))).astype("int32")
    return images, labels


def _train_data(images, labels, preprocess=None):
    return TrainData(tf.data.Dataset.from_tensor_slices((images, labels)), len(labels), preprocess)


def _build(method, seed=3, ensemble_size=2, train_size=256):
    keras.utils.set_random_seed(seed)
    settings = MethodSettings(method=method, ensemble_size=ensemble_size, train_size=train_size, dropout_rate=0.2)
    models = build_method_models(lambda: small_cnn((12, 12, 1), 2), settings)
    return models[0], settings


SETTINGS = TrainingSettings(
    train_epochs=3,
    per_replica_batch_size=32,
    base_learning_rate=0.05,
    lr_warmup_epochs=0.5,
    lr_decay_epochs=(2.0,),
    kl_annealing_epochs=2.0,
    verbose=0,
    seed=7,
)


# -- schedule ------------------------------------------------------------------


def test_schedule_matches_closed_form():
    schedule = WarmupPiecewiseDecay(0.4, 10, warmup_epochs=2, decay_epochs=(3, 5), decay_ratio=0.1)
    for step in range(0, 70, 3):
        epoch = step / 10
        expected = 0.4 * epoch / 2 if epoch < 2 else 0.4 * 0.1 ** sum(epoch >= e for e in (3, 5))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6), step


def test_schedule_round_trips_and_rejects_bad_arguments():
    schedule = WarmupPiecewiseDecay(0.1, 7, 1.0, (2.0, 4.0), 0.2)
    clone = WarmupPiecewiseDecay.from_config(schedule.get_config())
    assert [float(clone(s)) for s in range(40)] == [float(schedule(s)) for s in range(40)]
    with pytest.raises(ValueError, match="decay_epochs"):
        WarmupPiecewiseDecay(0.1, 7, 0.0, (4.0, 2.0))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        WarmupPiecewiseDecay(0.1, 0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        WarmupPiecewiseDecay(0.1, 5, warmup_epochs=-1)


# -- data order ----------------------------------------------------------------


def _labels_in_order(data, epoch, seed):
    return np.concatenate([y.numpy() for _, y in epoch_dataset(data, epoch, 16, seed)])


def test_epoch_order_depends_only_on_seed_and_epoch():
    images, _ = _data(64)
    data = _train_data(images, np.arange(64, dtype="int32"))
    first = _labels_in_order(data, 1, seed=5)
    assert sorted(first) == list(range(64))  # a permutation: nothing lost or repeated
    np.testing.assert_array_equal(first, _labels_in_order(data, 1, seed=5))
    assert not np.array_equal(first, _labels_in_order(data, 2, seed=5))
    assert not np.array_equal(first, _labels_in_order(data, 1, seed=6))


def test_augmentation_seed_is_per_epoch_and_example():
    images, _ = _data(32)
    seen = []

    def preprocess(features, label, seed, training):
        seen.append(seed)
        return features + tf.cast(seed[0] * 1000 + seed[1], tf.float32), label

    data = _train_data(images, np.arange(32, dtype="int32"), preprocess)
    batches = list(epoch_dataset(data, 3, 32, seed=2))
    (features, labels), = batches
    offsets = features.numpy()[:, 0, 0, 0] - images[labels.numpy(), 0, 0, 0]
    expected = (2 * 100_003 + 3) * 1000 + np.arange(32)
    np.testing.assert_allclose(offsets, expected, rtol=1e-6)


# -- checkpoints ---------------------------------------------------------------


def _optimizer(model):
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return optimizer


def test_checkpoint_restores_every_variable_including_random_state(tmp_path):
    model, _ = _build("rank1")
    model(np.zeros((4, 12, 12, 1), "float32"), training=True)  # moves the seed generators
    optimizer = _optimizer(model)
    for variable in optimizer.variables:
        variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype(variable.dtype))
    saved = [v.numpy().copy() for v in model.variables + optimizer.variables]
    seed_states = [v for v in model.variables if "seed_generator_state" in v.path]
    assert seed_states, "the rank-1 layers' random state must be among the model's variables"
    path = checkpoints.save_checkpoint(str(tmp_path), 4, model, optimizer, {"note": "x"})
    for variable in model.variables + optimizer.variables:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    header = checkpoints.restore_checkpoint(path, model, optimizer)
    assert header["epoch"] == 4 and header["metadata"] == {"note": "x"}
    for before, variable in zip(saved, model.variables + optimizer.variables):
        np.testing.assert_array_equal(before, variable.numpy())


def test_checkpoint_keeps_newest_and_points_at_latest(tmp_path):
    model, _ = _build("deterministic")
    optimizer = _optimizer(model)
    for epoch in (1, 2, 3):
        checkpoints.save_checkpoint(str(tmp_path), epoch, model, optimizer, keep=2)
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".npz"))
    assert files == ["ckpt-00002.npz", "ckpt-00003.npz"]
    assert checkpoints.latest_checkpoint(str(tmp_path)).endswith("ckpt-00003.npz")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    model, _ = _build("deterministic")
    optimizer = _optimizer(model)
    path = checkpoints.save_checkpoint(str(tmp_path), 1, model, optimizer)
    with open(path, "r+b") as stream:
        stream.truncate(os.path.getsize(path) // 2)
    with pytest.raises(checkpoints.CheckpointError, match="corrupt or unreadable"):
        checkpoints.restore_checkpoint(path, model, optimizer)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model, _ = _build("deterministic")
    path = checkpoints.save_checkpoint(str(tmp_path), 1, model, _optimizer(model))
    other, _ = _build("batchensemble")
    with pytest.raises(checkpoints.CheckpointError, match="different model"):
        checkpoints.restore_checkpoint(path, other, _optimizer(other))


# -- training ------------------------------------------------------------------


def test_kl_weight_follows_the_schedule_and_loss_is_finite(tmp_path):
    model, method = _build("rank1")
    record = train(model, _train_data(*_data()), SETTINGS, members=method.members, checkpoint_dir=str(tmp_path))
    steps = 256 // 32
    assert record.logs["kl_weight"] == pytest.approx(min(1.0, (2 * steps + steps) / steps / 2.0))
    weights = {float(layer.kl_weight.numpy()) for layer in model._flatten_layers() if getattr(layer, "kl_weight", None) is not None}
    assert weights == {1.0}
    assert np.isfinite(record.logs["nll"]) and record.logs["regularization"] > 0
    assert record.logs["replica_batch_size"] == 32


def _final_weights(model):
    return [v.numpy().copy() for v in model.variables]


@pytest.mark.parametrize("method", ["rank1", "dropout"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, method):
    """A crash in the middle of epoch 2, then a fresh process-like restart, ends where an uninterrupted run ends."""
    images, labels = _data()
    uninterrupted, settings = _build(method)
    train(uninterrupted, _train_data(images, labels), SETTINGS, members=settings.members,
          checkpoint_dir=str(tmp_path / "straight"))

    crash_seed = SETTINGS.seed * 100_003 + 1  # epoch index 1 = the second epoch

    def crash_in_epoch_two(features, label, seed, training):
        check = tf.debugging.Assert(
            tf.logical_not(tf.logical_and(tf.equal(seed[0], crash_seed), seed[1] >= 100)), ["simulated kill"]
        )
        with tf.control_dependencies([check]):
            return tf.identity(features), label

    interrupted, _ = _build(method)
    with pytest.raises(tf.errors.InvalidArgumentError, match="simulated kill"):
        train(interrupted, _train_data(images, labels, crash_in_epoch_two), SETTINGS, members=settings.members,
              checkpoint_dir=str(tmp_path / "resumed"))
    assert checkpoints.latest_checkpoint(str(tmp_path / "resumed")).endswith("ckpt-00001.npz")

    def identity(features, label, seed, training):
        return features, label

    restarted, _ = _build(method, seed=99)  # a different initialisation: the checkpoint must overwrite it all
    # A restarted binary seeds TensorFlow from --seed before anything else;
    # tf.data's shuffle combines that global seed with the (seed, epoch) one.
    keras.utils.set_random_seed(3)
    record = train(restarted, _train_data(images, labels, identity), SETTINGS, members=settings.members,
                   checkpoint_dir=str(tmp_path / "resumed"))
    assert record.resumed_from_epoch == 1 and record.epochs_run == 2
    for expected, actual in zip(_final_weights(uninterrupted), _final_weights(restarted)):
        np.testing.assert_array_equal(expected, actual)


def test_resume_with_other_settings_is_refused(tmp_path):
    model, settings = _build("deterministic")
    data = _train_data(*_data())
    short = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1})
    train(model, data, short, checkpoint_dir=str(tmp_path))
    other = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1, "seed": 8})
    before = open(checkpoints.latest_checkpoint(str(tmp_path)), "rb").read()
    with pytest.raises(checkpoints.CheckpointError, match="fresh --output_dir"):
        train(model, data, other, checkpoint_dir=str(tmp_path))
    assert open(checkpoints.latest_checkpoint(str(tmp_path)), "rb").read() == before


@pytest.mark.parametrize(
    "changed, flag",
    [
        ({"base_learning_rate": 0.5}, "base_learning_rate"),
        ({"kl_annealing_epochs": 7.0}, "kl_annealing_epochs"),
        ({"lr_decay_epochs": (1.0,)}, "lr_decay_epochs"),
        ({"fast_weight_lr_multiplier": 0.5}, "fast_weight_lr_multiplier"),
        ({"optimizer": "adam"}, "optimizer"),
    ],
)
def test_resume_or_rerun_with_another_training_setting_names_it(tmp_path, changed, flag):
    model, settings = _build("rank1")
    data = _train_data(*_data())
    first = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1})
    train(model, data, first, members=settings.members, checkpoint_dir=str(tmp_path))
    before = open(checkpoints.latest_checkpoint(str(tmp_path)), "rb").read()
    for epochs in (1, 3):  # a rerun of the finished run, and a resume that would train on
        other = TrainingSettings(**{**first.__dict__, **changed, "train_epochs": epochs})
        with pytest.raises(checkpoints.CheckpointError) as error:
            train(model, data, other, members=settings.members, checkpoint_dir=str(tmp_path))
        message = str(error.value)
        old, new = getattr(first, flag), getattr(other, flag)
        as_json = lambda value: list(value) if isinstance(value, tuple) else value  # noqa: E731
        assert f"{flag}: {as_json(old)} in the checkpoint, {as_json(new)} now" in message or (
            f"{flag} (scaled to the global batch): {old} in the checkpoint, {new} now" in message
        ), message
        assert "fresh --output_dir" in message
    assert open(checkpoints.latest_checkpoint(str(tmp_path)), "rb").read() == before


def test_resume_with_other_run_settings_names_them(tmp_path):
    model, settings = _build("deterministic")
    data = _train_data(*_data())
    short = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1})
    train(model, data, short, checkpoint_dir=str(tmp_path), run_settings={"method": {"prior_stddev": 0.1}})
    with pytest.raises(checkpoints.CheckpointError, match=r"prior_stddev: 0.1 in the checkpoint, 0.7 now"):
        train(model, data, short, checkpoint_dir=str(tmp_path), run_settings={"method": {"prior_stddev": 0.7}})
    record = train(model, data, short, checkpoint_dir=str(tmp_path), run_settings={"method": {"prior_stddev": 0.1}})
    assert record.resumed_from_epoch == 1 and record.epochs_run == 0


def test_a_checkpoint_older_than_a_setting_resumes_when_the_setting_is_at_its_default(tmp_path):
    """A library upgrade adds a method setting (e.g. packed_groups): old runs resume at its default only."""
    model, settings = _build("deterministic")
    data = _train_data(*_data())
    short = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1})
    defaults = {"method": {"prior_stddev": 0.1, "packed_groups": 1}}
    train(model, data, short, checkpoint_dir=str(tmp_path), run_settings={"method": {"prior_stddev": 0.1}})
    newer = {"method": {"prior_stddev": 0.1, "packed_groups": 1}}
    record = train(model, data, short, checkpoint_dir=str(tmp_path), run_settings=newer, run_setting_defaults=defaults)
    assert record.resumed_from_epoch == 1 and record.epochs_run == 0
    changed = {"method": {"prior_stddev": 0.1, "packed_groups": 2}}
    with pytest.raises(checkpoints.CheckpointError, match=r"packed_groups: 1 in the checkpoint, 2 now"):
        train(model, data, short, checkpoint_dir=str(tmp_path), run_settings=changed, run_setting_defaults=defaults)
    with pytest.raises(checkpoints.CheckpointError, match=r"packed_groups: not recorded in the checkpoint, 1 now"):
        train(model, data, short, checkpoint_dir=str(tmp_path), run_settings=newer)  # no defaults: unknown


def test_training_longer_continues_the_run_but_fewer_epochs_are_refused(tmp_path):
    _, run = _checkpointed_run(tmp_path, epochs=2)
    with pytest.raises(checkpoints.CheckpointError, match=r"trained for 2 epochs; this run has train_epochs=1"):
        _resume(tmp_path, TrainingSettings(**{**run.__dict__, "train_epochs": 1}))
    record, _ = _resume(tmp_path, TrainingSettings(**{**run.__dict__, "train_epochs": 3}))
    assert record.resumed_from_epoch == 2 and record.epochs_run == 1


def _checkpointed_run(directory, epochs=2):
    model, settings = _build("rank1")
    run = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": epochs})
    train(model, _train_data(*_data()), run, members=settings.members, checkpoint_dir=str(directory))
    return _final_weights(model), run


def _resume(directory, run):
    model, settings = _build("rank1", seed=99)
    keras.utils.set_random_seed(3)
    record = train(model, _train_data(*_data()), run, members=settings.members, checkpoint_dir=str(directory))
    return record, _final_weights(model)


def test_a_checkpoint_the_pointer_does_not_name_yet_is_used(tmp_path, capsys):
    """A kill between a checkpoint's rename and the pointer's update: the newer file is complete."""
    expected, run = _checkpointed_run(tmp_path / "straight", epochs=3)
    _checkpointed_run(tmp_path / "killed", epochs=2)
    pointer = tmp_path / "killed" / "latest"
    pointer.write_bytes(b"ckpt-00001.npz")  # the state right before the pointer would have moved
    (tmp_path / "killed" / ".tmp-abc.npz").write_bytes(b"half a checkpoint")  # a killed write's leftover
    record, actual = _resume(tmp_path / "killed", run)
    assert record.resumed_from_epoch == 2 and record.epochs_run == 1
    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(want, got)
    assert "names 'ckpt-00001.npz'" in capsys.readouterr().err
    assert not [name for name in os.listdir(tmp_path / "killed") if name.startswith(".tmp-")]


def test_resume_falls_back_past_an_unreadable_checkpoint_and_keeps_it(tmp_path, capsys):
    expected, run = _checkpointed_run(tmp_path / "straight", epochs=3)
    _checkpointed_run(tmp_path / "damaged", epochs=2)
    newest = tmp_path / "damaged" / "ckpt-00002.npz"
    truncated = newest.read_bytes()[: newest.stat().st_size // 2]
    newest.write_bytes(truncated)
    point = checkpoints.find_resume_checkpoint(str(tmp_path / "damaged"))
    assert point.path.endswith("ckpt-00001.npz") and [path for path, _ in point.skipped] == [str(newest)]
    assert newest.read_bytes() == truncated  # finding it only reads
    record, actual = _resume(tmp_path / "damaged", run)
    assert record.resumed_from_epoch == 1 and record.epochs_run == 2
    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(want, got)
    assert (tmp_path / "damaged" / "ckpt-00002.npz.unreadable").read_bytes() == truncated
    err = capsys.readouterr().err
    assert f"skipped checkpoint {newest}" in err and "kept as" in err


def test_garbage_in_the_pointer_is_ignored_with_its_path(tmp_path, capsys):
    _, run = _checkpointed_run(tmp_path, epochs=1)
    (tmp_path / "latest").write_bytes(bytes(range(128, 256)))
    assert checkpoints.latest_checkpoint(str(tmp_path)).endswith("ckpt-00001.npz")
    record, _ = _resume(tmp_path, run)
    assert record.resumed_from_epoch == 1
    assert f"ignored the checkpoint pointer {tmp_path / 'latest'}" in capsys.readouterr().err


def test_no_readable_checkpoint_starts_over_and_keeps_the_damaged_one(tmp_path, capsys):
    _, run = _checkpointed_run(tmp_path, epochs=1)
    only = tmp_path / "ckpt-00001.npz"
    only.write_bytes(b"not a zip file")
    record, _ = _resume(tmp_path, run)
    assert record.resumed_from_epoch == 0 and record.epochs_run == 1
    assert (tmp_path / "ckpt-00001.npz.unreadable").read_bytes() == b"not a zip file"
    assert checkpoints.read_header(str(only))["epoch"] == 1  # rewritten by the new run
    assert "training starts at epoch 1" in capsys.readouterr().err


def test_batch_larger_than_the_data_is_a_clear_error():
    model, _ = _build("deterministic")
    settings = TrainingSettings(**{**SETTINGS.__dict__, "per_replica_batch_size": 512})
    with pytest.raises(ValueError, match="per_core_batch_size=512"):
        train(model, _train_data(*_data()), settings)


def test_diverging_loss_stops_without_a_checkpoint(tmp_path):
    model, _ = _build("deterministic")
    images, labels = _data()
    images[5] = np.inf
    settings = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1})
    with pytest.raises(FloatingPointError, match="base_learning_rate"):
        train(model, _train_data(images, labels), settings, checkpoint_dir=str(tmp_path))
    assert checkpoints.latest_checkpoint(str(tmp_path)) is None


def test_split_training_runs_on_a_batch_that_k_does_not_divide():
    """Each member trains on its own block, 11 or 10 of a batch of 32 with K=3 (issue: any batch size)."""
    settings = MethodSettings(method="batchensemble", ensemble_size=3, training_batch="split", train_size=256)
    assert settings.members == 1
    assert MethodSettings(method="batchensemble", ensemble_size=3).members == 3
    keras.utils.set_random_seed(3)
    (model,) = build_method_models(lambda: small_cnn((12, 12, 1), 2), settings)
    before = [v.numpy().copy() for v in model.trainable_variables]
    record = train(model, _train_data(*_data()), TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1}))
    assert record.logs["replica_batch_size"] == 32 and np.isfinite(record.logs["nll"])
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
    # Inference tiles: the three members answer differently (random-sign factors).
    images, _ = _data(8)
    from rank1_keras.convert import member_outputs

    outputs = np.asarray(member_outputs(model)(images))  # (B, K, C)
    assert outputs.shape[1] == 3
    assert not np.allclose(outputs[:, 0], outputs[:, 1]) and not np.allclose(outputs[:, 1], outputs[:, 2])


def test_temperature_is_fitted_unless_the_validation_split_is_perfectly_classified():
    import keras
    import numpy as np
    import tensorflow as tf

    from rank1_keras import metrics, post_processing
    from rank1_keras.tensorflow.training.evaluation import EvaluationSets, evaluate
    from rank1_keras.tensorflow.training.loop import TrainData

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Softmax()(inputs))  # logits are the inputs
    test_x = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]], "float32")
    test_y = np.array([0, 1, 1])

    def data(x, y):
        return TrainData(tf.data.Dataset.from_tensor_slices((x, y.astype("int32"))), len(y))

    separable_x, separable_y = np.array([[3.0, 0.0], [0.0, 2.0]], "float32"), np.array([0, 1])
    result = evaluate(model, EvaluationSets(test=data(test_x, test_y), validation=data(separable_x, separable_y)))
    assert "temperature" not in result and "nll_temperature_scaled" not in result
    assert "every validation example" in result["temperature_skipped"]

    mixed_x, mixed_y = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]], "float32"), np.array([0, 1, 1])
    result = evaluate(model, EvaluationSets(test=data(test_x, test_y), validation=data(mixed_x, mixed_y)))
    expected = post_processing.fit_temperature(mixed_x.astype("float64"), mixed_y)
    assert abs(result["temperature"] - expected) < 1e-4 * expected
    assert "temperature_skipped" not in result


def test_validation_and_shift_metrics_are_those_of_their_own_sets():
    """Every choice is made on `validation_*`; shift ECE after temperature uses the validation split's T."""
    import keras
    import numpy as np
    import tensorflow as tf

    from rank1_keras import metrics, post_processing
    from rank1_keras.tensorflow.training.evaluation import EvaluationSets, evaluate
    from rank1_keras.tensorflow.training.loop import TrainData

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Softmax()(inputs))  # logits are the inputs
    rng = np.random.default_rng(0)

    def arrays(n, scale):
        x = (rng.normal(size=(n, 3)) * scale).astype("float32")
        return x, rng.integers(0, 3, n)

    def data(x, y):
        return TrainData(tf.data.Dataset.from_tensor_slices((x, y.astype("int32"))), len(y))

    test, valid, shift_a, shift_b = arrays(40, 2.0), arrays(30, 3.0), arrays(20, 4.0), arrays(20, 1.0)
    result = evaluate(model, EvaluationSets(test=data(*test), validation=data(*valid),
                                            shifted={("noise", 1): data(*shift_a), ("blur", 1): data(*shift_b)}))

    def softmax(x):
        e = np.exp(x.astype("float64") - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    assert result["validation_nll"] == pytest.approx(metrics.negative_log_likelihood(softmax(valid[0]), valid[1]), 1e-5)
    assert result["validation_ece"] == pytest.approx(metrics.expected_calibration_error(softmax(valid[0]), valid[1]), 1e-5)
    shifts = [shift_a, shift_b]
    assert result["shift_nll"] == pytest.approx(
        np.mean([metrics.negative_log_likelihood(softmax(x), y) for x, y in shifts]), 1e-5)
    temperature = post_processing.fit_temperature(valid[0].astype("float64"), valid[1])
    scaled_eces = [metrics.expected_calibration_error(softmax(x / temperature), y) for x, y in shifts]
    assert result["shift_ece_temperature_scaled"] == pytest.approx(np.mean(scaled_eces), rel=1e-3, abs=1e-4)


# -- nothing lost, part two ------------------------------------------------------


def test_a_second_damaged_checkpoint_of_the_same_name_never_overwrites_the_first_set_aside(tmp_path, capsys):
    _checkpointed_run(tmp_path, epochs=2)
    newest = tmp_path / "ckpt-00002.npz"
    intact = newest.read_bytes()
    (tmp_path / "ckpt-00002.npz.unreadable").write_bytes(b"damaged the first time")
    newest.write_bytes(intact[: len(intact) // 2])
    point = checkpoints.find_resume_checkpoint(str(tmp_path), set_aside_unreadable=True)
    assert point.path.endswith("ckpt-00001.npz")
    assert (tmp_path / "ckpt-00002.npz.unreadable").read_bytes() == b"damaged the first time"
    assert (tmp_path / "ckpt-00002.npz.2.unreadable").read_bytes() == intact[: len(intact) // 2]
    assert any("kept as" in note and note.endswith("ckpt-00002.npz.2.unreadable") for note in point.notes)


def test_a_pointer_naming_a_missing_checkpoint_does_not_call_the_older_one_newer(tmp_path):
    _checkpointed_run(tmp_path, epochs=1)
    (tmp_path / "latest").write_bytes(b"ckpt-00009.npz")
    point = checkpoints.find_resume_checkpoint(str(tmp_path))
    assert point.path.endswith("ckpt-00001.npz")
    assert point.notes == [
        f"the pointer {tmp_path / 'latest'} names 'ckpt-00009.npz', which is not in {tmp_path}; "
        f"{tmp_path / 'ckpt-00001.npz'} is the newest checkpoint there"
    ]


def test_removing_an_interrupted_write_says_so(tmp_path, capsys):
    _, run = _checkpointed_run(tmp_path, epochs=1)
    (tmp_path / ".tmp-abc.npz").write_bytes(b"half a checkpoint")
    _resume(tmp_path, run)
    assert f"warning: removed {tmp_path / '.tmp-abc.npz'}, the leftover of an interrupted write" in capsys.readouterr().err


def test_the_divergence_error_starts_on_a_line_of_its_own(tmp_path, capsys):
    model, _ = _build("deterministic")
    images, labels = _data()
    images[100] = np.inf  # in a later batch: the progress bar has drawn earlier steps without a line break
    settings = TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1, "verbose": 1})
    with pytest.raises(FloatingPointError, match="non-finite at epoch 1, step [2-8]"):
        train(model, _train_data(images, labels), settings, checkpoint_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "1/8" in out and out.endswith("\n")


def test_train_refuses_a_checkpoint_directory_another_process_holds(tmp_path):
    from tests.test_directory_lock import start_holder

    from rank1_keras.runs.directory_lock import DirectoryInUseError

    model, _ = _build("deterministic")
    holder = start_holder(tmp_path)
    try:
        (tmp_path / ".tmp-live.npz").write_bytes(b"being written by the holder")
        with pytest.raises(DirectoryInUseError, match=f"checkpoint_dir={tmp_path} is in use by a training run: pid {holder.pid}"):
            train(model, _train_data(*_data()), TrainingSettings(**{**SETTINGS.__dict__, "train_epochs": 1}),
                  checkpoint_dir=str(tmp_path))
        # Its temporary file is the holder's to remove, not a starting run's.
        assert (tmp_path / ".tmp-live.npz").read_bytes() == b"being written by the holder"
        assert checkpoints.checkpoint_files(str(tmp_path)) == []
    finally:
        holder.kill()
        holder.wait()
