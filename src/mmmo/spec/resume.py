"""Resuming a run whose spec changed: which fields may change, and what a run written before a field existed ran
with (so an old run resumes as it started)."""

from __future__ import annotations

import copy
from typing import Any

# Fields a resumed run may change: where and how fast it evaluates, what it exports, and how long it runs.
# Changes that leave every evaluated merge the same (merge.fused gives the same tensors bit for bit; SCE in float64
# to the last bits of its weights, far below any score's resolution).
# output.dir is where the folder was when the spec was written: a moved or copied folder is resumed where it
# now is, so the old path is not a change of the run.
RESUMABLE_CHANGES: tuple[str, ...] = (
    "evaluation.", "output.export", "output.dir", "optimizer.batches", "merge.fused",
    "optimizer.schedule",  # when proposals are made, not what any evaluated merge is; either loop completes the other's
    "take_home.",  # what the take-home merge maximises: no score depends on it, only later proposals and the choice
)
# ... except these evaluation fields, which decide what every candidate is scored on.
NOT_RESUMABLE: tuple[str, ...] = ("evaluation.subset", "evaluation.subset_seed", "evaluation.stages")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


# Spec fields added after runs were already being written, with the value a run written before them ran with:
# a stored spec without one is read with that value, so an old run resumes as it started.
FIELDS_ADDED_LATER: dict[str, Any] = {
    "optimizer.known_noise": False,
    "optimizer.standard_recipes": False,
    "optimizer.weak_to_strong.mode": "crossover",
    "optimizer.prior_mean": "fitted",
    "evaluation.subset": "first",
    "evaluation.subset_seed": 0,
    # Before `take_home` a run took home the highest observed mean task score (weights and requirements: none).
    # Before `take_home_points` existed, a batch spent none on the take-home merge.
    "optimizer.take_home_points": 0,
    "take_home.weights": None,
    "take_home.require": [],
    "take_home.choose": "observed",
    "optimizer.schedule": "batch",
}


def with_fields_added_later(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A stored spec dict with every missing field of FIELDS_ADDED_LATER filled in, and the names filled."""
    out = copy.deepcopy(data)
    filled = []
    for dotted, value in FIELDS_ADDED_LATER.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None  # a damaged spec: schema says
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = copy.deepcopy(value)  # a list default stays this table's own
            filled.append(dotted)
    return out, filled


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two spec dicts."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
