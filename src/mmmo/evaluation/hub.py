"""Hugging Face hub models as local folders. A download, when one is needed, is announced on stderr as it
starts (files and size to fetch) and ends (size on disk, time taken), even with --quiet: a 15 GB download is
then not taken for a hang."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mmmo.runtime.errors import MmmoError, one_line
from mmmo.runtime.progress_lines import duration, log_line

# What a merge needs of a hub repo: weights, config and tokenizer (no optimizer states, no other formats).
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py")


@dataclass(frozen=True)
class PendingDownload:
    """The files of a hub model that are not in the local cache yet."""

    files: int
    size: int | None  # bytes, as the hub lists them; None when it did not give every file's size


def size_text(n_bytes: float) -> str:
    """Bytes in decimal units, as the hub shows them: `512 B`, `3.4 MB`, `15.2 GB`."""
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"


def folder_size(folder: str | Path) -> int:
    """Bytes of every file under `folder`, links followed (a hub snapshot links to the cache's blobs)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def pending_download(ref: str, patterns: tuple[str, ...] = MODEL_FILES) -> PendingDownload | None:
    """What fetching hub model `ref` would download: its files matching `patterns` not in the local cache.

    None when nothing is missing, or when the hub cannot be asked (offline, unknown or gated repo: the
    download itself then says why, or uses the cache).
    """
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = HfApi().model_info(ref, files_metadata=True)
    except Exception:  # noqa: BLE001 - any reason the hub cannot be asked is for snapshot_download to report
        return None
    siblings = info.siblings or []
    wanted = filter_repo_objects(siblings, allow_patterns=list(patterns), key=lambda s: s.rfilename)

    def cached(filename: str) -> bool:  # a cached file's path is a str; else None or a "known missing" marker
        return isinstance(try_to_load_from_cache(ref, filename, revision=info.sha), str)

    missing = [s for s in wanted if not cached(s.rfilename)]
    if not missing:
        return None
    sizes = [s.size for s in missing]
    return PendingDownload(len(missing), None if None in sizes else sum(s for s in sizes if s is not None))


def hub_model_folder(ref: str) -> str:
    """The local snapshot of hub model `ref` (weights, config, tokenizer only), downloaded when not cached."""
    from huggingface_hub import snapshot_download

    try:
        pending = pending_download(ref)
        if pending is None:
            return snapshot_download(ref, allow_patterns=list(MODEL_FILES))
        size = "" if pending.size is None else f", {size_text(pending.size)}"
        log_line(f"downloading {ref} from the hub: {pending.files} file(s){size}")
        started = time.time()
        folder = snapshot_download(ref, allow_patterns=list(MODEL_FILES))
        seconds = time.time() - started
        log_line(f"downloaded {ref}: {size_text(folder_size(folder))} on disk in {duration(seconds)}")
        return folder
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated: all one line for the user
        raise MmmoError(f"cannot fetch hub model {ref!r}: {one_line(err)}") from None
