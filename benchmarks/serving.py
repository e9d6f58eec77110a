"""Serving and training-step cost of the K = 4 ensembles against K networks, on every Keras backend.

    python -m benchmarks.serving                          # every installed backend
    python -m benchmarks.serving --backends jax --quick   # one backend, fewer rounds
    python -m benchmarks.serving --output-dir /tmp/out    # writes serving.json and serving.md there

The question the figures answer: does a single-pass ensemble (BatchEnsemble,
rank-1 at its posterior mean) answer at least as fast as a deep ensemble of
K networks joined into one model (`join_ensemble`), and train a tiled step
no slower than the deep ensemble's K steps? Each backend runs in its own
process (`KERAS_BACKEND` is read once, at import), building the small CNN of
the embedded demos (28x28x1, 10 classes) and, from it, the four models.

Inference is `model.predict_on_batch`, what a Keras user calls, compiled by
each backend as Keras does (`tf.function` on TensorFlow, `jax.jit` on JAX,
eager PyTorch); the same two ensembles also run folded for serving
(`fold_members`: K plain networks). A training step is `train_on_batch` with
`AverageNLL(K)`: the single-pass ensembles see K*B rows (member chains by
default, the tiled form in the "tiled only" row), the deep ensemble trains its
K networks one after the other on B rows each, the same examples and FLOPs,
and, for reference, all K in one joined step. Rounds are
interleaved (each round runs every model once, in rotating order) and the
ratios are medians over rounds of (model time / one network's time in the
same round): on a loaded machine the ratios stay comparable, absolute times
do not. Nothing here imports TensorFlow unless the backend is TensorFlow, so
it runs on a machine with JAX or PyTorch only (see `benchmarks.gpu_ready`).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ENSEMBLE_SIZE = 4
BATCHES = (1, 8, 32, 256)
TRAINING_BATCH = 32
BACKENDS = ("tensorflow", "jax", "torch")
MODELS = (
    "one network",
    "deep ensemble (joined)",
    "BatchEnsemble",
    "rank-1 (posterior mean)",
    "BatchEnsemble, tiled only",
    "BatchEnsemble, folded",
    "rank-1 (posterior mean), folded",
)
# The single-pass ensembles whose targets are checked; "tiled only" keeps the
# tiled form at every batch size (`MemberChains.chains_from_batch = None`),
# the form every batch ran before member chains, for comparison in one run.
SINGLE_PASS = MODELS[2:5]
# The same two ensembles as served (`fold_members`, what `export_for_serving`
# exports): K plain networks with the members' folded kernels. Inference only.
FOLDED = MODELS[5:]
# One network on the K*B rows a tiled ensemble computes: the cost of K
# networks' FLOPs with one network's op count, a floor that no single-pass
# form doing K networks' work beats by much (where this row is above 1.3 at
# B = 1, the B = 1 target asks for less than the FLOPs cost on that device).
FLOOR = "one network on K·B rows"
# The deep ensemble's K networks trained in one step (`join_ensemble`, AverageNLL): the cost of one
# step over K networks' graphs, which member chains in training run.
JOINED_STEP = "deep ensemble, K networks in one step"
_RESULT_PREFIX = "@@serving "


# -- the worker: one backend ------------------------------------------------------


def device_description(backend):
    """One line naming the accelerator (if any) and the CPU, without importing TensorFlow elsewhere."""
    from benchmarks.common import cpu_model

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    cpu = f"{cpu_model()}, {cores} usable cores (of {os.cpu_count()})"
    accelerators = []
    if backend == "jax":
        import jax

        accelerators = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    elif backend == "torch":
        import torch

        accelerators = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif backend == "tensorflow":
        import tensorflow as tf

        accelerators = [d.name for d in tf.config.list_physical_devices("GPU")]
    if accelerators:
        return f"GPU: {', '.join(accelerators)}; CPU: {cpu}"
    return f"CPU only: {cpu}"


def build_models(ensemble_size, seed=0):
    """{name: model} for MODELS, and the K separate networks the deep ensemble trains."""
    import keras

    import rank1_keras as r1
    from rank1_keras.models import small_cnn

    keras.utils.set_random_seed(seed)
    network = small_cnn((28, 28, 1), 10)
    members = [small_cnn((28, 28, 1), 10, name=f"member_{k}") for k in range(ensemble_size)]
    models = {
        "one network": network,
        "deep ensemble (joined)": r1.join_ensemble(members),
        "BatchEnsemble": r1.convert(network, "batchensemble", ensemble_size=ensemble_size),
        "rank-1 (posterior mean)": r1.convert(
            network, "rank1", ensemble_size=ensemble_size, train_size=60000, inference="mean"
        ),
        "BatchEnsemble, tiled only": r1.convert(network, "batchensemble", ensemble_size=ensemble_size),
    }
    tiled = models["BatchEnsemble, tiled only"]
    tiled.set_weights(models["BatchEnsemble"].get_weights())
    tiled.get_layer(f"{network.name}_members").chains_from_batch = None
    tiled.get_layer(f"{network.name}_members").chains_in_training = False
    models["BatchEnsemble, folded"] = r1.fold_members(models["BatchEnsemble"])
    models["rank-1 (posterior mean), folded"] = r1.fold_members(models["rank-1 (posterior mean)"])
    return models, members


def _compile(model, ensemble_size):
    import keras

    from rank1_keras.losses import AverageNLL

    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=AverageNLL(ensemble_size))


def training_steps(models, members, ensemble_size, batch):
    """{name: step()}: one optimiser step over the same `batch` examples per model."""
    import numpy as np

    rng = np.random.RandomState(1)
    x = rng.standard_normal((batch, 28, 28, 1)).astype("float32")
    y = rng.randint(0, 10, size=batch).astype("int32")
    for member in members:
        _compile(member, 1)
    steps = {"one network": _step(models["one network"], 1, x, y)}
    member_steps = [_step(member, 1, x, y) for member in members]
    steps["deep ensemble (joined)"] = lambda: [step() for step in member_steps]
    for name in SINGLE_PASS:
        steps[name] = _step(models[name], ensemble_size, x, y)
    steps[JOINED_STEP] = _step(models["deep ensemble (joined)"], ensemble_size, x, y)
    # The floor: one network's step on the K*B rows a tiled step computes.
    tiled_x, tiled_y = np.tile(x, (ensemble_size, 1, 1, 1)), np.tile(y, ensemble_size)
    steps[FLOOR] = lambda: models["one network"].train_on_batch(tiled_x, tiled_y)
    return steps


def _step(model, ensemble_size, x, y):
    _compile(model, ensemble_size)
    return lambda: model.train_on_batch(x, y)


def time_rounds(functions, rounds, warmup):
    """{name: [seconds per kept round]}, every function once per round, rotating the order."""
    names = list(functions)
    times = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            functions[name]()
            elapsed = time.perf_counter() - started
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def summarise(times, reference):
    from benchmarks.common import paired_ratio, summarize

    return {
        name: dict(summarize(values), ratio=paired_ratio(values, times[reference])) for name, values in times.items()
    }


def worker(rounds, warmup, batches, ensemble_size):
    """Runs in a process whose KERAS_BACKEND is set; returns the backend's results."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    models, members = build_models(ensemble_size)
    results = {"backend": backend, "device": device_description(backend), "keras": keras.__version__}
    rng = np.random.RandomState(0)
    inference = {}
    for batch in batches:
        x = rng.standard_normal((batch, 28, 28, 1)).astype("float32")
        functions = {name: (lambda model=model: np.asarray(model.predict_on_batch(x))) for name, model in models.items()}
        tiled_rows = np.tile(x, (ensemble_size, 1, 1, 1))
        functions[FLOOR] = lambda: np.asarray(models["one network"].predict_on_batch(tiled_rows))
        # Batch-1 rounds are short: more of them for the same wall time.
        batch_rounds = rounds * (4 if batch == 1 else 1)
        inference[str(batch)] = summarise(time_rounds(functions, batch_rounds, warmup), "one network")
    results["inference"] = inference
    steps = training_steps(models, members, ensemble_size, TRAINING_BATCH)
    results["training"] = summarise(time_rounds(steps, rounds, warmup), "one network")
    results["training_batch"] = TRAINING_BATCH
    return results


# -- the driver: every backend, the tables -------------------------------------


def available_backends(requested):
    import importlib.util

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    return [b for b in requested if importlib.util.find_spec(module[b]) is not None]


def run_backend(backend, rounds, warmup, batches, ensemble_size):
    """Runs `worker` in a fresh process with KERAS_BACKEND=backend; returns its results or an error."""
    arguments = [
        "--worker",
        f"--rounds={rounds}",
        f"--warmup={warmup}",
        f"--batches={','.join(map(str, batches))}",
        f"--ensemble-size={ensemble_size}",
    ]
    return run_worker_process("benchmarks.serving", arguments, backend, _RESULT_PREFIX)


def run_worker_process(module, arguments, backend, prefix, timeout=3 * 3600):
    """`python -m module *arguments` with KERAS_BACKEND=backend: the JSON it prints after `prefix`,
    or {"backend", "error"} with the tail of its output."""
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(prefix)]
    if lines:
        return json.loads(lines[-1][len(prefix):])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
    return {"backend": backend, "error": f"exit {completed.returncode}: " + " | ".join(tail)}


def backend_heading(result, level="###"):
    """The heading and device line of one backend's results, or its error: (parts, measured)."""
    parts = [f"{level} {result['backend']}"]
    if "error" in result:
        return parts + [f"Not measured: {result['error']}"], False
    return parts + [f"Device: {result['device']}. Keras {result['keras']}."], True


def render(results, ensemble_size):
    from benchmarks.common import markdown_table

    parts = [
        f"K = {ensemble_size}, the small CNN (28x28x1, 10 classes, 225,034 parameters per network). "
        "Inference: `predict_on_batch` of B examples (the single-pass ensembles tile them to K*B rows); "
        f"training: one `train_on_batch` step over {TRAINING_BATCH} examples (the deep ensemble: its K "
        "networks one after the other). **ratio** = median over interleaved rounds of (time / one network's "
        "time in the same round); ms = median time. Targets: every single-pass ensemble no slower than "
        "the joined deep ensemble at every B, within 1.3× one network at B = 1, and a tiled training step "
        f"no slower than the deep ensemble's K steps. The folded rows are the same ensembles served as K plain "
        "networks with their members' folded kernels (`rank1_keras.fold_members`; what `export_for_serving` "
        f"serves from 8 examples per request). The last row, {FLOOR}, is one network "
        "predicting (and training on) the K*B rows a tiled ensemble computes: K networks' FLOPs at one network's op count."
    ]
    for result in results:
        heading, measured = backend_heading(result)
        parts += heading
        if not measured:
            continue
        batches = list(result["inference"])
        rows = []
        for name in MODELS + (JOINED_STEP, FLOOR):
            if name not in result["inference"][batches[0]] and name not in result["training"]:
                continue  # (results written before the row existed)
            row = [name]
            for batch in batches:
                entry = result["inference"][batch].get(name)
                row.append(f"**{entry['ratio']:.2f}×** ({entry['median_ms']:.2f} ms)" if entry else "")
            entry = result["training"].get(name)
            row.append(f"**{entry['ratio']:.2f}×** ({entry['median_ms']:.1f} ms)" if entry else "")
            rows.append(row)
        headers = ["model"] + [f"infer B = {b}" for b in batches] + [f"train step, B = {result['training_batch']}"]
        parts.append(markdown_table(headers, rows))
        parts.append(_verdicts(result))
    return "\n\n".join(parts)


def _verdicts(result):
    """One line per single-pass ensemble: where it meets the targets and where it does not."""
    lines = []
    joined = "deep ensemble (joined)"
    floor = result["inference"].get("1", {}).get(FLOOR, {}).get("ratio")
    for name in FOLDED:
        if name in result["inference"][next(iter(result["inference"]))]:  # (results written before the folded rows lack them)
            lines.append(_folded_verdict(result, name))
    for name in SINGLE_PASS:
        slower = [
            f"B = {batch} ({result['inference'][batch][name]['ratio']:.2f}× vs {result['inference'][batch][joined]['ratio']:.2f}×)"
            for batch in result["inference"]
            if result["inference"][batch][name]["ratio"] > result["inference"][batch][joined]["ratio"]
        ]
        one = result["inference"].get("1", {}).get(name, {}).get("ratio")
        train, train_joined = result["training"][name]["ratio"], result["training"][joined]["ratio"]
        train_floor = result["training"].get(FLOOR, {}).get("ratio")
        joined_step = result["training"].get(JOINED_STEP, {}).get("ratio")
        lines.append(
            f"- {name}: "
            + (f"slower than the joined deep ensemble at {', '.join(slower)}" if slower else "no slower than the joined deep ensemble at any B")
            + (f"; B = 1 at {one:.2f}× one network ({'✓' if one <= 1.3 else '✗'} ≤ 1.3×)" if one is not None else "")
            + (f", where one network on K rows takes {floor:.2f}×" if one is not None and floor is not None else "")
            + f"; training step {train:.2f}× vs the deep ensemble's {train_joined:.2f}× ({'✓' if train <= train_joined else '✗'})"
            + (f", where its K networks in one step take {joined_step:.2f}×" if joined_step is not None else "")
            + (f" and one network's step on K·B rows {train_floor:.2f}×" if train_floor is not None else "")
            + "."
        )
    return "\n".join(lines)


def _folded_verdict(result, name):
    """A folded ensemble's time over the joined deep ensemble's, per B: the same graph of K plain networks."""
    joined = "deep ensemble (joined)"
    relative = [
        f"{result['inference'][batch][name]['ratio'] / result['inference'][batch][joined]['ratio']:.2f}× at B = {batch}"
        for batch in result["inference"]
    ]
    return (
        f"- {name}: {', '.join(relative)} the joined deep ensemble's time; both run K plain networks "
        "(the same operations), so what differs is timing noise."
    )


def run(quick=False, output_dir=None, backends=BACKENDS, ensemble_size=ENSEMBLE_SIZE, batches=BATCHES, rounds=None, warmup=None):
    """The section for `benchmarks.all`: {"title", "markdown", "figures", "data"}."""
    default_rounds, default_warmup = (8, 2) if quick else (30, 3)
    rounds = rounds or default_rounds
    warmup = default_warmup if warmup is None else warmup
    results = [run_backend(b, rounds, warmup, batches, ensemble_size) for b in available_backends(backends)]
    markdown = render(results, ensemble_size)
    data = {"ensemble_size": ensemble_size, "rounds": rounds, "warmup": warmup, "results": results}
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "serving.json").write_text(json.dumps(data, indent=1) + "\n")
        (Path(output_dir) / "serving.md").write_text("# Serving and training-step cost\n\n" + markdown + "\n")
    return {"title": "Serving cost", "markdown": markdown, "figures": [], "data": data}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: tensorflow,jax,torch")
    parser.add_argument("--quick", action="store_true", help="8 rounds (2 warm-up) instead of 30 (3)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--ensemble-size", type=int, default=ENSEMBLE_SIZE)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        result = worker(args.rounds or 30, args.warmup if args.warmup is not None else 3, batches, args.ensemble_size)
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return
    unknown = sorted(set(args.backends.split(",")) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends takes {', '.join(BACKENDS)}; got {', '.join(unknown)}")
    section = run(
        args.quick, args.output_dir, args.backends.split(","), args.ensemble_size, batches, args.rounds, args.warmup
    )
    print(section["markdown"])


if __name__ == "__main__":
    main()
