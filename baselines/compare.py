r"""The main job: every method on one embedded real data set, one table.

    python -m baselines.compare --flagfile=configs/embedded/fashion_mnist_demo.cfg --output_dir=runs/compare

Runs `--methods` one after another with the same flags (those of
`baselines.embedded`), each into `<output_dir>/<method>/` (so an interrupted
comparison resumes from each method's checkpoints), then prints the Markdown
table and writes it to `<output_dir>/comparison.md` and `comparison.json`.
Bella fine-tunes low-rank perturbations of the comparison's own deterministic
network (`<output_dir>/deterministic`) unless `--pretrained_checkpoint` says otherwise.
"""

import contextlib
import dataclasses
import json
import os

from absl import flags

from baselines import common, embedded  # noqa: F401  (embedded defines the shared flags)

flags.DEFINE_list(
    "methods", list(common.METHOD_CHOICES), f"Methods to compare, in table order; from {list(common.METHOD_CHOICES)}."
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected positional arguments {argv[1:]}; every setting is a --flag.")
    from rank1_keras.runs.directory_lock import DirectoryLock
    from rank1_keras.tensorflow.training.strategy import is_chief

    for method in FLAGS.methods:
        if method not in common.METHOD_CHOICES:
            raise ValueError(f"--methods entries must be in {list(common.METHOD_CHOICES)}; got {method!r}.")
    strategy = common.make_strategy_from_flags()
    # One comparison per output directory (each method's run also locks its own folder);
    # the chief alone writes, so it alone holds the lock.
    with DirectoryLock(FLAGS.output_dir, "comparison") if is_chief(strategy) else contextlib.nullcontext():
        compare(strategy)


def compare(strategy):
    from rank1_keras.tensorflow.training import evaluation
    from rank1_keras.runs.checkpoint import write_atomically
    from rank1_keras.tensorflow.training.experiment import run_experiment
    from rank1_keras.tensorflow.training.tasks import load_task

    method_settings, training, task = common.settings_from_flags(strategy.num_replicas_in_sync)
    global_batch = FLAGS.per_core_batch_size * strategy.num_replicas_in_sync
    results, tasks = [], {}  # one load (data, OOD and shifted sets) per distinct task options
    for method in FLAGS.methods:
        print(f"== {method} ==", flush=True)
        settings = dataclasses.replace(method_settings, method=method)
        if method == "bella" and not settings.pretrained_checkpoint:
            # Bella perturbs the network this comparison trained as its deterministic baseline.
            baseline = os.path.join(FLAGS.output_dir, "deterministic")
            if "deterministic" not in FLAGS.methods[: FLAGS.methods.index("bella")]:
                raise ValueError(
                    "--methods: bella starts from the deterministic run; list deterministic before bella "
                    "or pass --pretrained_checkpoint."
                )
            settings = dataclasses.replace(settings, pretrained_checkpoint=baseline)
        method_task = dataclasses.replace(task, dropout_rate=FLAGS.dropout_rate if method == "dropout" else 0.0)
        if method_task not in tasks:
            tasks[method_task] = load_task(FLAGS.dataset, method_task)
        results.append(
            run_experiment(
                FLAGS.dataset, settings, training, method_task, os.path.join(FLAGS.output_dir, method), strategy,
                evaluation_batch_size=FLAGS.eval_batch_size, task=tasks[method_task],
            )
        )
    table = evaluation.markdown_table(results)
    first = results[0]
    heading = (
        f"{first['dataset']} ({first['notes']}): {first['train_examples']} training / {first['test_examples']} test "
        f"examples, {FLAGS.train_epochs} epochs, global batch {global_batch}, seed {FLAGS.seed}, "
        f"architecture {first['architecture']}"
    )
    print(f"\n{heading}\n\n{table}", flush=True)
    write_atomically(
        os.path.join(FLAGS.output_dir, "comparison.md"), lambda s: s.write(f"{heading}\n\n{table}\n".encode("utf-8"))
    )
    write_atomically(
        os.path.join(FLAGS.output_dir, "comparison.json"),
        lambda s: s.write(json.dumps({"heading": heading, "results": results}, indent=2, default=float).encode()),
    )


if __name__ == "__main__":
    common.run(main)
