"""The embedded segmentation task: glyph canvases, the small U-Net, every method through the binaries' path."""

import json
import os

import numpy as np
import pytest

from rank1_keras.data import load_digits
from rank1_keras.data.glyph_canvases import INK_THRESHOLD, make_canvases, make_ood_canvases
from rank1_keras.methods.settings import MethodSettings
from rank1_keras.tensorflow.training.experiment import run_experiment
from rank1_keras.tensorflow.training.loop import TrainingSettings
from rank1_keras.tensorflow.training.tasks import TaskOptions


def test_canvases_hold_glyphs_and_their_class_per_ink_pixel():
    glyphs, digits = load_digits()
    canvases, maps = make_canvases(glyphs, digits, count=20, objects=3, seed=4)
    assert canvases.shape == (20, 32, 32, 1) and maps.shape == (20, 32, 32)
    for canvas, class_map in zip(canvases[..., 0], maps):
        cells = [(r, c) for r in range(4) for c in range(4) if canvas[8 * r : 8 * r + 8, 8 * c : 8 * c + 8].any()]
        assert len(cells) == 3
        for r, c in cells:
            patch = canvas[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
            labels = class_map[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
            # The patch is one of the glyphs, copied unchanged; its ink carries 1 + its digit.
            matches = np.flatnonzero((glyphs[..., 0] == patch).all(axis=(1, 2)))
            assert len(matches) >= 1
            assert set(np.unique(labels[patch >= INK_THRESHOLD])) == {1 + int(digits[matches[0]])}
            assert np.all(labels[patch < INK_THRESHOLD] == 0)
        assert np.count_nonzero(class_map) == np.count_nonzero(canvas >= INK_THRESHOLD)


def test_ood_canvases_mark_the_patch_ink_only():
    glyphs, _ = load_digits()
    patches = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
    canvases, maps = make_ood_canvases(glyphs, patches, count=10, seed=1)
    for canvas, ood_map in zip(canvases[..., 0], maps):
        marked = np.argwhere(ood_map == 1)
        rows, columns = marked[:, 0] // 8, marked[:, 1] // 8
        assert len(set(zip(rows, columns))) == 1  # one cell: the patch
        r, c = rows[0], columns[0]
        patch = canvas[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
        assert any(np.array_equal(patch, p[..., 0]) for p in patches)
        np.testing.assert_array_equal(ood_map[8 * r : 8 * r + 8, 8 * c : 8 * c + 8], patch >= INK_THRESHOLD)


def test_bad_object_count_is_named():
    glyphs, digits = load_digits()
    with pytest.raises(ValueError, match=r"objects must be in \[1, 16\]"):
        make_canvases(glyphs, digits, count=1, objects=17)


TRAINING = TrainingSettings(
    train_epochs=1, per_replica_batch_size=16, base_learning_rate=3e-3, optimizer="adam",
    lr_warmup_epochs=0.0, lr_decay_epochs=(), verbose=0,
)
OPTIONS = TaskOptions(train_examples=96, test_examples=16, validation_percent=25.0, shift_examples=8,
                      corruptions=("contrast",), corruption_severities=(3,))


@pytest.fixture(scope="module")
def deterministic_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("segmentation") / "deterministic")
    result = run_experiment("glyph_segmentation", MethodSettings(method="deterministic"), TRAINING, OPTIONS, output_dir)
    return output_dir, result


def _check(result, output_dir, members):
    pixels = 32 * 32
    assert result["test_examples"] == 16 and result["train_examples"] == 72
    for key in ("accuracy", "mean_iou", "ood_auroc", "ece", "shift_accuracy"):
        assert 0.0 <= result[key] <= 1.0, key
    assert np.isfinite(result["nll"])
    with open(os.path.join(output_dir, "run_settings.json")) as stream:
        settings = json.load(stream)
    # The KL is per labelled pixel: the losses average over pixels.
    assert settings["method"]["train_size"] == 72 * pixels
    if members > 1:
        assert "disagreement" in result


@pytest.mark.parametrize("method", ["dropout", "ensemble", "batchensemble", "rank1", "lpbnn", "bella"])
def test_every_method_segments_through_the_binaries_path(tmp_path, deterministic_run, method):
    pretrained, deterministic = deterministic_run
    _check(deterministic, pretrained, members=1)
    output_dir = str(tmp_path / method)
    settings = MethodSettings(
        method=method, ensemble_size=2, bella_num_particles=2, num_eval_samples=2,
        pretrained_checkpoint=pretrained if method == "bella" else None,
    )
    options = OPTIONS if method != "dropout" else TaskOptions(**{**OPTIONS.__dict__, "dropout_rate": 0.1})
    result = run_experiment("glyph_segmentation", settings, TRAINING, options, output_dir)
    _check(result, output_dir, members=2)


def test_the_miou_column_appears_only_for_segmentation_rows():
    from rank1_keras.tensorflow.training.evaluation import markdown_table

    classification = markdown_table([{"method": "rank1", "accuracy": 0.9}])
    assert "mIoU" not in classification and classification.count("|") == 3 * 16  # 15 columns, 3 lines
    segmentation = markdown_table([{"method": "rank1", "accuracy": 0.9, "mean_iou": 0.5}, {"method": "ensemble"}])
    assert "| mIoU |" in segmentation and "| 0.5000 |" in segmentation


def test_the_comparison_table_says_what_share_of_the_ensemble_gap_each_method_closes():
    from rank1_keras.tensorflow.training.evaluation import gap_closed, markdown_table

    rows = [{"method": "deterministic", "nll": 0.40}, {"method": "ensemble", "nll": 0.34},
            {"method": "rank1", "nll": 0.37}, {"method": "batchensemble", "nll": 0.43}]
    lines = markdown_table(rows).splitlines()
    column = lines[0].split(" | ").index("NLL gap closed")
    assert [line.split(" | ")[column] for line in lines[2:]] == ["0%", "100%", "50%", "-50%"]
    assert "NLL gap closed" not in markdown_table(rows[:1] + rows[2:])  # no deep ensemble: no gap to show
    assert gap_closed(0.9, deterministic=0.8, ensemble=0.85, lower_is_better=False) == pytest.approx(2.0)
    assert gap_closed(0.3, deterministic=0.35, ensemble=0.36) is None  # the ensemble is no better: no gap
