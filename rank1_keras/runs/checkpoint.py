"""Epoch checkpoints that restore *every* variable, written atomically.

`tf.train.Checkpoint` does not track all of a Keras 3 model's state (the
random seed generators' states, for one), and a resumed run must continue the
same random stream to end on the same weights as an uninterrupted run. A
checkpoint here is one `.npz` file holding every model variable (seed states
included), every optimizer variable (step counter, slots) and a JSON header:

    <directory>/ckpt-<epoch:05d>.npz     written to a temporary file, then renamed
    <directory>/latest                   the newest file's name, replaced atomically

A run killed at any moment leaves the previous checkpoint intact. Because a
`ckpt-*.npz` only ever appears complete (the rename is atomic), resuming reads
the files themselves, newest first, and treats `latest` as a hint for other
tools: a kill between the rename and the pointer's update, a pointer edited by
hand, or a checkpoint damaged later (a truncated copy, a full disk elsewhere)
all resume from the newest checkpoint that reads back whole
(`find_resume_checkpoint`), which says what it skipped.
"""

import dataclasses
import json
import os
import re
import sys
import tempfile
import zipfile

import numpy as np

_LATEST = "latest"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.npz$")
# An unreadable checkpoint is renamed with this suffix (`<name>.unreadable`, then
# `<name>.2.unreadable`, ... when that name is taken), never deleted or overwritten.
UNREADABLE_SUFFIX = ".unreadable"


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
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    except OSError as error:  # name the file being written, not a temporary name that never existed
        raise OSError(error.errno, error.strerror, path) from error
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, umask_mode(0o666))
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(error, OSError) and error.filename is None:
            # A failed write() (full disk, size limit) names no file: name the one being written.
            raise OSError(error.errno, error.strerror, path) from error
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
    for old in checkpoint_files(directory)[keep:] if keep else []:
        if old != path:
            os.remove(old)
    return path


def checkpoint_files(directory):
    """The `ckpt-<epoch>.npz` paths in `directory`, newest epoch first ([] when there is none)."""
    if not os.path.isdir(directory):
        return []
    epochs = {}
    for name in os.listdir(directory):
        match = _CHECKPOINT_NAME.match(name)
        if match:
            epochs[int(match.group(1))] = os.path.join(directory, name)
    return [epochs[epoch] for epoch in sorted(epochs, reverse=True)]


@dataclasses.dataclass
class ResumePoint:
    """What `find_resume_checkpoint` chose.

    Attributes:
        path: the newest checkpoint that reads back whole (None: start afresh).
        header: the chosen checkpoint's JSON header (epoch, variables,
            metadata), from the read that checked it (None with no path).
        skipped: (path, reason) of newer checkpoints that did not read back.
        notes: one line per thing a user should know (skipped files, a stale
            or unreadable pointer).
    """

    path: str = None
    header: dict = None
    skipped: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)


def _pointer_name(directory):
    """The name `latest` holds, or a note on why it holds none."""
    pointer = os.path.join(directory, _LATEST)
    if not os.path.exists(pointer):
        return None, None
    try:
        with open(pointer, "rb") as stream:
            name = stream.read(1024).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"ignored the checkpoint pointer {pointer}: not a checkpoint name ({type(error).__name__})"
    return name, None


def find_resume_checkpoint(directory, set_aside_unreadable=False):
    """The newest checkpoint in `directory` that reads back whole, and what was passed over.

    Args:
        directory: a checkpoint directory (it may not exist).
        set_aside_unreadable: rename checkpoints that do not read back to
            `<name>.unreadable` (what a resuming run does, so that its next
            save cannot overwrite them and a later resume does not retry them);
            False only reads (an export).

    Returns:
        A `ResumePoint`.
    """
    point = ResumePoint()
    name, note = _pointer_name(directory)
    if note:
        point.notes.append(note)
    for path in checkpoint_files(directory):
        try:
            header, _ = _load(path)
        except CheckpointError as error:
            cause = error.__cause__ or error
            reason = f"{type(cause).__name__}: {cause}"
            point.skipped.append((path, reason))
            moved = ""
            if set_aside_unreadable:
                moved = f"; kept as {set_aside(path)}"
            point.notes.append(f"skipped checkpoint {path}: it does not read back ({reason}){moved}")
            continue
        point.path, point.header = path, header
        break
    if point.path and name and name != os.path.basename(point.path) and not point.skipped:
        pointer = os.path.join(directory, _LATEST)
        named = _CHECKPOINT_NAME.match(name)
        if named and int(named.group(1)) < point.header["epoch"]:
            # A kill between a checkpoint's rename and the pointer's update: the file is complete.
            point.notes.append(f"the pointer {pointer} names {name!r}; {point.path} is newer and complete")
        else:
            point.notes.append(
                f"the pointer {pointer} names {name!r}, which is not in {directory}; {point.path} is the newest "
                "checkpoint there"
            )
    return point


def set_aside(path):
    """Renames an unreadable checkpoint to a name no file has (`<path>.unreadable`, `<path>.2.unreadable`, ...).

    Never overwrites: `os.link` fails when the name is taken (checked by the
    file system itself); where hard links are not supported, the name is
    checked first (the caller holds the directory's lock). Returns the new path.
    """
    attempt = 1
    while True:
        target = path + (UNREADABLE_SUFFIX if attempt == 1 else f".{attempt}{UNREADABLE_SUFFIX}")
        attempt += 1
        try:
            os.link(path, target)
        except FileExistsError:
            continue
        except OSError:  # no hard links here (FAT, some FUSE mounts)
            if os.path.lexists(target):
                continue
            os.rename(path, target)
            return target
        os.remove(path)
        return target


def latest_checkpoint(directory):
    """The newest checkpoint in `directory` that reads back whole, or None when there is none.

    Newer checkpoints that do not read back are passed over (see
    `find_resume_checkpoint` for which, and why).
    """
    return find_resume_checkpoint(directory).path


def remove_interrupted_writes(directory):
    """Deletes `.tmp-*` files a killed write left behind; returns their paths.

    They are never a checkpoint: `write_atomically` renames a file only once
    it is complete. Only the holder of `directory`'s lock may call this
    (`rank1_keras.runs.directory_lock`): another live process's `.tmp-*`
    file is one it is still writing.
    """
    if not os.path.isdir(directory):
        return []
    leftovers = sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.startswith(".tmp-"))
    for path in leftovers:
        os.remove(path)
        print(f"warning: removed {path}, the leftover of an interrupted write", file=sys.stderr, flush=True)
    return leftovers


def read_header(path):
    """The JSON header of a checkpoint file (epoch, variable list, metadata)."""
    return _load(path)[0]


def _load(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(bytes(arrays.pop("header")).decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}).") from error
    return header, arrays


def _assign(prefix, variables, described, arrays, path):
    if len(described) != len(variables):
        raise CheckpointError(
            f"checkpoint {path} holds {len(described)} {prefix} variables; this run's {prefix} has "
            f"{len(variables)}: it was written by a different model or method."
        )
    for index, (variable, (saved_path, saved_shape)) in enumerate(zip(variables, described)):
        if list(variable.shape) != saved_shape:
            raise CheckpointError(
                f"checkpoint {path}: {prefix} variable {index} ({saved_path}) has shape {saved_shape}; this "
                f"run's {variable.path} has {list(variable.shape)}: it was written by a different model or method."
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
