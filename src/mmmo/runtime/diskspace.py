"""A full disk, said in one line: recognise it in any library's error, and check free space before big writes."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmmo.runtime.errors import MmmoError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Libraries that write from Rust (safetensors) raise their own exception type; only the text says what happened.
_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), f"os error {errno.ENOSPC}")


class DiskFull(MmmoError):
    """A write ran out of space (or quota); the message says what is kept and what to do."""


def is_disk_full(err: BaseException) -> bool:
    """True for an out-of-space (or out-of-quota) error, whichever library raised it (mmmo's own DiskFull too)."""
    if isinstance(err, DiskFull) or (isinstance(err, OSError) and err.errno in _FULL_ERRNOS):
        return True
    text = str(err)
    return any(t in text for t in _FULL_TEXTS)


@contextmanager
def disk_full_as_error(where: str | os.PathLike[str], consequence: str) -> Iterator[None]:
    """Turn an out-of-space error inside the block into one line: what was being written and `consequence`."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise DiskFull(f"no space left on the device of {where}; {consequence}") from err


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes free for this user on the file system that holds `folder` (or its nearest existing parent)."""
    p = Path(folder).expanduser().resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def human_bytes(n: float) -> str:
    """Bytes for people: 1.5 GB, 320 MB, 12 kB (powers of 1000, as disks are sold and `df -H` shows)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_free_space(folder: str | os.PathLike[str], needed: int, what: str, advice: str) -> None:
    """Refuse, in one line, to write `needed` bytes of `what` into `folder` when its file system has less free."""
    free = free_bytes(folder)
    if needed > free:
        raise DiskFull(
            f"not enough free space for {what} in {folder}: about {human_bytes(needed)} needed, "
            f"{human_bytes(free)} free; {advice}"
        )
