"""One writer per directory: an OS file lock held for a run's (or an export's) lifetime.

    with DirectoryLock(output_dir, purpose="training run"):
        ...   # no other DirectoryLock holder reads or writes output_dir meanwhile

The lock is `flock(2)` on `<directory>/.rank1_keras.lock`, taken without
waiting (`wait=True` waits instead, saying for whom). The kernel drops it when
the holding process ends, however it ends (kill -9 included), so a stale lock
never blocks a later run. The file records the holder (pid, host, start time,
command) for the error a second process gets; the holder removes it when it
releases the lock, and a killed holder's file is simply reused.

Network file systems: Linux clients emulate `flock` on NFS with whole-file
POSIX locks that the server arbitrates, so runs on different machines sharing
an NFS directory exclude each other (NFSv4, or NFSv3 with lockd; a `nolock`
mount keeps locks local to each machine). FUSE mounts without lock support
(gcsfuse, s3fs) lock per machine only. A file system that refuses locks
altogether (ENOLCK, EOPNOTSUPP) is a `DirectoryLockError` naming the directory.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

LOCK_NAME = ".rank1_keras.lock"
# errno values of a file system that cannot lock at all.
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# errno values of a directory we may read but not write (a read-only copy of a run).
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class DirectoryLockError(RuntimeError):
    """A directory cannot be locked."""


class DirectoryInUseError(DirectoryLockError):
    """Another process holds the directory's lock."""


def _describe_holder(stream_fd):
    """'a training run: pid 12 on host h, started <time> (<command>)' from a held lock file, as far as it says."""
    try:
        holder = json.loads(os.pread(stream_fd, 8192, 0).decode("utf-8"))
        article = "an" if str(holder["purpose"])[:1] in "aeiou" else "a"
        return (f"{article} {holder['purpose']}: pid {holder['pid']} on host {holder['host']}, started {holder['started']} "
                f"({holder['command']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its details yet (it is starting)"


class DirectoryLock:
    """Holds `directory`'s lock from `acquire` (or `with`) to `release`.

    Args:
        directory: the directory to lock; created when missing (`create`),
            and removed again at release when this lock created it and it is
            still empty (a run refused before writing anything leaves no trace).
        purpose: what the holder does ("training run", "export"), for the
            error a second process gets.
        argument: how the user named the directory ("--output_dir"), for the
            error message.
        wait: wait for the holder to finish instead of failing (saying whom
            it waits for on stderr).
        name: the lock file's name (two kinds of lock may share a directory).
        create: create a missing directory; False: a missing one is an error.
        read_only_ok: a reader of a directory it cannot write (a read-only
            copy of a run) proceeds without the lock when no lock file exists
            (no writer can be at work there), or locks the existing file.

    Raises (from `acquire`):
        DirectoryInUseError: another process holds the lock (`wait=False`).
        DirectoryLockError: the file system refuses locks.
        OSError: the directory or its lock file cannot be created.
    """

    def __init__(self, directory, purpose, argument="--output_dir", wait=False, name=LOCK_NAME, create=True,
                 read_only_ok=False):
        self.directory = directory
        self.purpose = purpose
        self.argument = argument
        self.wait = wait
        self.path = os.path.join(directory, name)
        self.create = create
        self.read_only_ok = read_only_ok
        self._fd = None
        self._created_directory = False
        self._owns_file = False
        self.held = False

    def _open(self):
        """A descriptor of the lock file, or None for a read-only directory with no lock file."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), True
        except OSError as error:
            if not (self.read_only_ok and error.errno in _READ_ONLY):
                raise
        try:
            return os.open(self.path, os.O_RDONLY), False
        except FileNotFoundError:
            return None, False

    def _lock(self, fd):
        """Locks `fd`; raises DirectoryInUseError (or waits) when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _describe_holder(fd)
            if not self.wait:
                raise DirectoryInUseError(
                    f"{self.argument}={self.directory} is in use by {holder}, which holds {self.path}. "
                    f"One process at a time per directory: wait for it to finish, or choose another "
                    f"{self.argument}."
                ) from None
            print(f"waiting for {self.path}: held by {holder}", file=sys.stderr, flush=True)
        except OSError as error:
            if error.errno in _NO_LOCKING:
                raise DirectoryLockError(
                    f"cannot lock {self.path}: the file system refuses file locks ({os.strerror(error.errno)}); "
                    f"choose an {self.argument} on a local disk or a file system with locking."
                ) from error
            raise
        fcntl.flock(fd, fcntl.LOCK_EX)

    def acquire(self):
        if self.held:
            raise DirectoryLockError(f"{self.path} is already held by this DirectoryLock.")
        if not os.path.isdir(self.directory):
            if os.path.exists(self.directory):
                raise ValueError(f"{self.argument}={self.directory} is a file, not a directory; choose a directory.")
            if not self.create:
                raise FileNotFoundError(errno.ENOENT, "no such directory", self.directory)
            os.makedirs(self.directory)
            self._created_directory = True
        while True:
            fd, writable = self._open()
            if fd is None:  # a read-only directory without a lock file: nobody can be writing there
                break
            try:
                self._lock(fd)
                # The holder we waited for (or raced) may have removed the file it locked;
                # a lock on a removed file locks nothing: open the current one again.
                try:
                    current = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                break
            os.close(fd)
        self._fd, self._owns_file, self.held = fd, fd is not None and writable, True
        if self._owns_file:
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "purpose": self.purpose,
                "command": " ".join(sys.argv)[:500],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        return self

    def release(self):
        if not self.held:
            return
        self.held = False
        if self._fd is not None:
            # Removed while still locked: a process waiting on this file then sees it is gone and retries.
            if self._owns_file:
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
            os.close(self._fd)
            self._fd = None
        if self._created_directory:
            try:
                os.rmdir(self.directory)  # only when empty: nothing was written
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
