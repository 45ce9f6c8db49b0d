"""The journal and run folder: whole lines, torn tails survived, changed specs refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmmo.run.atomic import atomic_write_text
from mmmo.run.records import SourceScore, Trial
from mmmo.run.store import (
    EventKind,
    Journal,
    RepairReport,
    RunStore,
    TornJournalWarning,
    fold_events,
    read_events,
    repair_journal,
)
from mmmo.runtime.errors import MmmoError
from mmmo.spec.resume import changed_fields
from mmmo.spec.schema import spec_from_dict


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


def test_a_newer_journals_fields_are_read_the_same_way_for_trials_and_sources(tmp_path: Path) -> None:
    """A field a later mmmo adds to the scored record is left out on read, for a merge and a source alike."""
    j = Journal(tmp_path / "trials.jsonl")
    trial = {**_trial(0, "done", 0.5).to_json(), "energy_joules": 12.5}
    source = {**SourceScore(name="base", objectives={"a": 0.4, "sp": 0.0}).to_json(), "energy_joules": 3.0}
    j.append("done", trial=trial)
    j.append("source", source=source)
    state = fold_events(read_events(j.path, ["a", "sp"]))
    assert state.trials == [_trial(0, "done", 0.5)]
    assert state.sources == [SourceScore(name="base", objectives={"a": 0.4, "sp": 0.0})]
    # ... while a known field of the wrong type is refused on both, naming it
    j.append("source", source={**source, "n_examples": {"a": "many"}})
    with pytest.raises(MmmoError, match="n_examples"):
        read_events(j.path, ["a", "sp"])


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


def _damaged_journal(tmp_path: Path) -> Path:
    """Trials 0-2 proposed, 0 and 2 done; the line with trial 1's result is damaged (a disk error, a bad edit)."""
    j = Journal(tmp_path / "trials.jsonl")
    for i in range(3):
        j.record_trial(_trial(i))
    j.record_trial(_trial(0, "done", 0.5))
    j.record_trial(_trial(1, "done", 0.6))
    j.record_trial(_trial(2, "done", 0.7))
    lines = j.path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4][:40] + b"\x00\x00garbage" + lines[4][60:]
    j.path.write_bytes(b"".join(lines))
    return j.path


def test_corrupt_middle_line_is_an_error_that_points_to_repair(tmp_path: Path) -> None:
    path = _damaged_journal(tmp_path)
    with pytest.raises(MmmoError, match=r"line 5 is not valid JSON; .*mmmo resume .* --repair"):
        read_events(path)


def test_repair_moves_the_damaged_line_aside_and_its_trial_runs_again(tmp_path: Path) -> None:
    path = _damaged_journal(tmp_path)
    damaged = path.read_bytes().splitlines()[4]
    report = repair_journal(path)
    assert (report.moved, report.kept) == (1, 5)
    assert report.side_file is not None and report.side_file.parent == tmp_path
    assert report.side_file.read_bytes() == damaged + b"\n"  # kept as it was, nothing lost
    state = fold_events(read_events(path))
    assert [(t.id, t.status) for t in state.trials] == [(0, "done"), (1, "proposed"), (2, "done")]
    assert repair_journal(path) == RepairReport(0, 5, None)  # a second repair finds nothing


def test_unknown_event_kind_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    Journal(path).record_trial(_trial(0))
    with open(path, "a") as fh:
        fh.write('{"event":"pruned","trial":{"id":0}}\n{"event":"batch_end","batch":0,"hypervolume":0.1}\n')
    with pytest.raises(MmmoError, match=r"line 2 has an unknown event kind 'pruned'"):
        read_events(path)
    with pytest.raises(MmmoError, match="unknown journal event kind 'pruned'"):
        fold_events([{"event": "pruned"}])
    with pytest.raises(ValueError, match="'pruned' is not a valid EventKind"):
        Journal(path).append("pruned")
    assert {k.value for k in EventKind} == {
        "proposed", "partial", "done", "failed", "attempt_failed", "source", "ref_point", "batch_end", "documents"
    }


def test_attempt_failed_keeps_the_trial_pending_with_its_attempt_count(tmp_path: Path) -> None:
    j = Journal(tmp_path / "trials.jsonl")
    j.record_trial(_trial(0))
    j.record_trial(_trial(1))
    died = _trial(1, "failed")
    died.attempts, died.error = 1, "worker died: killed"
    j.append(EventKind.ATTEMPT_FAILED, trial=died.to_json())
    state = fold_events(read_events(j.path))
    # pending (a resume retries it), but with its one attempt counted so the pool retries it only once more
    assert [(t.id, t.status, t.attempts, t.error) for t in state.trials] == [
        (0, "proposed", 0, None), (1, "proposed", 1, None)
    ]
    j.record_trial(_trial(1, "done", 0.4))
    assert fold_events(read_events(j.path)).trials[1].status == "done"


def test_changed_spec_is_refused_naming_fields(tmp_path: Path) -> None:
    RunStore(tmp_path / "run").open(_spec(tmp_path))
    with pytest.raises(MmmoError, match=r"changed: optimizer\.candidates, optimizer\.seed.*`mmmo resume .*run` "
                       r"continues it as it started$"):
        RunStore(tmp_path / "run").open(_spec(tmp_path, seed=7, candidates=3))


def test_a_run_from_before_a_field_existed_resumes_as_it_started(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.open(_spec(tmp_path)).record_trial(_trial(0, "done", 0.5))
    data = yaml.safe_load(store.spec_path.read_text())
    for field in ("prior_mean", "known_noise", "standard_recipes", "schedule"):
        del data["optimizer"][field]
    del data["optimizer"]["weak_to_strong"]["mode"]
    store.spec_path.write_text(yaml.safe_dump(data, sort_keys=False))  # as an older mmmo wrote it
    as_started = RunStore(tmp_path / "run").stored_spec().optimizer
    assert (as_started.prior_mean, as_started.known_noise, as_started.standard_recipes) == ("fitted", False, False)
    assert as_started.weak_to_strong.mode == "crossover"
    assert as_started.schedule == "batch"  # before the asynchronous schedule, every run was batch by batch
    RunStore(tmp_path / "run").open(RunStore(tmp_path / "run").stored_spec())  # what `mmmo resume` does
    store.spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(MmmoError, match=r"changed: optimizer\.known_noise, optimizer\.prior_mean, optimizer\."
                       r"standard_recipes, optimizer\.weak_to_strong\.mode\).*started before .* existed: `mmmo resume"):
        RunStore(tmp_path / "run").open(_spec(tmp_path))  # today's defaults differ
    assert [t.id for t in RunStore(tmp_path / "run").load().trials] == [0]  # nothing lost


def test_more_batches_other_workers_and_the_merge_kernel_may_change_on_resume(tmp_path: Path) -> None:
    RunStore(tmp_path / "run").open(_spec(tmp_path))
    spec = _spec(tmp_path, batches=3)
    spec.evaluation.workers = 2
    spec.merge.fused = False  # the same tensors either way
    spec.optimizer.schedule = "async"  # when proposals are made, not what any merge scores
    RunStore(tmp_path / "run").open(spec)  # no error
    assert RunStore(tmp_path / "run").stored_spec().optimizer.batches == 3


def test_fresh_keeps_a_backup(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.open(_spec(tmp_path)).record_trial(_trial(0, "done", 0.5))
    RunStore(tmp_path / "run").open(_spec(tmp_path, seed=3), fresh=True)
    backups = list(tmp_path.glob("run.bak-*"))
    assert len(backups) == 1 and (backups[0] / "trials.jsonl").exists()
    assert not (tmp_path / "run" / "trials.jsonl").exists()


def test_a_moved_or_copied_run_folder_opens_where_it_now_is(tmp_path: Path) -> None:
    import shutil

    store = RunStore(tmp_path / "run")
    store.open(_spec(tmp_path)).record_trial(_trial(0, "done", 0.5))
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "copy")
    moved = _spec(tmp_path)
    moved.output.dir = str(tmp_path / "elsewhere" / "copy")
    RunStore(moved.run_dir).open(moved)  # output.dir differs from the stored spec's: not a change of the run
    assert RunStore(moved.run_dir).stored_spec().output.dir == str(tmp_path / "elsewhere" / "copy")
    assert [t.id for t in RunStore(moved.run_dir).load().trials] == [0]


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    target = tmp_path / "pareto.json"
    target.write_text("old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write_text(target, "new" * 1000)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.json"]


def test_changed_fields_flattens_nested() -> None:
    assert changed_fields({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]


def test_a_run_named_before_the_folder_name_rule_still_loads(tmp_path: Path) -> None:
    # Earlier versions took `name: org/model` (its folder runs/org/model); a new spec may not, the stored one must load.
    with pytest.raises(MmmoError, match="cannot name a run folder"):
        spec_from_dict({**yaml.safe_load(yaml.safe_dump(_spec(tmp_path).model_dump(by_alias=True))), "name": "org/m"},
                       tmp_path, check_paths=False)
    store = RunStore(tmp_path / "run")
    store.open(_spec(tmp_path)).record_trial(_trial(0, "done", 0.5))
    stored = yaml.safe_load(store.spec_path.read_text())
    store.spec_path.write_text(yaml.safe_dump({**stored, "name": "org/m"}))
    assert RunStore(tmp_path / "run").stored_spec().name == "org/m"
    assert [t.id for t in RunStore(tmp_path / "run").load().trials] == [0]
