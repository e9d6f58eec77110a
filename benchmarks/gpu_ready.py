"""Benchmarks for a machine with JAX (or PyTorch) and no TensorFlow: a lent GPU, or a CPU.

    # here, with the repository: the upload, every file under 64 MiB
    python -m benchmarks.gpu_ready bundle --output /tmp/upload
    # there (JAX + CUDA, no TensorFlow, no network), from the unpacked upload:
    bash run.sh                      # = pip install keras wheel; python -m benchmarks.gpu_ready run
    python -m benchmarks.gpu_ready run --output-dir out [--quick] [--backends jax,torch]

`run` writes gpu_ready.json and gpu_ready.md, the device named above every
table:

1. **Layer cost**: Dense 1024->1024 and Conv2D 3x3 64->64 as one-layer
   models, plain against BatchEnsemble and rank-1 (K = 4, each on the same
   K*B tiled rows), a training step (`train_on_batch`) and inference
   (`predict_on_batch`), ratios to the plain layer in interleaved rounds.
2. **Serving and training step**: `benchmarks.serving` (K = 4 single-pass
   ensembles against the joined deep ensemble at B = 1, 8, 32, 256, and a
   tiled training step against the deep ensemble's K steps).
3. **Fashion-MNIST gap**: the small CNN trained with `fit` as a
   deterministic network, a deep ensemble (K networks, one after the other),
   BatchEnsemble and rank-1, on the first `--train-examples` training images
   (10% of them held out for validation), evaluated once on the 10,000 test
   images: NLL, accuracy, ECE, seconds per epoch and peak memory (the
   accelerator's allocator peak on a GPU; peak RSS growth on a CPU).

Nothing here imports TensorFlow unless TensorFlow is the Keras backend.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
UPLOAD_LIMIT_BYTES = 64 * 2**20
ENSEMBLE_SIZE = 4
LAYER_CASES = {
    "Dense 1024→1024": dict(kind="dense", rows=256, shape=(1024,)),
    "Conv2D 3×3, 32×32×64 → 64": dict(kind="conv", rows=8, shape=(32, 32, 64)),
}
GAP_METHODS = ("deterministic", "deep ensemble", "batchensemble", "rank1")


# -- bundle --------------------------------------------------------------------------


def bundle(output, data_dir=None):
    """Writes the upload: this package and benchmarks as a tarball, the Keras wheel, the data, run.sh."""
    import tarfile

    import keras

    from rank1_keras.data import fashion_mnist

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output / "rank1_keras_src.tar.gz", "w:gz") as archive:
        for folder in ("rank1_keras", "benchmarks"):
            archive.add(
                REPO_ROOT / folder,
                arcname=folder,
                filter=lambda info: None if "__pycache__" in info.name else info,
            )
    # Keras and its dependencies as wheels (the machine has no network; pip
    # skips those already installed, such as NumPy beside JAX).
    wheels = output / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(wheels), f"keras=={keras.__version__}"],
        check=True,
    )
    for provided in ("numpy-*.whl", "ml_dtypes-*.whl"):  # JAX and PyTorch machines have them
        for wheel in wheels.glob(provided):
            wheel.unlink()
    data_dir = Path(data_dir or os.environ.get(fashion_mnist.FASHION_MNIST_DIR_ENV_VAR, fashion_mnist.DEFAULT_FASHION_MNIST_DIR))
    data_out = output / "fashion-mnist"
    data_out.mkdir(exist_ok=True)
    for path in sorted(data_dir.iterdir()):
        if path.is_file():
            shutil.copy2(path, data_out / path.name)
    (output / "run.sh").write_text(
        "#!/bin/bash\n"
        "# On the benchmark machine: JAX or PyTorch installed, no TensorFlow, no network.\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        "tar -xzf rank1_keras_src.tar.gz\n"
        "python -m pip install --no-index --find-links wheels --quiet keras\n"
        "export RANK1_KERAS_FASHION_MNIST_DIR=\"$PWD/fashion-mnist\"\n"
        'python -m benchmarks.gpu_ready run --output-dir out "$@"\n'
    )
    sizes = {str(p.relative_to(output)): p.stat().st_size for p in output.rglob("*") if p.is_file()}
    too_large = {name: size for name, size in sizes.items() if size > UPLOAD_LIMIT_BYTES}
    if too_large:
        raise ValueError(f"upload files over 64 MiB: {too_large}")
    return sizes


# -- measurements ----------------------------------------------------------------------


def device_line(backend):
    from benchmarks.serving import device_description

    return device_description(backend)


def has_accelerator(backend):
    if backend == "jax":
        import jax

        return any(d.platform != "cpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


class PeakMemory:
    """Peak memory of a block: the accelerator allocator's peak, or peak RSS growth on a CPU."""

    def __init__(self, backend):
        self.backend = backend
        self.how = None
        self.bytes = None

    def __enter__(self):
        from benchmarks import common

        self.accelerator = has_accelerator(self.backend)
        if self.accelerator and self.backend == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        elif self.accelerator and self.backend == "jax":
            import jax

            self.before = jax.devices()[0].memory_stats().get("bytes_in_use", 0)
        else:
            common.release_free_memory()
            self.before = common.rss_bytes()
            common.reset_peak_rss()
        return self

    def __exit__(self, *exc_info):
        from benchmarks import common

        if self.accelerator and self.backend == "torch":
            import torch

            self.bytes, self.how = torch.cuda.max_memory_allocated() - self.before, "CUDA allocator peak"
        elif self.accelerator and self.backend == "jax":
            import jax

            peak = jax.devices()[0].memory_stats().get("peak_bytes_in_use", 0)
            self.bytes, self.how = peak - self.before, "XLA allocator peak (since process start) minus bytes in use before"
        else:
            self.bytes, self.how = common.peak_rss_bytes() - self.before, "peak RSS growth"
        self.bytes = max(0, self.bytes)
        return False


def layer_models(case, ensemble_size):
    """{variant: one-layer model} for a LAYER_CASES entry; all variants see K*B rows."""
    import keras

    from rank1_keras.layers import Conv2DBatchEnsemble, Conv2DRank1, DenseBatchEnsemble, DenseRank1

    def one_layer(layer):
        inputs = keras.Input(case["shape"])
        return keras.Model(inputs, layer(inputs))

    if case["kind"] == "dense":
        units = case["shape"][-1]
        plain = keras.layers.Dense(units)
        batch_ensemble = DenseBatchEnsemble(units, ensemble_size=ensemble_size)
        rank1 = DenseRank1(units, ensemble_size=ensemble_size, alpha_regularizer=None, gamma_regularizer=None)
    else:
        filters = case["shape"][-1]
        plain = keras.layers.Conv2D(filters, 3, padding="same")
        batch_ensemble = Conv2DBatchEnsemble(filters, 3, ensemble_size=ensemble_size, padding="same")
        rank1 = Conv2DRank1(filters, 3, ensemble_size=ensemble_size, padding="same", alpha_regularizer=None, gamma_regularizer=None)
    return {"plain": one_layer(plain), "BatchEnsemble": one_layer(batch_ensemble), "rank-1": one_layer(rank1)}


def layer_cost(backend, rounds, warmup, scale):
    import keras
    import numpy as np

    from benchmarks.serving import summarise, time_rounds

    results = {}
    for title, case in LAYER_CASES.items():
        rows = case["rows"] * scale
        models = layer_models(case, ENSEMBLE_SIZE)
        rng = np.random.RandomState(0)
        x = rng.standard_normal((rows, *case["shape"])).astype("float32")
        y = rng.standard_normal((rows, *case["shape"])).astype("float32")
        for model in models.values():
            model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        train = {name: (lambda m=m: m.train_on_batch(x, y)) for name, m in models.items()}
        infer = {name: (lambda m=m: np.asarray(m.predict_on_batch(x))) for name, m in models.items()}
        results[title] = {
            "rows": rows,
            "train": summarise(time_rounds(train, rounds, warmup), "plain"),
            "infer": summarise(time_rounds(infer, rounds, warmup), "plain"),
        }
    return results


def gap_models(method, ensemble_size, train_size):
    """(models trained one after another, the model evaluated) for a GAP_METHODS entry."""
    import rank1_keras as r1
    from rank1_keras.models import small_cnn

    if method == "deterministic":
        network = small_cnn()
        return [network], network
    if method == "deep ensemble":
        members = [small_cnn(name=f"member_{k}") for k in range(ensemble_size)]
        return members, r1.join_ensemble(members)
    options = dict(train_size=train_size) if method == "rank1" else {}
    model = r1.convert(small_cnn(), method, ensemble_size=ensemble_size, **options)
    return [model], model


def fashion_mnist_gap(backend, train_examples, epochs, batch_size, seed=0):
    import keras
    import numpy as np

    import rank1_keras as r1
    from rank1_keras import metrics
    from rank1_keras.data import load_fashion_mnist

    images, labels = load_fashion_mnist(split="train")
    test_images, test_labels = load_fashion_mnist(split="test")
    order = np.random.RandomState(seed).permutation(len(images))[:train_examples]
    validation = len(order) // 10
    x_train, y_train = images[order[validation:]], labels[order[validation:]]
    x_valid, y_valid = images[order[:validation]], labels[order[:validation]]
    results = {}
    for method in GAP_METHODS:
        keras.utils.set_random_seed(seed)
        trained, evaluated = gap_models(method, ENSEMBLE_SIZE, len(x_train))
        with PeakMemory(backend) as memory:
            started = time.perf_counter()
            for model in trained:
                members = 1 if model is not evaluated or method == "deterministic" else ENSEMBLE_SIZE
                model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=r1.AverageNLL(members))
                model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
            seconds = time.perf_counter() - started
        valid = np.asarray(evaluated.predict(x_valid, batch_size=512, verbose=0))
        test = np.asarray(evaluated.predict(test_images, batch_size=512, verbose=0))
        results[method] = {
            "seconds_per_epoch": seconds / epochs,
            "peak_memory_mb": memory.bytes / 2**20,
            "memory_measure": memory.how,
            "validation_nll": metrics.negative_log_likelihood(valid, y_valid),
            "test": metrics.evaluate_classifier(test, test_labels),
        }
    return {"train_examples": len(x_train), "epochs": epochs, "batch_size": batch_size, "results": results}


def worker(quick, parts=("layers", "gap")):
    """One backend (KERAS_BACKEND): the chosen measurements; returns JSON-able results."""
    import keras

    backend = keras.backend.backend()
    accelerator = has_accelerator(backend)
    rounds, warmup = (5, 2) if quick else (30, 3)
    result = {"backend": backend, "device": device_line(backend), "keras": keras.__version__}
    if "layers" in parts:
        result["layers"] = layer_cost(backend, rounds, warmup, scale=16 if accelerator else 1)
    if "gap" in parts:
        if quick:
            gap = dict(train_examples=2000, epochs=1)
        else:
            gap = dict(train_examples=60000, epochs=15) if accelerator else dict(train_examples=10000, epochs=3)
        result["fashion_mnist"] = fashion_mnist_gap(backend, batch_size=128, **gap)
    return result


def run_workers(backends, quick, parts):
    """`worker` in a fresh process per installed backend: [results or {"backend", "error"}]."""
    from benchmarks import serving

    arguments = ["worker", f"--parts={','.join(parts)}"] + (["--quick"] if quick else [])
    return [
        serving.run_worker_process("benchmarks.gpu_ready", arguments, backend, "@@gpu_ready ")
        for backend in available_backends(backends)
    ]


# -- run ---------------------------------------------------------------------------------


def available_backends(requested):
    import importlib.util

    return [b for b in requested if importlib.util.find_spec(b) is not None]


def run(output_dir, backends, quick):
    from benchmarks import serving

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run_workers(backends, quick, ("layers", "gap"))
    rounds = 5 if quick else 30
    serving_section = serving.run(quick=quick, backends=available_backends(backends), rounds=rounds)
    report = {"results": results, "serving": serving_section["data"], "seconds": time.perf_counter() - started}
    (output_dir / "gpu_ready.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    markdown = render(results, serving_section["markdown"], report["seconds"], quick)
    (output_dir / "gpu_ready.md").write_text(markdown)
    return markdown


def render_layers(result, level="###"):
    """The layer-cost table of one backend's results, with its heading."""
    from benchmarks.common import markdown_table

    rows = []
    for title, case in result["layers"].items():
        for variant in case["train"]:
            train, infer = case["train"][variant], case["infer"][variant]
            rows.append([
                f"{title} ({case['rows']} rows)", variant,
                f"**{train['ratio']:.2f}×** ({train['median_ms']:.2f} ms)",
                f"**{infer['ratio']:.2f}×** ({infer['median_ms']:.2f} ms)",
            ])
    heading = f"{level} Layer cost (K = 4; ratio to the plain layer, same K·B rows)"
    return [heading, markdown_table(["layer", "variant", "train step", "inference"], rows)]


def render(results, serving_markdown, seconds, quick):
    from benchmarks import serving
    from benchmarks.common import markdown_table

    parts = [
        "# Benchmarks on JAX and PyTorch (GPU-ready)",
        f"Generated by `python -m benchmarks.gpu_ready run{' --quick' if quick else ''}` in {seconds / 60:.1f} min.",
    ]
    for result in results:
        heading, measured = serving.backend_heading(result, level="##")
        parts += heading
        if not measured:
            continue
        parts += render_layers(result)
        gap = result["fashion_mnist"]
        parts.append(
            f"### Fashion-MNIST, small CNN: {gap['train_examples']:,} training images, epochs: {gap['epochs']}, "
            f"batch {gap['batch_size']}, one seed; test once on 10,000 images. Device: {result['device']}."
        )
        rows = []
        for method, entry in gap["results"].items():
            test = entry["test"]
            rows.append([
                method, f"{test['nll']:.4f}", f"{test['accuracy']:.4f}", f"{test['ece']:.4f}",
                f"{entry['validation_nll']:.4f}", f"{entry['seconds_per_epoch']:.1f}", f"{entry['peak_memory_mb']:.0f}",
            ])
        parts.append(markdown_table(
            ["method", "test NLL", "test accuracy", "test ECE", "validation NLL", "s / epoch", "peak MB"], rows
        ))
        parts.append(f"Peak memory: {next(iter(gap['results'].values()))['memory_measure']}.")
    parts.append("## Serving and training step")
    parts.append(serving_markdown)
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bundle_parser = commands.add_parser("bundle", help="write the upload for a machine without TensorFlow")
    bundle_parser.add_argument("--output", required=True)
    bundle_parser.add_argument("--data-dir", default=None, help="the Fashion-MNIST IDX files (default: Debian's)")
    run_parser = commands.add_parser("run", help="run every benchmark on each installed backend")
    run_parser.add_argument("--output-dir", required=True)
    run_parser.add_argument("--backends", default="jax,torch")
    run_parser.add_argument("--quick", action="store_true", help="a few minutes on a CPU: fewer rounds, 2,000 images, 1 epoch")
    worker_parser = commands.add_parser("worker", help=argparse.SUPPRESS)
    worker_parser.add_argument("--quick", action="store_true")
    worker_parser.add_argument("--parts", default="layers,gap")
    args = parser.parse_args(argv)
    if args.command == "bundle":
        sizes = bundle(args.output, args.data_dir)
        for name, size in sorted(sizes.items()):
            print(f"{size / 2**20:8.2f} MiB  {name}")
    elif args.command == "run":
        unknown = sorted(set(args.backends.split(",")) - {"jax", "torch", "tensorflow"})
        if unknown:
            parser.error(f"--backends takes jax, torch, tensorflow; got {', '.join(unknown)}")
        print(run(args.output_dir, args.backends.split(","), args.quick))
    else:
        print("@@gpu_ready " + json.dumps(worker(args.quick, args.parts.split(",")), default=float), flush=True)


if __name__ == "__main__":
    main()
