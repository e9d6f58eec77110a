"""The flags and `main` every training binary shares (uncertainty-baselines style).

Each binary (`cifar`, `imagenet`, `mimic`, `embedded`) calls
`define_flags(datasets, **defaults)` with its datasets and its papers'
defaults, then `run(main)`. Learning rates are given for a global batch of
`--base_batch_size` examples and scaled linearly with the real global batch
(`--per_core_batch_size` x replicas). `--lr_decay_epochs` are absolute epochs
(uncertainty-baselines gives 80/160/180 for 200 epochs and rescales them;
the defaults here are already rescaled to the default 250 epochs).
"""

import errno
import sys

from absl import app, flags

from rank1_keras.methods.settings import (
    BELLA_TRAINERS,
    FACTOR_INITIALIZERS,
    PRIORS,
    TRAINING_LIKELIHOODS,
)
from rank1_keras.methods.spec import method_names
from rank1_keras.tensorflow.training.strategy import STRATEGIES
from rank1_keras.tensorflow.training.tasks import ARCHITECTURES

FLAGS = flags.FLAGS
# Every registered method (`rank1_keras.methods.register_method` adds more).
METHOD_CHOICES = method_names()

# The papers' CIFAR settings (METHODS.md, uncertainty-baselines' rank-1 WRN-28-10).
PAPER_DEFAULTS = dict(
    method="rank1",
    ensemble_size=4,
    prior="normal",
    prior_mean=1.0,
    prior_stddev=0.1,
    alpha_initializer="trainable_normal",
    gamma_initializer="trainable_normal",
    random_sign_init=0.5,
    posterior_initial_stddev=1e-3,
    use_additive_perturbation=False,
    kl_annealing_epochs=200.0,
    l2=1e-4,
    dropout_rate=0.1,
    num_eval_samples=1,
    train_epochs=250,
    optimizer="sgd",
    base_learning_rate=0.1,
    base_batch_size=128,
    lr_decay_epochs=["100", "200", "225"],  # uncertainty-baselines' 80/160/180 of 200, scaled to 250
    lr_decay_ratio=0.2,
    lr_warmup_epochs=1.0,
    per_core_batch_size=64,
    training_likelihood="average",
    validation_percent=0.0,
    architecture=None,
    depth=28,
    width_multiplier=10.0,
    # LP-BNN (Franchi et al.): VAE latent 32, loss weight 1.
    latent_dim=32,
    latent_loss_weight=1.0,
    # Bella (Doan et al.): rank 4, 3 particles.
    bella_rank=4,
    bella_num_particles=3,
    bella_trainer="ensemble",
)


# {data set: {flag: value}}: what `apply_dataset_defaults` gives flags left unset.
_DATASET_DEFAULTS = {}


def define_flags(datasets, dataset_defaults=None, **defaults):
    """Defines the shared flags; `defaults` override `PAPER_DEFAULTS` (the binary's paper).

    `dataset_defaults` ({data set: {flag: value}}) override both for one data
    set, for every flag the command line and flagfiles leave unset: settings
    that train that data set's model to convergence, not one size for all.
    """
    values = {**PAPER_DEFAULTS, **defaults}
    flags.DEFINE_enum("dataset", datasets[0], datasets, "Data set.")
    flags.DEFINE_enum("method", values["method"], METHOD_CHOICES, "Method.")
    flags.DEFINE_integer("ensemble_size", values["ensemble_size"], "Members K (ensemble, batchensemble, rank1, lpbnn, packed).")
    flags.DEFINE_enum("prior", values["prior"], PRIORS, "Rank-1 prior family.")
    flags.DEFINE_float("prior_mean", values["prior_mean"], "Rank-1 prior location (1 for multiplicative factors).")
    flags.DEFINE_float("prior_stddev", values["prior_stddev"], "Rank-1 prior stddev (Normal) or scale (Cauchy).")
    flags.DEFINE_enum("alpha_initializer", values["alpha_initializer"], FACTOR_INITIALIZERS, "r factor family.")
    flags.DEFINE_enum("gamma_initializer", values["gamma_initializer"], FACTOR_INITIALIZERS, "s factor family.")
    flags.DEFINE_float(
        "random_sign_init", values["random_sign_init"], "> 0: factor means +/-1 with P(+1)=value; <= 0: N(1, value^2)."
    )
    flags.DEFINE_float(
        "posterior_initial_stddev", values["posterior_initial_stddev"], "Initial stddev of the rank-1 posteriors."
    )
    flags.DEFINE_bool("use_additive_perturbation", values["use_additive_perturbation"], "W + r s^T instead of W o r s^T.")
    flags.DEFINE_float("kl_annealing_epochs", values["kl_annealing_epochs"], "Epochs of the linear KL warm-up.")
    flags.DEFINE_float(
        "fast_weight_lr_multiplier", values.get("fast_weight_lr_multiplier", 1.0), "Gradient scale of the r, s factors."
    )
    flags.DEFINE_float("l2", values["l2"], "L2 on kernels, batch norm and biases (never on rank-1 posteriors).")
    flags.DEFINE_float("dropout_rate", values["dropout_rate"], "MC dropout rate (method=dropout).")
    flags.DEFINE_integer("num_eval_samples", values["num_eval_samples"], "Stochastic passes averaged at evaluation.")
    flags.DEFINE_integer("train_epochs", values["train_epochs"], "Training epochs.")
    flags.DEFINE_enum("optimizer", values["optimizer"], ["sgd", "adam"], "SGD with Nesterov momentum 0.9, or Adam.")
    flags.DEFINE_float("base_learning_rate", values["base_learning_rate"], "Learning rate per --base_batch_size examples.")
    flags.DEFINE_integer("base_batch_size", values["base_batch_size"], "Global batch the base learning rate is for.")
    flags.DEFINE_list("lr_decay_epochs", values["lr_decay_epochs"], "Epochs at which the learning rate decays.")
    flags.DEFINE_float("lr_decay_ratio", values["lr_decay_ratio"], "Learning-rate factor at each decay epoch.")
    flags.DEFINE_float("lr_warmup_epochs", values["lr_warmup_epochs"], "Epochs of linear learning-rate warm-up.")
    flags.DEFINE_integer(
        "per_core_batch_size", values["per_core_batch_size"], "Examples per replica per step, before tiling to K."
    )
    flags.DEFINE_enum(
        "training_likelihood", values["training_likelihood"], TRAINING_LIKELIHOODS, "Ensemble NLL used in training."
    )
    flags.DEFINE_enum(
        "training_batch", None, ["tile", "split"],
        "Every member sees the batch (tile) or its B/K share (split); unset: the method's default "
        "(tile for the ensembles, split for dropout).",
    )
    flags.DEFINE_integer("latent_dim", values["latent_dim"], "LP-BNN: VAE latent size per layer.")
    flags.DEFINE_float("latent_loss_weight", values["latent_loss_weight"], "LP-BNN: weight of the VAE loss (layer mean).")
    flags.DEFINE_enum(
        "latent_inference", "mean", ["mean", "sample"], "LP-BNN at evaluation: z = mu, or --num_eval_samples draws."
    )
    flags.DEFINE_float(
        "packed_width_factor", values.get("packed_width_factor", 2.0),
        "Packed-Ensembles: alpha, the packed network's width over the original's (each member alpha/K).",
    )
    flags.DEFINE_integer("packed_groups", values.get("packed_groups", 1), "Packed-Ensembles: gamma, groups per member kernel.")
    flags.DEFINE_integer("bella_rank", values["bella_rank"], "Bella: rank of each low-rank perturbation.")
    flags.DEFINE_integer("bella_num_particles", values["bella_num_particles"], "Bella: particles (its K).")
    flags.DEFINE_enum("bella_trainer", values["bella_trainer"], BELLA_TRAINERS, "Bella: plain ensemble or SVGD.")
    flags.DEFINE_list("bella_layers", [], "Bella: names of the layers to perturb (empty: every Dense/Conv).")
    flags.DEFINE_float("bella_prior_stddev", None, "Bella-SVGD: Normal prior stddev on the perturbations (None: flat).")
    flags.DEFINE_string(
        "pretrained_checkpoint", None,
        "Bella: the frozen network's weights: a finished run's --output_dir (e.g. --method=deterministic), "
        "a ckpt-*.npz, or a Keras .weights.h5/.keras file of the same architecture.",
    )
    flags.DEFINE_integer("seed", 0, "Random seed (initialisation, data order, sampling).")
    flags.DEFINE_string("output_dir", None, "Checkpoints, TensorBoard summaries and results go here.")
    flags.DEFINE_string("data_dir", values.get("data_dir"), "Where the data set lives.")
    flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU name or address (strategy=tpu).")
    flags.DEFINE_integer("num_cores", None, "strategy=mirrored on CPUs: logical CPU devices to split into.")
    flags.DEFINE_bool("use_bfloat16", False, "Mixed bfloat16 precision (TPUs).")
    flags.DEFINE_enum("architecture", values["architecture"], ARCHITECTURES, "Architecture (default: the data set's).")
    flags.DEFINE_integer("depth", values["depth"], "Wide ResNet depth (6n+4).")
    flags.DEFINE_float("width_multiplier", values["width_multiplier"], "Wide ResNet / ResNet-50 width multiplier.")
    flags.DEFINE_integer("lstm_units", values.get("lstm_units", 64), "LSTM state size.")
    flags.DEFINE_integer("image_size", 224, "ImageNet crop size.")
    flags.DEFINE_float("validation_percent", values["validation_percent"], "Percent of train held out for temperature.")
    flags.DEFINE_integer("train_examples", 0, "Use only the first N training examples (0: all).")
    flags.DEFINE_integer("test_examples", 0, "Use only the first N test examples (0: all).")
    flags.DEFINE_integer("shift_examples", 2000, "Test images per shifted set (embedded images).")
    flags.DEFINE_list("corruptions", None, "Corruption types to evaluate (default all; empty string for none).")
    flags.DEFINE_list("corruption_severities", ["1", "2", "3", "4", "5"], "Corruption severities to evaluate.")
    flags.DEFINE_bool("ood", True, "Evaluate the out-of-distribution sets.")
    flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (None: all full batches).")
    flags.DEFINE_integer("eval_batch_size", 256, "Examples per evaluation batch.")
    flags.DEFINE_integer("verbose", 1, "1: progress bar; 2: a line per epoch; 0: quiet.")
    flags.mark_flag_as_required("output_dir")
    for dataset, overrides in (dataset_defaults or {}).items():
        unknown = sorted(set(overrides) - set(FLAGS))
        if dataset not in datasets or unknown:
            raise ValueError(f"dataset_defaults[{dataset!r}]: not a data set of {datasets}, or unknown flags {unknown}.")
    _DATASET_DEFAULTS.update(dataset_defaults or {})


def _from_flags(settings_class, **overrides):
    """A settings dataclass whose fields take the flags of the same name (or `overrides`)."""
    import dataclasses

    values = {}
    for field in dataclasses.fields(settings_class):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.name in FLAGS:
            values[field.name] = FLAGS[field.name].value
    return settings_class(**values)


def apply_dataset_defaults():
    """Gives every flag the command line (flagfiles included) left unset its `--dataset`'s default."""
    for name, value in _DATASET_DEFAULTS.get(FLAGS.dataset, {}).items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def settings_from_flags(replicas=1):
    """(MethodSettings, TrainingSettings, TaskOptions) from the parsed flags.

    Flags left unset take the data set's defaults first (`apply_dataset_defaults`).
    The learning rate is scaled from `--base_batch_size` to the global batch
    of `replicas` x `--per_core_batch_size`.
    """
    apply_dataset_defaults()
    from rank1_keras.methods.settings import MethodSettings
    from rank1_keras.tensorflow.training.loop import TrainingSettings
    from rank1_keras.tensorflow.training.tasks import TaskOptions

    method = _from_flags(MethodSettings, bella_layers=tuple(name for name in FLAGS.bella_layers if name))
    if method.method == "bella" and not method.pretrained_checkpoint:
        raise ValueError(
            "--method=bella perturbs a trained network: pass --pretrained_checkpoint (e.g. the --output_dir "
            "of a --method=deterministic run with the same data set and architecture)."
        )
    try:
        decay_epochs = tuple(float(e) for e in FLAGS.lr_decay_epochs)
        severities = tuple(int(s) for s in FLAGS.corruption_severities)
    except ValueError as error:
        raise ValueError(f"--lr_decay_epochs and --corruption_severities take numbers: {error}") from error
    global_batch = FLAGS.per_core_batch_size * replicas
    training = _from_flags(
        TrainingSettings,
        per_replica_batch_size=FLAGS.per_core_batch_size,
        base_learning_rate=FLAGS.base_learning_rate * global_batch / FLAGS.base_batch_size,
        lr_decay_epochs=decay_epochs,
    )
    task = _from_flags(
        TaskOptions,
        corruptions=None if FLAGS.corruptions is None else tuple(c for c in FLAGS.corruptions if c),
        corruption_severities=severities,
        dropout_rate=FLAGS.dropout_rate if FLAGS.method == "dropout" else 0.0,
    )
    return method, training, task


def main(argv):
    """Runs one experiment from the flags; prints its Markdown row."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}; every setting is a --flag.")
    from rank1_keras.tensorflow.training import evaluation
    from rank1_keras.tensorflow.training.experiment import run_experiment

    strategy = make_strategy_from_flags()
    method, training, task = settings_from_flags(strategy.num_replicas_in_sync)
    result = run_experiment(
        FLAGS.dataset, method, training, task, FLAGS.output_dir, strategy, evaluation_batch_size=FLAGS.eval_batch_size
    )
    replica_batches = [logs.get("replica_batch_size") for logs in result["final_train_logs"]]
    print(
        f"replicas: {result['replicas']}, per-replica batch: {replica_batches}, "
        f"global batch: {result['global_batch_size']}",
        flush=True,
    )
    print(evaluation.markdown_table([result]), flush=True)


def make_strategy_from_flags():
    """The `--strategy` (made once per process), with `--use_bfloat16` applied."""
    from rank1_keras.tensorflow.training.strategy import make_strategy

    strategy = make_strategy(FLAGS.strategy, tpu=FLAGS.tpu, num_cores=FLAGS.num_cores)
    if FLAGS.use_bfloat16:
        import keras

        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return strategy


def _parse_flags_or_exit(argv):
    # absl prints a usage hint after flag errors; one clear line is enough.
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


# Errors that end a run with one line, not a traceback: bad input the user can fix.
def _expected_errors():
    from rank1_keras.data.fashion_mnist import DataNotFoundError
    from rank1_keras.runs.checkpoint import CheckpointError
    from rank1_keras.runs.directory_lock import DirectoryLockError

    return (DataNotFoundError, CheckpointError, DirectoryLockError, ValueError, FloatingPointError, app.UsageError)


def describe_os_error(error):
    """One line for a file-system failure: what failed, where, and what to do."""
    path = error.filename if error.filename is not None else "a file"
    advice = {
        errno.ENOSPC: "free some space or choose another --output_dir; the run resumes from its last checkpoint",
        errno.EDQUOT: "free some space or choose another --output_dir; the run resumes from its last checkpoint",
        errno.EROFS: "the file system is read-only: choose a writable --output_dir",
        errno.EACCES: "no permission: choose a directory you can write to",
        errno.EPERM: "no permission: choose a directory you can write to",
        errno.EFBIG: "the file would exceed the size limit (ulimit -f): raise it or choose another --output_dir",
    }.get(error.errno, "check the path and the file system")
    return f"cannot write or read {path}: {error.strerror or error} (errno {error.errno}); {advice}."


def run(main_function=main):
    """`app.run` with one-line errors for bad flags, data, checkpoints and file systems."""

    def guarded(argv):
        try:
            main_function(argv)
        except _expected_errors() as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        except OSError as error:
            print(f"error: {describe_os_error(error)}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded, flags_parser=_parse_flags_or_exit)
