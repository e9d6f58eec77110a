"""The benchmark helpers compute what they claim (values only; nothing here is timed)."""

import keras
import numpy as np
import pytest

from benchmarks import all as bench_all
from benchmarks import common
from benchmarks.models import parameter_breakdown
from rank1_keras.convert import convert
from rank1_keras.methods.converter import _trainable_count


def test_median_and_quantiles():
    assert common.median([3, 1, 2]) == 2
    assert common.median([4, 1, 3, 2]) == 2.5
    assert common.quantile([1, 2, 3, 4, 5], 0.25) == 2
    assert common.quantile([0, 10], 0.75) == 7.5
    with pytest.raises(ValueError):
        common.median([])


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # Rounds: ratios 2, 3, 1.5 -> median 2 (the ratio of medians would be 25/10 = 2.5).
    assert common.paired_ratio([20, 30, 30], [10, 10, 20]) == 2.0
    with pytest.raises(ValueError):
        common.paired_ratio([1, 2], [1])


def test_summarize_reports_milliseconds():
    summary = common.summarize([0.010, 0.020, 0.030])
    assert summary["median_ms"] == pytest.approx(20.0)
    assert summary["q25_ms"] == pytest.approx(15.0)
    assert summary["rounds"] == 3


def test_markdown_table():
    table = common.markdown_table(["a", "b"], [[1, None]])
    assert table.splitlines() == ["| a | b |", "| :--- | ---: |", "| 1 |  |"]


def test_interleave_keeps_every_round_after_warmup():
    calls = []
    participant = common.LocalParticipant("p", {"x": lambda: calls.append("x"), "y": lambda: calls.append("y")})
    times = common.interleave([(participant, ["x", "y"])], repetitions=3, warmup=2)
    assert sorted(times) == [("p", "x"), ("p", "y")]
    assert all(len(v) == 3 for v in times.values())
    assert calls.count("x") == calls.count("y") == 5
    assert calls[:2] == ["x", "y"] and calls[2:4] == ["y", "x"]  # the order rotates


def _tiny_model():
    inputs = keras.Input((5,))
    x = keras.layers.Dense(3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_parameter_breakdown_matches_a_hand_count():
    plain = _tiny_model()
    # Dense 5*3+3, BN 2*3 trainable (+ 2*3 moving statistics), Dense 3*2+2.
    assert dict(parameter_breakdown([plain])) == {"total": 32, "shared": 32, "all_weights": 38}

    rank1 = convert(plain, "rank1", ensemble_size=2, train_size=100)
    counts = parameter_breakdown([rank1])
    # Shared kernels 15 + 6; factor means = scales: alpha 2*5 + gamma 2*3 + alpha 2*3 + gamma 2*2;
    # member biases 2*3 + 2*2; member BN gamma and beta 2 * 2*3. Not trainable: the member BN's
    # moving statistics 2 * 2*3 and each rank-1 layer's KL-annealing weight (a scalar).
    assert counts["shared"] == 21
    assert counts["rank-1 factors"] == 26
    assert counts["factor scales"] == 26
    assert counts["member biases"] == 10
    assert counts["member batch norm"] == 12
    assert counts["total"] == 95 == _trainable_count(rank1)
    assert counts["all_weights"] == 95 + 12 + 2

    batchensemble = convert(plain, "batchensemble", ensemble_size=2)
    counts = parameter_breakdown([batchensemble])
    assert counts["total"] == 21 + 26 + 10 + 12
    assert counts["factor scales"] == 0


def test_peak_memory_sees_an_allocation():
    def allocate():
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        return float(block[-1])

    peak, how = common.measure_peak_memory(allocate, calls=1)
    assert peak >= 48 * 2**20, how


def test_all_accepts_other_section_shapes(tmp_path):
    section = bench_all._normalise({"tables": ["| a |"], "pngs": [str(tmp_path / "figures" / "q.png")]}, "Quality")
    assert section["title"] == "Quality" and section["markdown"] == "| a |"
    markdown = bench_all._link_missing_figures(section, tmp_path)
    assert "![q](figures/q.png)" in markdown


def test_a_figure_from_outside_the_output_folder_is_copied_in_and_linked_relatively(tmp_path):
    source = tmp_path / "docs" / "figures" / "gap.png"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"png bytes")
    output = tmp_path / "scratch"
    section = {"title": "Gap", "markdown": "table", "figures": [str(source)]}
    markdown = bench_all._link_missing_figures(section, output)
    assert "![gap](figures/gap.png)" in markdown and str(tmp_path) not in markdown
    assert (output / "figures" / "gap.png").read_bytes() == b"png bytes"


def test_ensemble_gap_tables_report_each_rows_share_and_each_knob_against_its_base():
    from benchmarks import ensemble_gap

    def run(nll, val, ece=0.01):
        return {"nll": nll, "validation_nll": val, "ece": ece, "ood_auroc": 0.9, "shift_ece": 0.1,
                "disagreement": 0.05, "parameters": 100, "train_seconds": 10.0, "accuracy": 0.9}

    results = {
        "deterministic": {0: run(0.40, 0.41), 1: run(0.50, 0.51)},
        "ensemble": {0: run(0.30, 0.31), 1: run(0.40, 0.41)},
        "rank1 split": {0: run(0.35, 0.36), 1: run(0.50, 0.50)},
        "rank1 split prior 0.3": {0: run(0.33, 0.34), 1: run(0.46, 0.47)},
    }
    names = list(results)
    quality = ensemble_gap.quality_table(results, names)
    row = next(line for line in quality.splitlines() if line.startswith("| rank1 split |"))
    assert "25% ± 25%" in row  # per seed (0.40-0.35)/0.10 = 50% and 0% -> mean 25%, std 25%
    ablation = ensemble_gap.ablation_table(results, names)
    knob = next(line for line in ablation.splitlines() if "prior 0.3" in line)
    cells = [cell.strip() for cell in knob.strip("|").split("|")]
    assert cells[:2] == ["rank1 split", "prior 0.3"]
    assert cells[2] == "-0.0250 ± 0.0050"  # validation NLL: -0.02 and -0.03 against the base row, not the default
    assert len(ablation.splitlines()) == 3  # the baselines and the base row itself are not knobs


def test_each_ensemble_gap_ablation_changes_one_knob_of_its_base_row():
    """An ablation row's Δ is read as that knob's effect: its settings must differ from its base's in one field."""
    import dataclasses

    from benchmarks import ensemble_gap

    names = [row[0] for row in ensemble_gap.ROWS]
    for name, base_name, _, _ in ensemble_gap.ROWS:
        if base_name is None:
            continue
        assert base_name in names, name
        changed = []
        for row_settings, base_settings in zip(ensemble_gap._settings(name, "fmnist_10k", 0),
                                               ensemble_gap._settings(base_name, "fmnist_10k", 0)):
            if hasattr(row_settings, "resolved"):  # compare the batch layout each method will really use
                row_settings, base_settings = row_settings.resolved(), base_settings.resolved()
            row_fields, base_fields = dataclasses.asdict(row_settings), dataclasses.asdict(base_settings)
            changed += [field for field in row_fields if row_fields[field] != base_fields[field]]
        assert len(changed) == 1, (name, changed)
    # The library's defaults are the base rows the targets are read on.
    from rank1_keras.methods.settings import MethodSettings

    for method in ("batchensemble", "rank1"):
        default_row = ensemble_gap._settings(method, "fmnist_10k", 0)[0]
        assert default_row.effective_training_batch == MethodSettings(method=method).effective_training_batch


def test_ensemble_gap_targets_say_met_only_when_every_condition_holds():
    from benchmarks import ensemble_gap

    def run(nll, ece, seconds, parameters=100, scaled=None):
        scaled_nll, scaled_ece = scaled or (nll, ece)
        return {"nll": nll, "ece": ece, "train_seconds": seconds, "parameters": parameters,
                "shift_ece_temperature_scaled": 0.1, "nll_temperature_scaled": scaled_nll,
                "ece_temperature_scaled": scaled_ece}

    results = {
        "deterministic": {0: run(0.40, 0.02, 10.0)},
        "ensemble": {0: run(0.30, 0.01, 40.0, parameters=400)},
        "batchensemble": {0: run(0.34, 0.02, 50.0)},  # 60% of the gap, ECE equal to one network's: met
        # 60% but ECE worse: not met; after temperature scaling 67% of the (T) gap, ECE (T) equal: met.
        "rank1": {0: run(0.34, 0.03, 50.0, scaled=(0.32, 0.02))},
        "batchensemble split": {0: run(0.34, 0.01, 16.0)},  # 60%, ECE fine, but 1.6x one network's time
        "packed width 2.8": {0: run(0.32, 0.01, 20.0, parameters=150)},  # 80% at 0.375 of the parameters: met
    }
    table = ensemble_gap.targets_table(results)
    verdicts = {line.split(" | ")[0].strip("| "): line.rstrip(" |").split(" | ")[-1]
                for line in table.splitlines()[2:]}
    assert verdicts == {"batchensemble": "yes", "rank1": "no", "batchensemble split": "no", "packed width 2.8": "yes"}
    assert "| batchensemble split | 60% (≥ 50%) |" in table and "1.60× (≤ 1.5×)" in table
    # Read after temperature scaling: the baselines are scaled too, (0.36 - 0.32) / (0.36 - 0.30) = 67%.
    results["deterministic"][0]["nll_temperature_scaled"] = 0.36
    scaled = ensemble_gap.targets_table(results, temperature_scaled=True)
    verdicts = {line.split(" | ")[0].strip("| "): line.rstrip(" |").split(" | ")[-1]
                for line in scaled.splitlines()[2:]}
    assert verdicts["rank1"] == "yes" and "| rank1 | 67% (≥ 50%) | 0.0200 (0.0200) |" in scaled
    assert verdicts["batchensemble"] == "no"  # (0.36 - 0.34) / 0.06 = 33% of the scaled gap


def test_ensemble_gap_section_of_benchmarks_all_reports_the_stored_means():
    """`benchmarks.all`'s section reads docs/ensemble_gap.json: its numbers are that file's seed means."""
    import json

    from benchmarks import common, ensemble_gap

    with open(common.DOCS_DIR / "ensemble_gap.json", encoding="utf-8") as stream:
        stored = json.load(stream)
    section = ensemble_gap.run(quick=True, output_dir=None)
    assert section["title"] == "Ensemble gap"
    for regime, results in stored.items():
        if "batchensemble" not in results:
            assert f"### {regime}" not in section["markdown"]
            continue
        nll = [run["nll"] for run in results["batchensemble"].values()]
        row = next(line for line in section["markdown"].split(f"### {regime}")[1].splitlines()
                   if line.startswith("| batchensemble |"))
        assert f"{np.mean(nll):.4f} ± {np.std(nll):.4f}" in row


def test_model_benchmark_workers_time_every_method_they_start():
    # The throughput table's workers run in their own processes: an error there (an import
    # moved in a refactor) becomes a "skipped" entry, so check that none is skipped.
    from benchmarks.models import measure_throughput

    times, infos = measure_throughput(["deterministic", "bella"], 10, 1, 2, repetitions=1, warmup=0)
    assert all("skipped" not in info for info in infos.values()), infos
    assert set(times) == {(method, key) for method in ("deterministic", "bella") for key in ("train", "predict")}
    assert all(len(seconds) == 1 and seconds[0] > 0 for seconds in times.values())


def _serving_result(ensemble_ratios, joined_ratios, train_ratio, joined_train_ratio):
    """A benchmarks.serving result with the given ratios per batch size (strings, as in its JSON)."""
    from benchmarks import serving

    inference = {}
    for batch, ratio, joined in zip(("1", "8", "32"), ensemble_ratios, joined_ratios):
        inference[batch] = {name: {"ratio": ratio, "median_ms": 1.0} for name in serving.SINGLE_PASS}
        inference[batch]["deep ensemble (joined)"] = {"ratio": joined, "median_ms": 1.0}
        inference[batch]["one network"] = {"ratio": 1.0, "median_ms": 1.0}
    training = {name: {"ratio": train_ratio, "median_ms": 1.0} for name in serving.SINGLE_PASS}
    training["deep ensemble (joined)"] = {"ratio": joined_train_ratio, "median_ms": 1.0}
    training["one network"] = {"ratio": 1.0, "median_ms": 1.0}
    return {"inference": inference, "training": training}


def test_serving_verdicts_name_every_batch_where_an_ensemble_is_slower():
    from benchmarks import serving

    lines = serving._verdicts(_serving_result((1.2, 2.5, 3.0), (1.9, 2.0, 3.5), 3.9, 3.8)).splitlines()
    assert len(lines) == len(serving.SINGLE_PASS)
    assert "slower than the joined deep ensemble at B = 8 (2.50× vs 2.00×)" in lines[0]
    assert "B = 32" not in lines[0] and "B = 1 (" not in lines[0]
    assert "B = 1 at 1.20× one network (✓ ≤ 1.3×)" in lines[0] and "K rows" not in lines[0]
    assert "training step 3.90× vs the deep ensemble's 3.80× (✗)" in lines[0]

    met = serving._verdicts(_serving_result((1.3, 1.9, 3.0), (1.9, 2.0, 3.5), 3.7, 3.8)).splitlines()[0]
    assert "no slower than the joined deep ensemble at any B" in met
    assert "(✓ ≤ 1.3×)" in met and met.endswith("(✓).")
    missed = serving._verdicts(_serving_result((1.31, 1.9, 3.0), (1.9, 2.0, 3.5), 3.7, 3.8)).splitlines()[0]
    assert "(✗ ≤ 1.3×)" in missed
    # With the floor measured, the B = 1 verdict says what K networks' FLOPs cost on one network's ops.
    result = _serving_result((1.31, 1.9, 3.0), (1.9, 2.0, 3.5), 3.7, 3.8)
    for batch, floor in zip(("1", "8", "32"), (1.45, 2.5, 3.1)):
        result["inference"][batch][serving.FLOOR] = {"ratio": floor, "median_ms": 1.0}
    assert "B = 1 at 1.31× one network (✗ ≤ 1.3×), where one network on K rows takes 1.45×" in serving._verdicts(result)
    table = serving.render([dict(result, backend="jax", device="CPU only", keras="3", training_batch=32)], 4)
    assert f"| {serving.FLOOR} | **1.45×** (1.00 ms) | " in table


def test_serving_ratios_are_paired_per_round():
    from benchmarks import serving

    # Round 2 is slow for everyone (a loaded machine): the paired ratio stays 2.
    times = {"one network": [1.0, 10.0, 1.0], "ensemble": [2.0, 20.0, 2.0]}
    summary = serving.summarise(times, "one network")
    assert summary["ensemble"]["ratio"] == 2.0
    assert summary["one network"]["ratio"] == 1.0
    assert summary["ensemble"]["median_ms"] == 2000.0


def test_serving_verdicts_give_the_folded_models_time_over_the_joined_ensembles_and_the_training_floor():
    from benchmarks import serving

    result = _serving_result((1.3, 1.9, 3.0), (2.0, 2.0, 3.5), 3.7, 3.6)
    for batch, ratio in zip(("1", "8", "32"), (2.1, 1.9, 3.5)):
        for name in serving.FOLDED:
            result["inference"][batch][name] = {"ratio": ratio, "median_ms": 1.0}
    result["training"][serving.FLOOR] = {"ratio": 4.9, "median_ms": 1.0}
    result["training"][serving.JOINED_STEP] = {"ratio": 3.65, "median_ms": 1.0}
    lines = serving._verdicts(result).splitlines()
    assert len(lines) == len(serving.FOLDED) + len(serving.SINGLE_PASS)
    assert lines[0].startswith(f"- {serving.FOLDED[0]}: 1.05× at B = 1, 0.95× at B = 8, 1.00× at B = 32 the joined")
    assert (
        "training step 3.70× vs the deep ensemble's 3.60× (✗), where its K networks in one step take 3.65× "
        "and one network's step on K·B rows 4.90×." in lines[2]
    )
    # The table: the one-step row has a training cell only.
    table = serving.render([dict(result, backend="jax", device="CPU", keras="3", training_batch=32)], 4)
    row = next(line for line in table.splitlines() if line.startswith(f"| {serving.JOINED_STEP} |"))
    assert row == f"| {serving.JOINED_STEP} |  |  |  | **3.65×** (1.0 ms) |"
