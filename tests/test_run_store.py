"""The journal and run folder: whole lines, torn tails survived, changed specs refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmmo.config import spec_from_dict
from mmmo.errors import MmmoError
from mmmo.run_store import Journal, RunStore, TornJournalWarning, changed_fields, fold_events, read_events
from mmmo.trial import Trial


def _spec(tmp_path: Path, **optimizer: object):
    data = {
        "name": "rs",
        "base_model": "org/base",
        "models": ["org/a", "org/b"],
        "merge": {"method": "ties"},
        "objectives": [{"name": "a", "task": "t", "metric": "acc"}, {"name": "sp", "type": "sparsity"}],
        "optimizer": {"initial": 3, "batches": 1, "candidates": 2, "batch_size": 2, **optimizer},
        "output": {"dir": str(tmp_path / "run")},
    }
    return spec_from_dict(data, tmp_path)


def _trial(i: int, status: str = "proposed", value: float | None = None) -> Trial:
    t = Trial(id=i, batch=0, x=[0.1 * i, 0.5], step="sobol", status=status)  # type: ignore[arg-type]
    if value is not None:
        t.objectives = {"a": value, "sp": -0.01}
    return t


def test_events_fold_last_wins(tmp_path: Path) -> None:
    j = Journal(tmp_path / "trials.jsonl")
    j.record_trial(_trial(0))
    j.record_trial(_trial(1))
    j.record_trial(_trial(0, "done", 0.5))
    j.append("ref_point", ref_point=[0.0, -1.0])
    j.append("batch_end", batch=0, hypervolume=0.25)
    state = fold_events(read_events(j.path))
    assert [(t.id, t.status) for t in state.trials] == [(0, "done"), (1, "proposed")]
    assert state.trials[0].objectives == {"a": 0.5, "sp": -0.01}
    assert state.ref_point == [0.0, -1.0]
    assert state.hypervolumes == {0: 0.25}
    # every line is one whole JSON object ending in a newline
    raw = j.path.read_bytes()
    assert raw.endswith(b"\n") and len(raw.splitlines()) == 5


def test_torn_last_line_is_skipped_with_warning_and_repaired_before_append(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    j = Journal(path)
    j.record_trial(_trial(0, "done", 0.5))
    whole = json.dumps({"event": "done", "trial": _trial(1, "done", 0.7).to_json()})
    with open(path, "ab") as fh:
        fh.write(whole[: len(whole) // 2].encode())  # killed mid-write
    with pytest.warns(TornJournalWarning, match="torn last line"):
        state = fold_events(read_events(path))
    assert [t.id for t in state.trials] == [0]
    # a new writer cuts the fragment so the next event is not glued to it
    with pytest.warns(TornJournalWarning, match="dropping a torn last line"):
        Journal(path).record_trial(_trial(2, "done", 0.9))
    state = fold_events(read_events(path))
    assert [t.id for t in state.trials] == [0, 2]


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    path.write_text('{"event": "proposed", "trial": {}}\nnot json\n{"event": "x"}\n')
    with pytest.raises(MmmoError, match="line 2 is not valid JSON"):
        read_events(path)


def test_changed_spec_is_refused_naming_fields(tmp_path: Path) -> None:
    RunStore(tmp_path / "run").open(_spec(tmp_path))
    with pytest.raises(MmmoError, match=r"changed: optimizer\.candidates, optimizer\.seed"):
        RunStore(tmp_path / "run").open(_spec(tmp_path, seed=7, candidates=3))


def test_more_batches_other_workers_and_the_merge_kernel_may_change_on_resume(tmp_path: Path) -> None:
    RunStore(tmp_path / "run").open(_spec(tmp_path))
    spec = _spec(tmp_path, batches=3)
    spec.evaluation.workers = 2
    spec.merge.fused = False  # the same tensors either way
    RunStore(tmp_path / "run").open(spec)  # no error
    assert RunStore(tmp_path / "run").stored_spec().optimizer.batches == 3


def test_fresh_keeps_a_backup(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.open(_spec(tmp_path)).record_trial(_trial(0, "done", 0.5))
    RunStore(tmp_path / "run").open(_spec(tmp_path, seed=3), fresh=True)
    backups = list(tmp_path.glob("run.bak-*"))
    assert len(backups) == 1 and (backups[0] / "trials.jsonl").exists()
    assert not (tmp_path / "run" / "trials.jsonl").exists()


def test_changed_fields_flattens_nested() -> None:
    assert changed_fields({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]
