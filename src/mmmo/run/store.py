"""The run folder: an append-only, fsync'd journal of trial events, the spec as run, and atomic summary files."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mmmo.run.atomic import atomic_write_bytes, atomic_write_text
from mmmo.run.documents import DocumentPlan, plan_from_json
from mmmo.run.events import TRIAL_EVENTS, EventKind, JournalLineError, check_payload
from mmmo.run.lock import LOCK_FILE
from mmmo.run.records import ScheduleStats, SourceScore, Trial
from mmmo.runtime.errors import MmmoError, one_line
from mmmo.spec.resume import NOT_RESUMABLE, RESUMABLE_CHANGES, changed_fields, with_fields_added_later
from mmmo.spec.schema import SearchSpec, spec_from_dict, spec_to_dict

JOURNAL = "trials.jsonl"
SPEC_FILE = "spec.yaml"

class TornJournalWarning(UserWarning):
    """The journal's last line was cut short (the process was killed while writing it)."""


@dataclass
class RunState:
    """Everything the journal says about a run, folded from its events."""

    trials: list[Trial]
    sources: list[SourceScore]
    ref_point: list[float] | None
    hypervolumes: dict[int, float]  # batch -> hypervolume at its end
    documents: DocumentPlan | None = None  # None: not recorded yet (or a run written before it was)
    # The asynchronous schedule's use of its evaluators: the last record of each session (search or resume).
    schedule: dict[float, ScheduleStats] = field(default_factory=dict)


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

    def append(self, event: EventKind | str, **payload: Any) -> None:
        kind = EventKind(event)  # writing a kind the reader would refuse is a bug here, not in the journal
        record = {"event": kind.value, "time": time.time(), **payload}
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
        self.append(EventKind(trial.status), trial=trial.to_json())


def parse_event(raw: bytes, objectives: Sequence[str] = ()) -> dict[str, Any]:
    """One journal line as an event dict whose payload has what its kind needs (`journal_events.check_payload`,
    with a score for each of the run's `objectives`); JournalLineError otherwise."""
    try:
        event = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise JournalLineError("is not valid JSON", not_json=True) from None
    if not isinstance(event, dict):
        raise JournalLineError("is not a JSON object")
    try:
        kind = EventKind(event.get("event"))
    except ValueError:
        known = ", ".join(k.value for k in EventKind)
        raise JournalLineError(
            f"has an unknown event kind {event.get('event')!r} (this mmmo knows {known}; "
            "was the run written by a newer mmmo?)"
        ) from None
    check_payload(kind, event, objectives)
    try:
        _fold_one(kind, event, {}, {}, RunState([], [], None, {}))
    except (KeyError, TypeError, ValueError) as err:
        raise JournalLineError(f"is a {kind.value!r} event with a bad payload ({type(err).__name__}: {err})") from None
    return event


def _is_blank_after(lines: list[bytes], i: int) -> bool:
    return all(not rest.strip() for rest in lines[i + 1 :])


def read_events(path: Path, objectives: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Parse the journal; a torn last line is skipped with a warning, an unreadable earlier line is an error.

    `objectives`: the run's objective names, each of which a done or partial trial and a scored source must have.
    """
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    events: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            events.append(parse_event(raw, objectives))
        except JournalLineError as err:
            if err.not_json and _is_blank_after(lines, i):
                warnings.warn(
                    f"{path}: ignoring a torn last line (the run was killed while writing it)",
                    TornJournalWarning,
                    stacklevel=2,
                )
                continue
            raise MmmoError(one_line(  # a key quoted from the line may hold a line break
                f"{path}: line {i + 1} {err}; the journal is damaged: `mmmo resume {path.parent} --repair` "
                "moves unreadable lines aside and re-runs their trials", limit=1000,
            )) from None
    return events


@dataclass
class RepairReport:
    """What `repair_journal` did: how many lines it moved aside, and where to."""

    moved: int
    kept: int
    side_file: Path | None  # None when nothing was moved


def repair_journal(path: Path, objectives: Sequence[str] | None = None) -> RepairReport:
    """Move every unreadable line of the journal to a side file and keep the rest, in order.

    Unreadable as `read_events` reads it: `objectives` None takes the objectives of the spec beside the journal.

    The side file (`trials.damaged-<time>.jsonl` next to the journal) gets the lines as they were, so nothing is
    lost; the journal is rewritten atomically. Trials whose result was on a moved line fold as pending (or are
    missing) and are evaluated again by the resumed search.
    """
    if not path.exists():
        return RepairReport(0, 0, None)
    if objectives is None:
        objectives = RunStore(path.parent).objective_names()
    lines = [ln for ln in path.read_bytes().split(b"\n") if ln.strip()]
    good: list[bytes] = []
    bad: list[bytes] = []
    for raw in lines:
        try:
            parse_event(raw, objectives)
            good.append(raw)
        except JournalLineError:
            bad.append(raw)
    if not bad:
        return RepairReport(0, len(good), None)
    side = path.with_name(f"{path.stem}.damaged-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    # The side file first, fsync'd: a crash between the two writes leaves the lines in both places, never in none.
    atomic_write_bytes(side, b"".join(ln + b"\n" for ln in bad))
    atomic_write_bytes(path, b"".join(ln + b"\n" for ln in good))
    return RepairReport(len(bad), len(good), side)


def _fold_one(
    kind: EventKind, ev: dict[str, Any], trials: dict[int, Trial], sources: dict[str, SourceScore], state: RunState
) -> None:
    """Apply one event to the folded state (`state` carries the ref point and hypervolumes)."""
    if kind in TRIAL_EVENTS:
        t = Trial.from_json(ev["trial"])
        if t.status != kind.value:
            raise ValueError(f"trial status {t.status!r} in a {kind.value!r} event")
        trials[t.id] = t
    elif kind is EventKind.ATTEMPT_FAILED:
        attempt = Trial.from_json(ev["trial"])
        pending = trials.get(attempt.id)
        if pending is None or pending.status in (EventKind.PROPOSED.value, EventKind.PARTIAL.value):
            # Still pending: keep the attempt count so a resume does not retry it more often than the pool would
            # (and a partly scored trial keeps its stages).
            status = pending.status if pending is not None else EventKind.PROPOSED.value
            trials[attempt.id] = replace(pending or attempt, status=status, attempts=attempt.attempts, error=None)
    elif kind is EventKind.SOURCE:
        s = ev["source"]
        sources[s["name"]] = SourceScore.from_json(s)
    elif kind is EventKind.REF_POINT:
        state.ref_point = [float(v) for v in ev["ref_point"]]
    elif kind is EventKind.BATCH_END:
        state.hypervolumes[int(ev["batch"])] = float(ev["hypervolume"])
        if "schedule" in ev:  # checked where read (run.events.OPTIONAL_PAYLOADS)
            use = ScheduleStats(**ev["schedule"])
            state.schedule[use.session] = use
    elif kind is EventKind.DOCUMENTS:
        state.documents = plan_from_json(ev["documents"])


def fold_events(events: list[dict[str, Any]]) -> RunState:
    """Replay journal events: the last event about a trial id wins; an unknown event kind is an error."""
    trials: dict[int, Trial] = {}
    sources: dict[str, SourceScore] = {}
    acc = RunState([], [], None, {})
    for ev in events:
        try:
            kind = EventKind(ev.get("event"))
        except ValueError:
            raise MmmoError(f"unknown journal event kind {ev.get('event')!r}") from None
        _fold_one(kind, ev, trials, sources, acc)
    return RunState(
        trials=[trials[i] for i in sorted(trials)],
        sources=list(sources.values()),
        ref_point=acc.ref_point,
        hypervolumes=acc.hypervolumes,
        documents=acc.documents,
        schedule=acc.schedule,
    )


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
        try:
            data = yaml.safe_load(self.spec_path.read_bytes())
        except (yaml.YAMLError, RecursionError) as err:
            raise MmmoError(one_line(f"{self.spec_path}: malformed YAML ({type(err).__name__})")) from None
        if not isinstance(data, dict):
            raise MmmoError(f"{self.spec_path}: not a spec (a YAML mapping expected)")
        try:
            return spec_from_dict(with_fields_added_later(data)[0], self.dir, check_paths=False, earlier=True)
        except MmmoError as err:
            raise type(err)(f"{self.spec_path}: {err}") from None

    def objective_names(self) -> list[str]:
        """The stored spec's objective names; none when the folder has no spec (yet)."""
        return [o.name for o in self.stored_spec().objectives] if self.spec_path.exists() else []

    def move_aside(self) -> Path:
        """Move the run's files into a new `<name>.bak-<time>[-n]` folder beside it (for --fresh); returns that.

        The folder and its lock file stay: the lock held on that file keeps the folder its holder's from the move
        to the end of the new run, where renaming the folder would carry the lock off with it.
        """
        stamp = f"{self.dir.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        for n in itertools.count(1):
            backup = self.dir.with_name(stamp if n == 1 else f"{stamp}-{n}")
            try:
                backup.mkdir()
                break
            except FileExistsError:  # a second --fresh within the same second
                continue
        # The journal first: a move cut short never leaves a journal behind to be continued under another spec.
        for entry in sorted(self.dir.iterdir(), key=lambda p: p.name != JOURNAL):
            if entry.name != LOCK_FILE:
                shutil.move(str(entry), str(backup / entry.name))
        return backup

    def open(self, spec: SearchSpec, *, fresh: bool = False) -> Journal:
        """Start a run folder or continue one; a changed spec is refused, naming the changed fields.

        The spec is compared without output.dir: the run is wherever its folder now is (moved or copied).
        """
        if fresh and self.exists:
            self.move_aside()
        self.dir.mkdir(parents=True, exist_ok=True)
        new = spec_to_dict(spec)
        if self.spec_path.exists():
            old, filled = with_fields_added_later(yaml.safe_load(self.spec_path.read_text()))
            changed = [
                f for f in changed_fields(old, new)
                if not f.startswith(RESUMABLE_CHANGES) or f.startswith(NOT_RESUMABLE)
            ]
            if changed:
                # A changed default reads as a changed spec too (a run started under an older mmmo): say how to
                # go on as it started.
                newer = [f for f in changed if f in filled]
                why = f"it was started before {', '.join(newer)} existed: " if newer else ""
                raise MmmoError(
                    f"{self.dir} holds a run with a different spec (changed: {', '.join(changed)}); "
                    f"use --fresh to start over or another output.dir; {why}`mmmo resume {self.dir}` continues it "
                    "as it started"
                )
        atomic_write_text(self.spec_path, yaml.safe_dump(new, sort_keys=False))
        return Journal(self.journal_path)

    def load(self) -> RunState:
        return fold_events(read_events(self.journal_path, self.objective_names()))

    def read_run(self) -> tuple[SearchSpec, RunState]:
        """The stored spec and the journal's state of a run that has started; MmmoError otherwise."""
        spec = self.stored_spec()
        if not self.journal_path.exists():
            raise MmmoError(f"{self.dir}: no {JOURNAL}; nothing has run yet")
        return spec, self.load()
