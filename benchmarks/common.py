"""Shared pieces of the benchmarks: device record, interleaved timing, workers,
peak memory, Markdown tables and bar charts.

Nothing here imports TensorFlow at import time: the tf_keras workers must set
TF_USE_LEGACY_KERAS before TensorFlow is first imported.

Timing protocol. Every timed function (a train step or a prediction) belongs to
a *participant*: this process, or a worker subprocess (a Keras 2 process for
edward2 / tfp.layers, or one process per model method). One *round* runs every
function of every participant once; the order of the participants and of the
functions inside each rotates from round to round, so slow drifts of the
machine's load hit every function alike. The first rounds are warm-up and are
dropped. Per function we keep the median of the rounds; a ratio of function A
to a reference R is the median over rounds of A/R *within the same round*
(paired), which is what survives a loaded machine best.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Several processes (this one and its workers) share a GPU when there is one.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

# BENCH_SINGLE_THREAD=1 (`--single-thread`): every process runs TensorFlow on one
# thread and timings are process CPU seconds, which a loaded, shared machine
# disturbs far less than wall-clock time. The figures are then CPU cost, not
# the latency of the default multi-threaded runtime.
SINGLE_THREAD_ENV = "BENCH_SINGLE_THREAD"
REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = REPO_ROOT / "docs"
MESSAGE_PREFIX = "@@"
ENSEMBLE_SIZE = 4


# -- statistics ---------------------------------------------------------------


def median(values):
    """The median of a non-empty sequence (mean of the two middle values if even)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("median of an empty sequence")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return 0.5 * (ordered[middle - 1] + ordered[middle])


def quantile(values, q):
    """Linear-interpolation quantile (numpy's default), q in [0, 1]."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("quantile of an empty sequence")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def paired_ratio(times, reference_times):
    """Median over rounds of times[i] / reference_times[i] (same round i)."""
    if len(times) != len(reference_times):
        raise ValueError(
            f"paired_ratio needs as many rounds on both sides; got {len(times)} and {len(reference_times)}"
        )
    return median([t / r for t, r in zip(times, reference_times)])


def summarize(times):
    """Milliseconds: median and interquartile range of per-round seconds."""
    return {
        "median_ms": 1e3 * median(times),
        "q25_ms": 1e3 * quantile(times, 0.25),
        "q75_ms": 1e3 * quantile(times, 0.75),
        "rounds": len(times),
    }


# -- the device ---------------------------------------------------------------


def single_thread():
    return os.environ.get(SINGLE_THREAD_ENV) == "1"


def clock():
    return time.process_time() if single_thread() else time.perf_counter()


def configure_tensorflow():
    """Applies the threading mode; call before TensorFlow runs its first op."""
    import tensorflow as tf

    if single_thread():
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the runtime is already initialised in this process
            pass
    return tf


def timing_mode():
    if single_thread():
        return "process CPU time, TensorFlow on one thread (BENCH_SINGLE_THREAD=1)"
    return "wall-clock time, TensorFlow's default threading"


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info():
    """What the figures were measured on (imports TensorFlow)."""
    tf = configure_tensorflow()

    physical = tf.config.list_physical_devices()
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = {}
        try:
            details = tf.config.experimental.get_device_details(device)
        except Exception:  # noqa: BLE001 - best effort, older drivers
            pass
        gpus.append(details.get("device_name", device.name))
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    versions = {"python": platform.python_version(), "tensorflow": tf.__version__}
    for module in ("keras", "tensorflow_probability", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            pass
    return {
        "physical_devices": [f"{d.device_type}:{d.name}" for d in physical],
        "gpus": gpus,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        "load_average_at_start": load,
        "timing": timing_mode(),
        "platform": platform.platform(),
        "versions": versions,
    }


def describe_device(info):
    """One line: GPU(s) if any, then the CPU and its cores."""
    cpu = f"{info['cpu_model']}, {info['usable_cores']} usable cores (of {info['cpu_count']})"
    if info["gpus"]:
        return f"GPU: {', '.join(info['gpus'])}; CPU: {cpu}"
    return f"CPU only: {cpu}"


def compute_device(info):
    return "GPU" if info["gpus"] else "CPU"


def has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


# -- peak memory --------------------------------------------------------------


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def rss_bytes():
    """Resident set size of this process now."""
    return 1024 * _status_kib("VmRSS")


def peak_rss_bytes():
    """High-water mark of the RSS since start or the last `reset_peak_rss`."""
    return 1024 * _status_kib("VmHWM")


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def release_free_memory():
    """Returns malloc's freed pages to the system, so the next growth is real."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure_peak_memory(function, calls=2):
    """Peak memory used by `calls` calls of `function` beyond what is resident before.

    On a GPU: TensorFlow's allocator peak (reset first) minus the bytes in use
    before. On a CPU (TensorFlow keeps no allocator statistics there): the
    growth of the process' peak RSS (VmHWM) over its RSS just before, after
    returning malloc's free pages to the system. Returns (bytes, how).
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")
        before = tf.config.experimental.get_memory_info("GPU:0")["current"]
        for _ in range(calls):
            function()
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return max(0, peak - before), "GPU allocator peak minus bytes in use before"
    release_free_memory()
    before = rss_bytes()
    reset_peak_rss()
    for _ in range(calls):
        function()
    return max(0, peak_rss_bytes() - before), "peak RSS growth (VmHWM after reset, minus RSS before)"


# -- timed functions and participants ----------------------------------------


def run_timed(function):
    """Seconds for one call; the result is fetched (a scalar) so the work is done."""
    start = clock()
    result = function()
    for value in result if isinstance(result, (list, tuple)) else [result]:
        if hasattr(value, "numpy"):
            value.numpy()
    return clock() - start


class LocalParticipant:
    """Timed functions that run in this process."""

    def __init__(self, name, functions):
        self.name = name
        self.functions = dict(functions)
        self.info = {}

    @property
    def keys(self):
        return list(self.functions)

    def run_round(self, keys):
        return {key: run_timed(self.functions[key]) for key in keys}

    def close(self):
        pass


class WorkerParticipant:
    """Timed functions in a worker subprocess (`python -m module *args`).

    The worker builds its functions, calls `serve(functions, info)`, and then
    runs rounds on request. Its stderr goes to a log file shown on failure.
    """

    def __init__(self, name, module, args=(), env=None):
        self.name = name
        self.module = module
        self._log = tempfile.NamedTemporaryFile("w+", prefix=f"bench_{name}_", suffix=".log", delete=False)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO_ROOT,
            env=full_env,
        )
        self.info = None
        self.functions = None

    def wait_ready(self):
        """Blocks until the worker has built its functions; returns its info."""
        if self.info is None:
            message = self._receive()
            self.functions = message["keys"]
            self.info = message["info"]
        return self.info

    @property
    def keys(self):
        self.wait_ready()
        return list(self.functions)

    def run_round(self, keys):
        self.wait_ready()
        self._send({"command": "round", "keys": list(keys)})
        return self._receive()["times"]

    def close(self):
        if self.process.poll() is None:
            try:
                self._send({"command": "quit"})
                self.process.wait(timeout=60)
            except Exception:  # noqa: BLE001
                self.process.kill()
                self.process.wait()
        self._log.close()
        os.unlink(self._log.name)

    def _send(self, message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def _receive(self):
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait()
                self._log.flush()
                tail = Path(self._log.name).read_text()[-6000:]
                raise RuntimeError(
                    f"worker {self.name} ({self.module}) exited with code {self.process.returncode}; "
                    f"its log ends with:\n{tail}"
                )
            if line.startswith(MESSAGE_PREFIX):
                message = json.loads(line[len(MESSAGE_PREFIX):])
                if "error" in message:
                    raise RuntimeError(f"worker {self.name} failed:\n{message['error']}")
                return message


def serve(functions, info=None):
    """Worker side of `WorkerParticipant`: announce, then run rounds until told to quit."""
    import traceback

    # The protocol owns the original stdout; anything printed goes to the log.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def send(message):
        channel.write(MESSAGE_PREFIX + json.dumps(message) + "\n")
        channel.flush()

    send({"keys": list(functions), "info": info or {}})
    for line in sys.stdin:
        request = json.loads(line)
        if request["command"] == "quit":
            break
        try:
            send({"times": {key: run_timed(functions[key]) for key in request["keys"]}})
        except Exception:  # noqa: BLE001 - reported to the parent
            send({"error": traceback.format_exc()})


def worker_guard(main):
    """Runs a worker's main; a failure while building is sent to the parent."""
    import traceback

    try:
        main()
    except Exception:
        sys.stdout.write(MESSAGE_PREFIX + json.dumps({"error": traceback.format_exc()}) + "\n")
        sys.stdout.flush()
        raise


def interleave(plan, repetitions, warmup=2, log=None):
    """Runs interleaved rounds.

    Args:
        plan: list of (participant, keys): which functions of which participant.
        repetitions: rounds kept; `warmup` more rounds run first and are dropped.

    Returns:
        {(participant name, key): [seconds per kept round]}.
    """
    times = {(participant.name, key): [] for participant, keys in plan for key in keys}
    total = warmup + repetitions
    started = time.perf_counter()
    for round_index in range(total):
        shift = round_index % len(plan)
        for participant, keys in plan[shift:] + plan[:shift]:
            inner = round_index % len(keys)
            measured = participant.run_round(keys[inner:] + keys[:inner])
            if round_index >= warmup:
                for key, seconds in measured.items():
                    times[(participant.name, key)].append(seconds)
        if log and (round_index + 1) % max(1, total // 4) == 0:
            log(f"  round {round_index + 1}/{total} ({time.perf_counter() - started:.0f} s)")
    return times


# -- Markdown and figures -----------------------------------------------------


def markdown_table(headers, rows, align=None):
    """A GitHub Markdown table; `align` is a string of 'l'/'r' per column."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(map(str, headers)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits=2, suffix=""):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def figure_dir(output_dir):
    path = Path(output_dir) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def grouped_bars(
    path,
    groups,
    series,
    values,
    title,
    ylabel,
    reference_lines=(),
    log_scale=False,
    subplot_titles=None,
    value_labels=True,
):
    """Grouped bar chart(s), one subplot per entry of `values`.

    Args:
        groups: x-axis group labels.
        series: bar labels within each group (the legend).
        values: list (one per subplot) of {series: [value per group or None]}.
        reference_lines: [(y, label)] drawn as dashed lines on every subplot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    count = len(values)
    fig, axes = plt.subplots(1, count, figsize=(6.5 * count, 4.2), squeeze=False)
    width = 0.8 / max(1, len(series))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (ax, panel) in enumerate(zip(axes[0], values)):
        for s, name in enumerate(series):
            heights = panel.get(name, [None] * len(groups))
            xs = [g + (s - (len(series) - 1) / 2) * width for g in range(len(groups))]
            present = [(x, h) for x, h in zip(xs, heights) if h is not None]
            if present:
                bars = ax.bar(
                    [x for x, _ in present],
                    [h for _, h in present],
                    width,
                    label=name,
                    color=colors[s % len(colors)],
                )
                if value_labels:
                    ax.bar_label(bars, fmt="%.3g", fontsize=6, padding=1)
        for (y, label), style in zip(reference_lines, ("-", "--", ":", "-.")):
            ax.axhline(y, color="black", linestyle=style, linewidth=0.9, label=label)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_ylabel(ylabel)
        if log_scale:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.set_ylim(bottom=0)
        if subplot_titles:
            ax.set_title(subplot_titles[index])
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 + 0.04 * ((len(labels) - 1) // 4), 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def method_settings(method, ensemble_size, **overrides):
    """`MethodSettings` for `method` with K members, whatever the method calls K.

    Methods that size their ensemble with their own field (Bella's
    `bella_num_particles`) get K there too, so every method is compared at
    the same K. Fields this version of MethodSettings lacks are left out.
    """
    import dataclasses

    from rank1_keras.methods.settings import MethodSettings

    fields = {field.name for field in dataclasses.fields(MethodSettings)}
    values = {"method": method, "ensemble_size": ensemble_size, "bella_num_particles": ensemble_size}
    values.update(overrides)
    return MethodSettings(**{k: v for k, v in values.items() if k in fields})


def last_line(text):
    """The last non-empty line of an error message or traceback."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def section_result(title, markdown, figures=(), data=None):
    """The dict every section's `run(quick, output_dir)` returns."""
    return {"title": title, "markdown": markdown, "figures": [str(f) for f in figures], "data": data or {}}


def timestamp():
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - datetime.UTC needs Python 3.11
    return now.strftime("%Y-%m-%d %H:%M UTC")


def log(message):
    print(message, file=sys.stderr, flush=True)
