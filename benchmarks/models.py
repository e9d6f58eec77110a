"""Model cost: parameter counts per method, and throughput / peak memory on a CPU-sized Wide ResNet.

    python -m benchmarks.models [--quick] [--timing-model 28-2] [--batch 16] [--repetitions N]

1. Parameters: WRN-28-10 (CIFAR-10) and ResNet-50 (ImageNet) at K=4, and
   ResNet-50 at K=10, for every method of `rank1_keras.models.method_names()`,
   counted exactly from the built models' trainable weights' shapes (the
   helper of `rank1_keras.convert`), split into shared weights, rank-1 factors
   (point values, or posterior means and scales), per-member biases and
   per-member batch-norm scales/offsets, next to the papers' figures. A deep
   ensemble's count is K times the deterministic model's (K copies of the
   same architecture; full mode builds them and checks). Quick mode counts
   the big networks for deterministic, BatchEnsemble and rank-1 only.
2. Throughput (examples/s) and peak memory of one training step and of one
   prediction for every method on a Wide ResNet small enough for a CPU
   (WRN-28-2 in full mode, WRN-16-2 in quick mode; B examples). Each method
   runs in its own worker process (`benchmarks.model_worker`), which measures
   its memory first and then takes timing rounds interleaved with the other
   methods. Tiled methods (BatchEnsemble, rank-1) push K·B rows through one
   network; the deep ensemble runs its K networks one after another.
"""

import argparse
import sys
from collections import Counter

from benchmarks import common

K = common.ENSEMBLE_SIZE
_WRN_28_10 = ("wide_resnet", {"depth": 28, "width_multiplier": 10, "num_classes": 10, "input_shape": (32, 32, 3)})
_RESNET_50 = ("resnet50", {"num_classes": 1000, "input_shape": (224, 224, 3)})
NETWORKS = {
    "WRN-28-10": {"ensemble_size": 4, "build": _WRN_28_10},
    "ResNet-50": {"ensemble_size": 4, "build": _RESNET_50},
    "ResNet-50 (K=10)": {"ensemble_size": 10, "build": _RESNET_50},
}
QUICK_METHODS = ("deterministic", "ensemble", "batchensemble", "rank1")
# Figures quoted from the papers, by (network, method).
PAPER_FIGURES = {
    ("ResNet-50 (K=10)", "rank1"): (
        "0.4% (Dusenberry et al. 2020, abstract: \"only a 0.4% increase for a ResNet-50 mixture of size 10\")"
    ),
}
KIND_ORDER = ("shared", "rank-1 factors", "factor scales", "member biases", "member batch norm")


def _plain_builder(network):
    from rank1_keras import models

    function_name, kwargs = NETWORKS[network]["build"]
    return lambda: getattr(models, function_name)(**kwargs)


def parameter_breakdown(models):
    """Trainable parameters of a method's models, by kind, from the weights' shapes.

    Kinds: "rank-1 factors" (alpha/gamma tables: point values, or posterior
    means), "factor scales" (posterior scales of stochastic factors),
    "member biases", "member batch norm" (per-member BN scale/offset), and
    "shared" for every other trainable weight. Returns a Counter whose
    "total" equals `rank1_keras.methods.converter._trainable_count` summed over models.
    """
    import numpy as np

    from rank1_keras.layers import Rank1Mixin
    from rank1_keras.layers.normalization import EnsembleBatchNormalization
    from rank1_keras.layers.walk import layers_of
    from rank1_keras.methods.converter import _trainable_count

    counts = Counter()
    seen = set()

    def tag(variable, kind):
        if id(variable) in seen or not variable.trainable:
            return
        seen.add(id(variable))
        counts[kind] += int(np.prod(variable.shape))

    for model in models:
        for layer in layers_of(model):
            if isinstance(layer, Rank1Mixin):
                for name, factor in layer.member_factors.items():
                    if name == "bias":
                        for variable in factor.variables:
                            tag(variable, "member biases")
                    elif factor.is_stochastic:
                        location, *scales = factor.variables
                        tag(location, "rank-1 factors")
                        for variable in scales:
                            tag(variable, "factor scales")
                    else:
                        tag(factor.variable, "rank-1 factors")
            elif isinstance(layer, EnsembleBatchNormalization):
                for variable in layer.trainable_weights:
                    tag(variable, "member batch norm")
    counts["total"] = sum(_trainable_count(m) for m in models)
    counts["shared"] = counts["total"] - sum(counts[k] for k in KIND_ORDER if k != "shared")
    counts["all_weights"] = sum(int(m.count_params()) for m in models)
    return counts


def count_network(network, methods, verify_ensemble=False):
    """{method: breakdown dict or {"skipped": reason}} for one network."""
    import keras

    from rank1_keras.methods.settings import build_method_models

    ensemble_size = NETWORKS[network]["ensemble_size"]
    build_plain = _plain_builder(network)
    results = {}
    for method in methods:
        if method == "ensemble" and not verify_ensemble and "deterministic" in results:
            deterministic = results["deterministic"]
            scaled = KIND_ORDER + ("total", "all_weights")
            results[method] = {k: v * ensemble_size for k, v in deterministic.items() if k in scaled}
            results[method].update(members=ensemble_size, computed=f"{ensemble_size} × deterministic")
            continue
        common.log(f"models: counting {network} {method}")
        try:
            settings = common.method_settings(method, ensemble_size)
            models = build_method_models(build_plain, settings)
        except Exception as error:  # noqa: BLE001 - e.g. a method that needs a checkpoint
            results[method] = {"skipped": f"{type(error).__name__}: {common.last_line(error)[:160]}"}
            continue
        results[method] = dict(parameter_breakdown(models), members=settings.ensemble_members)
        del models
        keras.backend.clear_session()
    if verify_ensemble and "ensemble" in results and "deterministic" in results:
        expected = results["deterministic"]["total"] * ensemble_size
        if results["ensemble"].get("total") != expected:
            raise AssertionError(
                f"{network}: ensemble has {results['ensemble'].get('total')} parameters, expected {expected}"
            )
    return results


def render_parameters(counts):
    rows = []
    for network, methods in counts.items():
        deterministic = methods.get("deterministic", {}).get("total")
        ensemble_size = NETWORKS[network]["ensemble_size"]
        for method, entry in methods.items():
            if "skipped" in entry:
                rows.append([network, method, "skipped", "", "", "", "", "", entry["skipped"]])
                continue
            total = entry["total"]
            overhead = 100.0 * (total / deterministic - 1.0) if deterministic else None
            factors = entry.get("rank-1 factors", 0) + entry.get("factor scales", 0)
            per_member = 100.0 * factors / ensemble_size / deterministic if factors and deterministic else None
            rows.append(
                [
                    network.split(" (")[0],
                    method,
                    entry.get("members", ""),
                    f"{total:,}",
                    f"{overhead:+.2f}%" if overhead is not None else "",
                    " / ".join(f"{entry.get(k, 0):,}" for k in KIND_ORDER[1:]),
                    f"{per_member:.2f}%" if per_member is not None else "",
                    f"{entry['all_weights']:,}",
                    PAPER_FIGURES.get((network, method), entry.get("computed", "")),
                ]
            )
    table = common.markdown_table(
        [
            "network",
            "method",
            "K",
            "trainable params",
            "overhead vs deterministic",
            "factors / factor scales / member biases / member BN",
            "factors per member",
            "all weights (+ BN statistics)",
            "paper / note",
        ],
        rows,
        align="llrrrrrrl",
    )
    note = (
        "Overhead = trainable parameters over the deterministic model's. \"factors per member\" = the "
        "rank-1 factor tables (means and, for rank-1, posterior scales) divided by K, in percent of the "
        "deterministic model: the cost of one more mixture component, which is what the paper's 0.4% for a "
        "ResNet-50 mixture of size 10 matches (our reading; the total overhead also counts K per-member "
        "batch norms and biases, as uncertainty-baselines' models have). Counts are exact, from the "
        "built models' trainable weights."
    )
    return table + "\n\n" + note


def measure_throughput(methods, depth, width, batch, repetitions, warmup):
    """Starts one worker per method, reads their memory, runs interleaved timing rounds."""
    workers = []
    try:
        for method in methods:
            workers.append(
                common.WorkerParticipant(
                    method,
                    "benchmarks.model_worker",
                    ["--method", method, "--depth", depth, "--width", width, "--batch", batch, "--ensemble-size", K],
                )
            )
        infos = {}
        for worker in workers:
            try:
                infos[worker.name] = worker.wait_ready()
            except RuntimeError as error:
                infos[worker.name] = {"skipped": common.last_line(error)[:200]}
        common.log(f"models: workers ready; timing WRN-{depth}-{width} ({warmup} warm-up + {repetitions} rounds)")
        plan = [(w, ["train", "predict"]) for w in workers if "skipped" not in infos[w.name]]
        if not plan:
            raise RuntimeError(f"every throughput worker failed to start: {infos}")
        times = common.interleave(plan, repetitions, warmup, log=common.log)
    finally:
        for worker in workers:
            try:
                worker.close()
            except Exception:  # noqa: BLE001
                pass
    return times, infos


def analyse_throughput(times, infos, batch):
    results = {}
    reference = "ensemble" if ("ensemble", "train") in times else None
    for method, info in infos.items():
        if "skipped" in info:
            results[method] = {"skipped": info["skipped"]}
            continue
        entry = {"info": info}
        for mode in ("train", "predict"):
            seconds = times[(method, mode)]
            summary = common.summarize(seconds)
            summary["examples_per_s"] = batch / (summary["median_ms"] / 1e3)
            if reference:
                # > 1: this method is that many times faster than the deep ensemble.
                summary["speedup_vs_ensemble"] = 1.0 / common.paired_ratio(seconds, times[(reference, mode)])
            entry[mode] = summary
        results[method] = entry
    return results


def _train_rows(info, batch):
    """Rows one training step pushes through a network, e.g. "4×8" for 4 models of 8."""
    if info.get("models", 1) > 1:
        return f"{info['models']}×{batch}"
    if info.get("member_streams", 1) > 1:
        return f"{info['member_streams'] * batch} (member streams)"
    if info.get("training_batch") == "tile" and info.get("members", 1) > 1:
        return f"{info['members'] * batch}"
    if info.get("training_batch") == "split" and info.get("members", 1) > 1:
        return f"{batch} (split)"
    return f"{batch}"


def render_throughput(results, depth, width, batch, repetitions, warmup):
    """The throughput / memory table; `batch` is B, the examples each member sees per step."""
    rows = []
    memory_measure = ""
    for method, entry in results.items():
        if "skipped" in entry:
            rows.append([method, "", "skipped: " + entry["skipped"]] + [""] * 9)
            continue
        info = entry["info"]
        memory_measure = info.get("memory_measure", memory_measure)
        train, predict = entry["train"], entry["predict"]
        rows.append(
            [
                method,
                info.get("members", ""),
                _train_rows(info, batch),
                f"{info['trainable_parameters']:,}",
                f"{train['examples_per_s']:.1f}",
                f"{train['median_ms']:.0f} [{train['q25_ms']:.0f}–{train['q75_ms']:.0f}]",
                f"{train.get('speedup_vs_ensemble', float('nan')):.2f}×",
                f"{predict['examples_per_s']:.1f}",
                f"{predict['median_ms']:.0f} [{predict['q25_ms']:.0f}–{predict['q75_ms']:.0f}]",
                f"{predict.get('speedup_vs_ensemble', float('nan')):.2f}×",
                f"{info['train_peak_mb']:.0f} / {info['predict_peak_mb']:.0f}",
                f"{info['resident_mb']:.0f}",
            ]
        )
    table = common.markdown_table(
        [
            "method",
            "K",
            "rows per train step",
            "trainable params",
            "train ex/s",
            "train step ms",
            "train speed vs deep ensemble",
            "predict ex/s",
            "predict ms",
            "predict speed vs deep ensemble",
            "peak MB train / predict",
            "resident MB",
        ],
        rows,
    )
    note = (
        f"WRN-{depth}-{width}, 32×32×3 inputs, 10 classes, K = {K}, B = {batch} examples per step "
        f"(BatchEnsemble and rank-1: K·B = {K * batch} rows through one network; deep ensemble: its {K} "
        f"networks one after another, each on the B examples; dropout: one MC sample). Median over "
        f"{repetitions} interleaved rounds ({warmup} warm-up) of one SGD-momentum training step (average NLL "
        "+ KL) and one prediction (training=False, rank-1 factors sampled, one pass of K members), "
        "[q25–q75]; \"speed vs deep ensemble\" = median over rounds of ensemble time / method time "
        "(> 1: faster than the deep ensemble). Peak MB = "
        f"{memory_measure or 'n/a'}, over two calls, in a fresh process per method; resident MB = the "
        "process' RSS at rest after warm-up (TensorFlow runtime + model + optimizer state)."
    )
    summary = ""
    ensemble = results.get("ensemble", {})
    if "train" in ensemble:
        parts = []
        for method in ("rank1", "batchensemble"):
            entry = results.get(method, {})
            if "train" in entry:
                parts.append(
                    f"{method}: {entry['train']['speedup_vs_ensemble']:.2f}× the deep ensemble's training "
                    f"throughput and {entry['predict']['speedup_vs_ensemble']:.2f}× its prediction throughput, "
                    f"with {entry['info']['trainable_parameters'] / ensemble['info']['trainable_parameters']:.0%} "
                    "of its parameters"
                )
        if parts:
            summary = "\n\nOne pass of K members vs K models one after another — " + "; ".join(parts) + "."
    return table + summary + "\n\n" + note


def throughput_figure(results, depth, width, output_dir):
    methods = [m for m, e in results.items() if "skipped" not in e]
    panels = [
        {"examples/s": [results[m]["train"]["examples_per_s"] for m in methods]},
        {"examples/s": [results[m]["predict"]["examples_per_s"] for m in methods]},
    ]
    path = common.figure_dir(output_dir) / "model_throughput.png"
    return common.grouped_bars(
        path,
        methods,
        ["examples/s"],
        panels,
        title=f"WRN-{depth}-{width} throughput per method (K={K})",
        ylabel="examples / s",
        subplot_titles=["training step", "prediction"],
    )


def parameter_figure(counts, output_dir):
    networks = list(counts)
    methods = [m for m in dict.fromkeys(m for n in networks for m in counts[n]) if m != "deterministic"]
    panel = {}
    for method in methods:
        values = []
        for network in networks:
            entry = counts[network].get(method, {})
            deterministic = counts[network].get("deterministic", {}).get("total")
            known = "total" in entry and deterministic
            values.append(100.0 * (entry["total"] / deterministic - 1.0) if known else None)
        panel[method] = values
    path = common.figure_dir(output_dir) / "parameter_overhead.png"
    return common.grouped_bars(
        path,
        networks,
        methods,
        [panel],
        title="Trainable-parameter overhead over the deterministic model",
        ylabel="overhead (%), log scale",
        log_scale=True,
    )


def run(
    quick=False,
    output_dir=common.DOCS_DIR,
    timing_model=None,
    batch=None,
    repetitions=None,
    count_parameters=True,
    time_models=True,
):
    """Section entry point: returns {"title", "markdown", "figures", "data"}."""
    from rank1_keras.methods import method_names

    all_methods = list(method_names())
    device = common.device_info()
    if device["gpus"]:  # CPU-sized nets would only measure kernel launches
        timing_model, batch = timing_model or "28-10", batch or 32
    depth, width = map(int, (timing_model or ("16-2" if quick else "28-2")).split("-"))
    batch = batch or (8 if quick else 16)
    repetitions = repetitions or (5 if quick else 30)
    warmup = 1 if quick else 3
    markdown = [f"Device: {common.describe_device(device)}. Timings: {device['timing']}.", ""]
    figures, data = [], {"device": device, "ensemble_size": K, "methods": all_methods}

    if count_parameters:
        counts = {}
        for network in NETWORKS:
            methods = [m for m in all_methods if m in QUICK_METHODS] if quick else all_methods
            counts[network] = count_network(network, methods, verify_ensemble=not quick)
        data["parameters"] = counts
        markdown += ["### Parameters", "", render_parameters(counts), ""]
        figures.append(parameter_figure(counts, output_dir))
        markdown += [f"![Parameter overhead]({figures[-1].relative_to(output_dir).as_posix()})", ""]

    if time_models:
        times, infos = measure_throughput(all_methods, depth, width, batch, repetitions, warmup)
        results = analyse_throughput(times, infos, batch)
        data["throughput"] = {
            "model": f"WRN-{depth}-{width}",
            "batch": batch,
            "repetitions": repetitions,
            "warmup": warmup,
            "results": results,
            "raw_times_s": {f"{m}/{mode}": v for (m, mode), v in times.items()},
        }
        markdown += [
            f"### Throughput and memory (WRN-{depth}-{width})",
            "",
            render_throughput(results, depth, width, batch, repetitions, warmup),
            "",
        ]
        figures.append(throughput_figure(results, depth, width, output_dir))
        markdown += [f"![Throughput]({figures[-1].relative_to(output_dir).as_posix()})", ""]
    return common.section_result("Model cost", "\n".join(markdown), figures, data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timing-model", default=None, help="DEPTH-WIDTH of the timed Wide ResNet, e.g. 28-2")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--no-parameters", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--output-dir", default=str(common.DOCS_DIR))
    parser.add_argument(
        "--single-thread", action="store_true", help="one TF thread, CPU-time timings (loaded machines)"
    )
    args = parser.parse_args(argv)
    if args.single_thread:
        common.os.environ[common.SINGLE_THREAD_ENV] = "1"
    result = run(
        args.quick,
        common.Path(args.output_dir),
        args.timing_model,
        args.batch,
        args.repetitions,
        not args.no_parameters,
        not args.no_timing,
    )
    print(result["markdown"])
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
