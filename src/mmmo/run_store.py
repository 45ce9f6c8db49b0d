"""The run folder: an append-only, fsync'd journal of trial events, the spec as run, and atomic summary files."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmmo.config import SearchSpec, spec_from_dict, spec_to_dict
from mmmo.errors import MmmoError
from mmmo.trial import Trial

JOURNAL = "trials.jsonl"
SPEC_FILE = "spec.yaml"

# Fields a resumed run may change: where and how fast it evaluates, what it exports, and how long it runs.
# Changes that leave every evaluated merge the same (merge.fused gives the same tensors bit for bit).
RESUMABLE_CHANGES: tuple[str, ...] = ("evaluation.", "output.export", "optimizer.batches", "merge.fused")


class TornJournalWarning(UserWarning):
    """The journal's last line was cut short (the process was killed while writing it)."""


@dataclass
class SourceScore:
    """A source model (the base or one fine-tuned model) scored on the run's objectives."""

    name: str
    objectives: dict[str, float] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunState:
    """Everything the journal says about a run, folded from its events."""

    trials: list[Trial]
    sources: list[SourceScore]
    ref_point: list[float] | None
    hypervolumes: dict[int, float]  # batch -> hypervolume at its end


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_bytes_via(path: Path, writer: Any) -> None:
    """Call `writer(tmp_path)` and rename its output onto `path` (for files written by libraries)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    writer(tmp)
    os.replace(tmp, path)


class Journal:
    """Append-only JSON-lines event log; every line is written whole and fsync'd before returning."""

    def __init__(self, path: Path):
        self.path = path
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        # A kill mid-write leaves a last line without its newline; appending after it would glue two events
        # into one unreadable line, so the fragment is cut off before the first new write.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            warnings.warn(
                f"{self.path}: dropping a torn last line (the run was killed while writing it)",
                TornJournalWarning,
                stacklevel=3,
            )
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, event: str, **payload: Any) -> None:
        record = {"event": event, "time": time.time(), **payload}
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # One write call per line: with O_APPEND the line lands whole or (if killed) as a torn tail.
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)

    def record_trial(self, trial: Trial) -> None:
        self.append(trial.status, trial=trial.to_json())


def read_events(path: Path) -> list[dict[str, Any]]:
    """Parse the journal; a torn last line is skipped with a warning, a corrupt earlier line is an error."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    events: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            is_last = all(not rest.strip() for rest in lines[i + 1 :])
            if is_last:
                warnings.warn(
                    f"{path}: ignoring a torn last line (the run was killed while writing it)",
                    TornJournalWarning,
                    stacklevel=2,
                )
                continue
            raise MmmoError(f"{path}: line {i + 1} is not valid JSON; the journal is corrupt") from None
    return events


def fold_events(events: list[dict[str, Any]]) -> RunState:
    """Replay journal events: the last event about a trial id wins."""
    trials: dict[int, Trial] = {}
    sources: dict[str, SourceScore] = {}
    ref_point: list[float] | None = None
    hypervolumes: dict[int, float] = {}
    for ev in events:
        kind = ev.get("event")
        if kind in ("proposed", "done", "failed"):
            t = Trial.from_json(ev["trial"])
            trials[t.id] = t
        elif kind == "source":
            s = ev["source"]
            sources[s["name"]] = SourceScore(**s)
        elif kind == "ref_point":
            ref_point = list(ev["ref_point"])
        elif kind == "batch_end":
            hypervolumes[int(ev["batch"])] = float(ev["hypervolume"])
    return RunState(
        trials=[trials[i] for i in sorted(trials)],
        sources=list(sources.values()),
        ref_point=ref_point,
        hypervolumes=hypervolumes,
    )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two spec dicts."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class RunStore:
    """A run folder: spec.yaml, trials.jsonl and the summary files written from them."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.journal_path = self.dir / JOURNAL
        self.spec_path = self.dir / SPEC_FILE

    @property
    def exists(self) -> bool:
        return self.journal_path.exists() or self.spec_path.exists()

    def stored_spec(self) -> SearchSpec:
        if not self.spec_path.exists():
            raise MmmoError(f"{self.dir} is not an mmmo run folder (no {SPEC_FILE})")
        data = yaml.safe_load(self.spec_path.read_text())
        return spec_from_dict(data, self.dir, check_paths=False)

    def open(self, spec: SearchSpec, *, fresh: bool = False) -> Journal:
        """Start a run folder or continue one; a changed spec is refused, naming the changed fields."""
        if fresh and self.exists:
            backup = self.dir.with_name(f"{self.dir.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(str(self.dir), str(backup))
        self.dir.mkdir(parents=True, exist_ok=True)
        new = spec_to_dict(spec)
        if self.spec_path.exists():
            old = yaml.safe_load(self.spec_path.read_text())
            changed = [f for f in changed_fields(old, new) if not f.startswith(RESUMABLE_CHANGES)]
            if changed:
                raise MmmoError(
                    f"{self.dir} holds a run with a different spec (changed: {', '.join(changed)}); "
                    "use --fresh to start over or another output.dir"
                )
        atomic_write_text(self.spec_path, yaml.safe_dump(new, sort_keys=False))
        return Journal(self.journal_path)

    def load(self) -> RunState:
        return fold_events(read_events(self.journal_path))
