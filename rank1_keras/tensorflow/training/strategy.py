"""Choosing a tf.distribute strategy by name (the binaries' `--strategy` flag).

| name         | strategy                                   | where                          |
|--------------|--------------------------------------------|--------------------------------|
| default      | the default strategy (one device)          | one CPU or GPU                 |
| mirrored     | MirroredStrategy over the local devices    | many GPUs (or logical CPUs)    |
| multi_worker | MultiWorkerMirroredStrategy from TF_CONFIG | several machines               |
| tpu          | TPUStrategy on `--tpu`                     | Cloud TPU (untested here)      |

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so the training loop is a custom `strategy.run`
loop that works under all four. TensorFlow allows one collective
MirroredStrategy per process: `make_strategy` caches the one it creates.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
_CACHE = {}


def make_strategy(name="default", tpu=None, num_cores=None):
    """Returns the strategy `name`, creating it once per process.

    Args:
        name: one of `STRATEGIES`.
        tpu: TPU name or address (name "tpu"); "" or "local" for a TPU VM.
        num_cores: for "mirrored" on CPUs: split the CPU into this many
            logical devices (must happen before TensorFlow initialises its
            devices); None uses the visible GPUs, else the CPU.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {name!r}.")
    key = (name, tpu, num_cores)
    if key in _CACHE:
        return _CACHE[key]
    if _CACHE:
        raise ValueError(
            f"strategy: this process already made {next(iter(_CACHE))[0]!r}; TensorFlow cannot run two "
            "collective strategies in one process. Start a new process for another strategy."
        )
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        devices = None
        if num_cores and not tf.config.list_physical_devices("GPU"):
            split_cpu(num_cores)
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' needs the TF_CONFIG environment variable (cluster and task) on "
                "every worker; see the README's tf.distribute section."
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    _CACHE[key] = strategy
    return strategy


def split_cpu(num_devices):
    """Splits the physical CPU into `num_devices` logical CPUs (before TF runs anything)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    configuration = [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, configuration)
    except RuntimeError as error:
        raise ValueError(
            f"num_cores={num_devices}: TensorFlow's devices are already initialised in this process, so the "
            "CPU cannot be split any more; choose the strategy before building anything."
        ) from error


def is_chief(strategy):
    """Whether this worker writes checkpoints and results (the chief, or worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0
