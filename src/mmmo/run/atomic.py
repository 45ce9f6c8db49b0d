"""Files written whole or not at all: readers see the old content or the new, never a part (a full disk included)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a part.

    On any failure (a full disk included) the temporary file is removed and the old content stays.
    """

    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write_text` for bytes: fsync'd, then renamed onto `path`; the old content stays on failure."""
    atomic_write_bytes_via(path, lambda tmp: write_synced(tmp, data), suffix="")


def atomic_write_bytes_via(path: Path, writer: Any, *, suffix: str | None = None) -> None:
    """Call `writer(tmp_path)` and rename its output onto `path` (for files written by libraries).

    The temporary file keeps `path`'s suffix (default) so libraries pick the format from it; it is removed if
    the writer fails.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix if suffix is None else suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
