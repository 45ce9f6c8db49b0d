"""Which documents a run scores, in which order, and the per-document outcomes it keeps (no torch, no lm-eval).

Every candidate, source model, resumed run and export re-score of a run is scored on the same documents: per
leaf lm-eval task, a fixed list of document ids (indices into the task's evaluation split), chosen once from the
spec and recorded in the run. `random` orders a split by a seeded hash of each index (stable across Python, numpy
and machines, and nested: the first 50 of a seed's order are the first 50 of its first 100) and keeps the first
`limit`; `first` keeps the split's first `limit` documents, as lm-eval's own `--limit` does.
Stages score a prefix of that list: stage k is the first `ceil(fraction_k * n)` documents.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mmmo.runtime.errors import MmmoError

SubsetKind = Literal["random", "first"]

# Per-document values as a run stores them: "0110..." when every value is 0 or 1, else the values themselves.
EncodedOutcomes = str | list[float]


def document_order(n_docs: int, task: str, seed: int, kind: SubsetKind) -> list[int]:
    """Every index of a split of `n_docs` documents, in the order a run takes them."""
    if kind == "first":
        return list(range(n_docs))
    return sorted(range(n_docs), key=lambda i: hashlib.sha256(f"{seed}:{task}:{i}".encode()).digest())


def document_limit(limit: int | float | None, objective: str) -> int | float | None:
    """An objective's `limit` as documents are chosen by it: a count >= 1, a fraction in (0, 1), or None for every
    document (a fraction of 1.0 included, so `limit: 1.0` and no limit are the same documents); MmmoError else."""
    if limit is None:
        return None
    if isinstance(limit, float):
        if 0.0 < limit < 1.0:
            return limit
        if limit == 1.0:
            return None
        if limit > 1.0 and limit.is_integer():
            return int(limit)
    elif limit >= 1:
        return int(limit)
    raise MmmoError(f"objective {objective!r}: limit must be a count >= 1 or a fraction in (0, 1], got {limit!r}")


def subset_size(n_docs: int, limit: int | float | None) -> int:
    """How many documents a limit keeps: a count, a fraction in (0, 1] (rounded up, as lm-eval does), or all."""
    if limit is None:
        return n_docs
    if isinstance(limit, float) and limit <= 1.0:
        return min(n_docs, int(math.ceil(n_docs * limit)))
    return min(n_docs, int(limit))


def stage_sizes(n: int, stages: Sequence[float] | None) -> list[int]:
    """Cumulative document counts after each stage: `ceil(fraction * n)`, raised where needed so that every stage
    adds at least one document (the last is `n`). Needs `n >= len(stages)` (see `too_few_for_stages`)."""
    if not stages:
        return [n]
    k = len(stages)
    if n < k:
        raise ValueError(f"{n} documents cannot fill {k} stages")
    sizes: list[int] = []
    for i, f in enumerate(stages):
        floor = sizes[-1] + 1 if sizes else 1
        sizes.append(min(n - (k - 1 - i), max(floor, int(math.ceil(f * n)))))
    return sizes


def fingerprint(texts: Sequence[str]) -> str:
    """A short hash of the chosen documents' contents, in order (to notice a dataset changed under a run)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TaskDocuments:
    """The documents of one leaf lm-eval task a run scores: ids in scoring order, out of `available`."""

    task: str
    ids: tuple[int, ...]
    available: int
    fingerprint: str

    def to_json(self) -> dict[str, object]:
        return {"task": self.task, "ids": list(self.ids), "available": self.available, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TaskDocuments:
        ids = data["ids"]
        assert isinstance(ids, list)
        return cls(str(data["task"]), tuple(int(i) for i in ids), int(data["available"]), str(data["fingerprint"]))  # type: ignore[call-overload]


# objective name -> its leaf tasks' documents (one entry for a task, one per member for a group)
DocumentPlan = dict[str, list[TaskDocuments]]


def plan_to_json(plan: DocumentPlan) -> dict[str, list[dict[str, object]]]:
    return {name: [d.to_json() for d in docs] for name, docs in plan.items()}


def plan_from_json(data: dict[str, list[dict[str, object]]]) -> DocumentPlan:
    return {name: [TaskDocuments.from_json(d) for d in docs] for name, docs in data.items()}


def shared_documents(plan: DocumentPlan, names: Sequence[str]) -> list[list[str]]:
    """`names` grouped by the documents they are scored on (the same tasks and document ids: two metrics of one
    task, or `limit: 1.0` beside no limit), groups and members in the order of `names`. Every name must be in
    `plan`. The one answer to "which objectives share documents" for counting documents and pairing scores."""
    groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[str]] = {}
    for name in names:
        key = tuple((d.task, tuple(d.ids)) for d in plan[name])
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def plan_differences(recorded: DocumentPlan, now: DocumentPlan) -> list[str]:
    """One phrase per objective or task whose documents differ between two plans (empty when they agree)."""
    out = []
    for name in sorted(set(recorded) | set(now)):
        if name not in recorded or name not in now:
            out.append(f"objective {name!r} {'is new' if name not in recorded else 'is gone'}")
            continue
        old = {d.task: d for d in recorded[name]}
        new = {d.task: d for d in now[name]}
        for task in sorted(set(old) | set(new)):
            a, b = old.get(task), new.get(task)
            if a is None or b is None:
                out.append(f"objective {name!r}: task {task!r} {'is new' if a is None else 'is gone'}")
            elif a.available != b.available:
                out.append(f"task {task!r} held {a.available} documents, now {b.available}")
            elif a.ids != b.ids:
                out.append(f"task {task!r}: other document ids are chosen")
            elif a.fingerprint != b.fingerprint:
                out.append(f"task {task!r}: the chosen documents' contents changed")
    return out


def encode_outcomes(values: Sequence[float]) -> EncodedOutcomes:
    """Per-document values, compactly: a '0'/'1' string when every value is 0 or 1, else a list of floats."""
    if all(v in (0.0, 1.0) for v in values):
        return "".join("1" if v == 1.0 else "0" for v in values)
    return [float(v) for v in values]


def decode_outcomes(encoded: EncodedOutcomes) -> list[float]:
    """The per-document values of `encode_outcomes`' output."""
    if isinstance(encoded, str):
        return [1.0 if c == "1" else 0.0 for c in encoded]
    return [float(v) for v in encoded]
