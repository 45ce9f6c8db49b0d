"""One writer per run folder: an exclusive, inter-process lock held while a command writes into the folder.

The lock is `fcntl.flock` on `mmmo.lock` in the run folder. The kernel drops it when the holding process ends,
however it ends (kill -9 included), so a lock is never stale; the file's content (who holds it, since when) is
only what a refused process reports. Read-only commands (`mmmo show`) take no lock. The lock file never moves:
`--fresh` moves the old run's other files aside under the lock and starts the new run under that same lock.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmmo.runtime.errors import MmmoError

LOCK_FILE = "mmmo.lock"
# flock errors that mean "this file system has no locks", not "someone holds it"
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the run folder is then unguarded
    fcntl = None  # type: ignore[assignment]


class RunFolderBusy(MmmoError):
    """Another process holds the run folder's lock."""


@dataclass
class LockHolder:
    """Who holds a run folder: what the holder wrote into the lock file when it took the lock."""

    pid: int
    host: str
    command: str
    since: float  # seconds since the epoch

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        host = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"process {self.pid}{host} ({self.command}, since {when})"


@dataclass
class _Held:
    fd: int
    depth: int


# Locks this process holds, by resolved folder: a nested take (resume -> search, search -> export) is re-entrant.
# flock itself is per open file, so a second open in the same process would otherwise refuse its own holder.
_held: dict[Path, _Held] = {}


def _read_holder(fd: int) -> LockHolder | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return LockHolder(int(data["pid"]), str(data["host"]), str(data["command"]), float(data["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # the holder is between taking the lock and writing its name


def _try_lock(fd: int, folder: Path) -> bool:
    """Take the lock without waiting: True when held, False when the file system has no locks (warned);
    RunFolderBusy when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        holder = _read_holder(fd)
        who = holder.describe() if holder else "another process"
        raise RunFolderBusy(
            f"{folder} is in use by {who}; one process writes a run at a time: wait for it to end or stop it "
            "(`mmmo show` reads the run meanwhile)"
        ) from None
    except OSError as err:
        if err.errno not in _NO_FLOCK:
            raise
    # Lustre without -o flock, some NFS/FUSE/SMB mounts: there is no lock to be had.
    warnings.warn(
        f"{folder}: this file system cannot lock files; make sure no other process writes this run", stacklevel=4
    )
    return False


@contextmanager
def run_lock(run_dir: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold the run folder's exclusive lock for the block; creates the folder. Yields the lock file's path.

    `command` names what holds it (e.g. "mmmo search"), for the message another process gets. Raises
    RunFolderBusy at once, without waiting, if another process holds it.
    """
    folder = Path(run_dir).expanduser().resolve()
    held = _held.get(folder)
    if held is not None or fcntl is None:
        if held is not None:
            held.depth += 1
        try:
            yield folder / LOCK_FILE
        finally:
            if held is not None:
                held.depth -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd, folder):
            yield path  # no locks on this file system: unguarded, as the warning said
            return
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        _held[folder] = _Held(fd, 1)
        try:
            yield path
        finally:
            del _held[folder]
            # Truncate before unlocking: the file is left for the next holder (removing it would let two processes
            # lock two different files under the same name), but without a name that is no longer true.
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

