"""The journal's event kinds and what each carries, with the check every line passes where it is read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mmmo.run.documents import DocumentPlan
from mmmo.run.records import ScheduleStats, SourceScore, Trial


class EventKind(str, Enum):
    """Every kind of journal line. A line of another kind is an error naming it, never silently skipped."""

    PROPOSED = "proposed"  # a trial the strategy proposed, before it is evaluated
    # A trial scored on a stage of evaluation.stages short of the last: its outcomes so far. A resume continues it
    # from there (decides whether it goes on, then scores only the next stage's documents).
    PARTIAL = "partial"
    DONE = "done"  # a trial evaluated: its objectives
    FAILED = "failed"  # a trial that failed for good (merge or evaluation error, or its last attempt died)
    # A worker died under a trial; the trial stays pending and is retried (once) on another worker. Folded as an
    # attempt count on the pending trial, not as its result: a resume retries it, without a third attempt.
    ATTEMPT_FAILED = "attempt_failed"
    SOURCE = "source"  # a source model (base or fine-tuned) scored for reference
    REF_POINT = "ref_point"  # the hypervolume reference point, fixed after the initial design
    BATCH_END = "batch_end"  # a batch finished: the hypervolume at its end
    DOCUMENTS = "documents"  # the documents every candidate is scored on, per objective and task (once, first)


TRIAL_EVENTS = (EventKind.PROPOSED, EventKind.PARTIAL, EventKind.DONE, EventKind.FAILED)


class JournalLineError(ValueError):
    """One journal line that cannot be read: not JSON, not an object, an unknown event kind or a bad payload."""

    def __init__(self, message: str, *, not_json: bool = False):
        super().__init__(message)
        self.not_json = not_json  # what a write cut short by a kill looks like


# The fields each kind carries and their types, as the writer journals them. Checked strictly (no "1" for 1, no
# null for a list, no NaN, which the writer never writes), so that a damaged value is refused where its line is
# read, naming the line, not wherever the value would later be used.
_TRIAL = {"trial": TypeAdapter(Trial)}
PAYLOADS: dict[EventKind, dict[str, TypeAdapter[Any]]] = {
    **{kind: _TRIAL for kind in (*TRIAL_EVENTS, EventKind.ATTEMPT_FAILED)},
    EventKind.SOURCE: {"source": TypeAdapter(SourceScore)},
    EventKind.REF_POINT: {"ref_point": TypeAdapter(list[float])},
    EventKind.BATCH_END: {"batch": TypeAdapter(int), "hypervolume": TypeAdapter(float)},
    EventKind.DOCUMENTS: {"documents": TypeAdapter(DocumentPlan)},
}
# Fields a kind may carry, checked as strictly where present (a run written before them has none).
OPTIONAL_PAYLOADS: dict[EventKind, dict[str, TypeAdapter[Any]]] = {
    EventKind.BATCH_END: {"schedule": TypeAdapter(ScheduleStats)},
}


def check_payload(kind: EventKind, event: dict[str, Any], objectives: Sequence[str] = ()) -> None:
    """JournalLineError unless `event` has the fields of its kind, of their types, and a score for each of
    `objectives` (the run's) where it holds scores: a done or partial trial, a source that was scored."""
    optional = OPTIONAL_PAYLOADS.get(kind, {})
    for key, adapter in {**PAYLOADS[kind], **optional}.items():
        if key not in event:
            if key in optional:
                continue
            raise JournalLineError(f"is a {kind.value!r} event without {key!r}")
        try:
            adapter.validate_json(json.dumps(event[key], allow_nan=False), strict=True)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in (key, *first["loc"]))
            raise JournalLineError(f"is a {kind.value!r} event with a bad {where}: {first['msg']}") from None
        except ValueError:  # json.dumps refuses NaN and the infinities
            raise JournalLineError(f"is a {kind.value!r} event with a non-finite number in {key!r}") from None
    if kind in (EventKind.DONE, EventKind.PARTIAL):
        scores = event["trial"].get("objectives")
    else:
        scores = event["source"]["objectives"] if kind is EventKind.SOURCE else None
    missing = [name for name in objectives if scores is not None and name not in scores]
    if missing:
        raise JournalLineError(
            f"is a {kind.value!r} event without a score for objective {missing[0]!r} (the run scores "
            f"{', '.join(objectives)})"
        )
