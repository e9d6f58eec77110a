"""Epoch checkpoints that restore *every* variable, written atomically.

`tf.train.Checkpoint` does not track all of a Keras 3 model's state (the
random seed generators' states, for one), and a resumed run must continue the
same random stream to end on the same weights as an uninterrupted run. A
checkpoint here is one `.npz` file holding every model variable (seed states
included), every optimizer variable (step counter, slots) and a JSON header:

    <directory>/ckpt-<epoch:05d>.npz     written to a temporary file, then renamed
    <directory>/latest                   the newest file's name, replaced atomically

A run killed at any moment leaves the previous checkpoint and pointer intact.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

_LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, unreadable, or belongs to another model."""


def _variable_arrays(prefix, variables):
    return {f"{prefix}/{index}": np.asarray(variable.numpy()) for index, variable in enumerate(variables)}


def _describe(variables):
    return [[variable.path, list(variable.shape)] for variable in variables]


def umask_mode(full_mode):
    """`full_mode` (0o666 files, 0o777 directories) less the process's umask, as `open`/`mkdir` give.

    mkstemp/mkdtemp create private 0600/0700 entries; what we write follows the
    user's umask like files written by other tools.
    """
    mask = os.umask(0)
    os.umask(mask)
    return full_mode & ~mask


def write_atomically(path, write):
    """Calls `write(stream)` on a temporary file next to `path`, then renames it over `path`."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, umask_mode(0o666))
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_checkpoint(directory, epoch, model, optimizer, metadata=None, keep=2):
    """Saves `model` and `optimizer` after `epoch` (1-based); keeps the newest `keep` files.

    Returns:
        The checkpoint's path.
    """
    header = {
        "epoch": int(epoch),
        "model": _describe(model.variables),
        "optimizer": _describe(optimizer.variables),
        "metadata": metadata or {},
    }
    arrays = {**_variable_arrays("model", model.variables), **_variable_arrays("optimizer", optimizer.variables)}
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    name = f"ckpt-{int(epoch):05d}.npz"
    path = os.path.join(directory, name)
    write_atomically(path, lambda stream: np.savez(stream, **arrays))
    write_atomically(os.path.join(directory, _LATEST), lambda stream: stream.write(name.encode("utf-8")))
    existing = sorted(f for f in os.listdir(directory) if f.startswith("ckpt-") and f.endswith(".npz"))
    for old in existing[:-keep] if keep else []:
        if old != name:
            os.remove(os.path.join(directory, old))
    return path


def latest_checkpoint(directory):
    """The newest checkpoint's path in `directory`, or None when there is none."""
    pointer = os.path.join(directory, _LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer, encoding="utf-8") as stream:
        name = stream.read().strip()
    path = os.path.join(directory, name)
    if not name or not os.path.exists(path):
        raise CheckpointError(
            f"checkpoint pointer {pointer} names {name!r}, which is missing; the checkpoint directory was "
            "changed by hand. Remove the directory (or the pointer) to start over."
        )
    return path


def read_header(path):
    """The JSON header of a checkpoint file (epoch, variable list, metadata)."""
    return _load(path)[0]


def _load(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(bytes(arrays.pop("header")).decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}); delete it to "
            "resume from the one before, or choose a fresh --output_dir."
        ) from error
    return header, arrays


def _assign(prefix, variables, described, arrays, path):
    if len(described) != len(variables):
        raise CheckpointError(
            f"checkpoint {path} holds {len(described)} {prefix} variables; this run's {prefix} has "
            f"{len(variables)}: it was written by a different model or method. Use another --output_dir."
        )
    for index, (variable, (saved_path, saved_shape)) in enumerate(zip(variables, described)):
        if list(variable.shape) != saved_shape:
            raise CheckpointError(
                f"checkpoint {path}: {prefix} variable {index} ({saved_path}) has shape {saved_shape}; this "
                f"run's {variable.path} has {list(variable.shape)}. Use another --output_dir."
            )
        variable.assign(arrays[f"{prefix}/{index}"])


def restore_model_weights(path, model):
    """Restores only `model`'s variables (e.g. to export a trained model); returns the header."""
    header, arrays = _load(path)
    _assign("model", model.variables, header["model"], arrays, path)
    return header


def restore_checkpoint(path, model, optimizer):
    """Restores `model` and `optimizer` (the optimizer must be built) and returns the header."""
    header, arrays = _load(path)
    _assign("model", model.variables, header["model"], arrays, path)
    _assign("optimizer", optimizer.variables, header["optimizer"], arrays, path)
    return header
