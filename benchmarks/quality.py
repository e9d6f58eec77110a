"""Uncertainty quality of every method on the embedded real data sets, 3 seeds.

    python -m benchmarks.quality --quick          # digits + JapaneseVowels
    python -m benchmarks.quality                  # + ItalyPowerDemand, GunPoint

Every method (deterministic, MC dropout, deep ensemble, BatchEnsemble, rank-1
with a Gaussian and with a Cauchy prior, LP-BNN, Bella-ensemble on the
deterministic run of the same seed) trains with the same budget through
`run_experiment`; the tables give mean ± std over the seeds of accuracy,
NLL, ECE, Brier, OOD AUROC and disagreement, before and after temperature
scaling (fitted on a 10% validation split), and for the image sets accuracy
and ECE per severity of the noise/blur/contrast shifts (CIFAR-10-C
definitions applied to the embedded images). Figures: one reliability
diagram per method (seed 0) and accuracy / ECE against shift severity.
"""

import argparse
import os
import tempfile
import time

import numpy as np

# (row name, MethodSettings overrides)
METHODS = (
    ("deterministic", {"method": "deterministic"}),
    ("dropout", {"method": "dropout"}),
    ("ensemble", {"method": "ensemble"}),
    ("batchensemble", {"method": "batchensemble"}),
    ("rank1 (normal)", {"method": "rank1", "prior": "normal"}),
    (
        "rank1 (cauchy)",
        {"method": "rank1", "prior": "cauchy", "alpha_initializer": "trainable_cauchy",
         "gamma_initializer": "trainable_cauchy"},
    ),
    ("lpbnn", {"method": "lpbnn"}),
    ("bella", {"method": "bella", "bella_trainer": "ensemble"}),
)
SEEDS = (0, 1, 2)

# Per data set: (training settings, task options); the demos' settings, shortened in quick mode.
# Fashion-MNIST is not here: the 2-epoch run that 2 cores allow beside 8 methods x 3 seeds stopped
# far from convergence and made every ensemble look worse than one network. Its converged
# comparison is the "Ensemble gap" section (benchmarks/ensemble_gap.py).
_COMMON_TRAINING = dict(optimizer="adam", lr_warmup_epochs=0.0, lr_decay_epochs=(), verbose=0)
DATASETS = {
    "digits": (dict(train_epochs=12, base_learning_rate=1e-3, per_replica_batch_size=64, kl_annealing_epochs=6),
               dict(architecture="small_cnn", shift_examples=360)),
    "japanese_vowels": (dict(train_epochs=25, base_learning_rate=3e-3, per_replica_batch_size=32,
                             kl_annealing_epochs=12), dict(architecture="lstm", lstm_units=32)),
    "italy_power_demand": (dict(train_epochs=40, base_learning_rate=3e-3, per_replica_batch_size=16,
                                kl_annealing_epochs=20), dict(architecture="lstm", lstm_units=16)),
    "gunpoint": (dict(train_epochs=40, base_learning_rate=3e-3, per_replica_batch_size=16, kl_annealing_epochs=20),
                 dict(architecture="lstm", lstm_units=16)),
}
QUICK_DATASETS = ("digits", "japanese_vowels")
QUICK_EPOCH_FRACTION = 0.5

COLUMNS = (
    ("accuracy", "accuracy"),
    ("NLL", "nll"),
    ("ECE", "ece"),
    ("Brier", "brier"),
    ("OOD AUROC", "ood_auroc"),
    ("disagreement", "disagreement"),
    ("NLL (T)", "nll_temperature_scaled"),
    ("ECE (T)", "ece_temperature_scaled"),
    ("train s", "train_seconds"),
)


def _settings(name, dataset, seed, quick, pretrained):
    from rank1_keras.methods.settings import MethodSettings
    from rank1_keras.tensorflow.training.loop import TrainingSettings
    from rank1_keras.tensorflow.training.tasks import TaskOptions

    training, task = DATASETS[dataset]
    training = dict(_COMMON_TRAINING, **training, seed=seed)
    if quick:
        training["train_epochs"] = max(1, int(training["train_epochs"] * QUICK_EPOCH_FRACTION))
        training["kl_annealing_epochs"] = max(1.0, training["kl_annealing_epochs"] * QUICK_EPOCH_FRACTION)
    overrides = dict(dict(METHODS)[name])
    method = MethodSettings(
        ensemble_size=4, prior_stddev=0.1,  # train_size: run_experiment sets the task's
        random_sign_init=-0.5, num_eval_samples=4,
        dropout_rate=0.1, pretrained_checkpoint=pretrained, **overrides,
    )
    options = TaskOptions(validation_percent=10.0, dropout_rate=0.1 if method.method == "dropout" else 0.0, **task)
    return method, TrainingSettings(**training), options


def run_dataset(dataset, quick, work_dir, log=print):
    """{method row: [result per seed]} for one data set."""
    from rank1_keras.tensorflow.training.experiment import run_experiment
    from rank1_keras.tensorflow.training.tasks import load_task

    results = {name: [] for name, _ in METHODS}
    tasks = {}
    for seed in SEEDS:
        for name, _ in METHODS:
            run_dir = os.path.join(work_dir, dataset, f"seed{seed}", name.replace(" ", "_").replace("(", "").replace(")", ""))
            pretrained = os.path.join(work_dir, dataset, f"seed{seed}", "deterministic") if name == "bella" else None
            method, training, options = _settings(name, dataset, seed, quick, pretrained)
            if options not in tasks:
                tasks[options] = load_task(dataset, options)
            start = time.perf_counter()
            result = run_experiment(dataset, method, training, options, run_dir, task=tasks[options])
            result["reliability_path"] = os.path.join(run_dir, "reliability.png")
            results[name].append(result)
            log(f"  {dataset} seed {seed} {name}: acc {result['accuracy']:.4f} nll {result['nll']:.4f} "
                f"ece {result['ece']:.4f} ({time.perf_counter() - start:.0f} s)")
    return results


def _mean_std(values):
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    text = f"{np.mean(present):.4f} ± {np.std(present):.4f}" if len(present) > 1 else f"{present[0]:.4f}"
    # Temperature scaling is skipped for a seed whose validation split is perfectly classified.
    return text if len(present) == len(values) else f"{text} (n={len(present)})"


def summary_table(results):
    header = "| method | " + " | ".join(title for title, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, runs in results.items():
        cells = []
        for title, key in COLUMNS:
            values = [run.get(key) for run in runs]
            cells.append(f"{np.mean(values):.0f}" if key == "train_seconds" else _mean_std(values))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def severity_curves(results):
    """{method: {"accuracy": [per severity mean over corruptions and seeds], "ece": [...]}, severities}."""
    severities = sorted({int(key.split("/")[2]) for runs in results.values() for key in runs[0] if key.startswith("shift/")})
    curves = {}
    for name, runs in results.items():
        curves[name] = {}
        for metric in ("accuracy", "ece"):
            per_severity = []
            for severity in severities:
                values = [value for run in runs for key, value in run.items()
                          if key.startswith("shift/") and key.split("/")[2] == str(severity) and key.endswith("/" + metric)]
                per_severity.append(float(np.mean(values)))
            curves[name][metric] = per_severity
    return curves, severities


def severity_table(curves, severities):
    lines = ["| method | " + " | ".join(f"acc s{s}" for s in severities) + " | " + " | ".join(f"ECE s{s}" for s in severities) + " |",
             "|" + "---|" * (2 * len(severities) + 1)]
    for name, curve in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in curve["accuracy"]) + " | "
                     + " | ".join(f"{v:.4f}" for v in curve["ece"]) + " |")
    return "\n".join(lines)


def _plot_severity(curves, severities, path, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, curve in curves.items():
        axes[0].plot(severities, curve["accuracy"], marker="o", label=name)
        axes[1].plot(severities, curve["ece"], marker="o", label=name)
    axes[0].set(xlabel="shift severity", ylabel="accuracy", title=f"{dataset}: accuracy under shift")
    axes[1].set(xlabel="shift severity", ylabel="ECE", title=f"{dataset}: ECE under shift")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_reliability_grid(results, path, dataset):
    """The seed-0 reliability diagrams `run_experiment` drew, one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    names = [name for name in results if os.path.exists(results[name][0]["reliability_path"])]
    columns = 4
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows))
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, name in zip(np.ravel(axes), names):
        axis.imshow(mpimg.imread(results[name][0]["reliability_path"]))
        axis.set_title(f"{dataset}: {name}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(quick, output_dir, log=print, datasets=None):
    """Runs the section; returns {"title", "markdown", "figures", "data"}."""
    datasets = datasets or (QUICK_DATASETS if quick else tuple(DATASETS))
    figures_dir = os.path.join(output_dir, "figures")
    os.makedirs(figures_dir, exist_ok=True)
    markdown, figures, data = [], [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quality-") as work_dir:
        for dataset in datasets:
            log(f"quality: {dataset}")
            results = run_dataset(dataset, quick, work_dir, log)
            method, training, options = _settings("deterministic", dataset, 0, quick, None)
            markdown.append(
                f"### {dataset}\n\n{len(SEEDS)} seeds, {training.train_epochs} epochs, Adam "
                f"{training.base_learning_rate:g}, batch {training.per_replica_batch_size}, K=4 (Bella: 3 particles, "
                f"rank 4), 4 evaluation passes for the stochastic methods, 10% of the training set held out "
                f"for temperature scaling (T; `(n=...)`: seeds whose validation split was not perfectly "
                f"classified, the others have no finite temperature). Mean ± std over seeds.\n\n{summary_table(results)}"
            )
            reliability = os.path.join(figures_dir, f"quality_{dataset}_reliability.png")
            _plot_reliability_grid(results, reliability, dataset)
            figures.append(reliability)
            markdown.append(f"![reliability diagrams, {dataset}](figures/{os.path.basename(reliability)})")
            entry = {name: [{k: v for k, v in run.items() if isinstance(v, (int, float, str))} for run in runs]
                     for name, runs in results.items()}
            if any(key.startswith("shift/") for key in results["deterministic"][0]):
                curves, severities = severity_curves(results)
                markdown.append(
                    f"Shifted {dataset} test images (noise, blur, contrast; mean over the three corruptions "
                    f"and the seeds):\n\n{severity_table(curves, severities)}"
                )
                severity_plot = os.path.join(figures_dir, f"quality_{dataset}_shift.png")
                _plot_severity(curves, severities, severity_plot, dataset)
                figures.append(severity_plot)
                markdown.append(f"![accuracy and ECE under shift, {dataset}](figures/{os.path.basename(severity_plot)})")
                entry["severity_curves"] = curves
            data[dataset] = entry
    minutes = (time.perf_counter() - start) / 60
    markdown.insert(0, f"Quality section: {len(datasets)} data sets × {len(METHODS)} methods × {len(SEEDS)} seeds "
                       f"in {minutes:.1f} min ({'quick' if quick else 'full'} mode). Fashion-MNIST, trained to "
                       f"convergence on two budgets, is the Ensemble gap section below.")
    return {"title": "Quality", "markdown": "\n\n".join(markdown), "figures": figures, "data": data}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default="docs")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of " + ",".join(DATASETS))
    arguments = parser.parse_args()
    datasets = tuple(arguments.datasets.split(",")) if arguments.datasets else None
    section = run(arguments.quick, arguments.output_dir, datasets=datasets)
    print(section["markdown"])


if __name__ == "__main__":
    main()
