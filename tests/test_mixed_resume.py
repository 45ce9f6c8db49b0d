"""A search that chooses the method, killed with SIGKILL mid-batch, resumes to the uninterrupted run's trials; a
single-method run's journal (no `method` field, as before methods could be listed) resumes unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_resume import _done_events, _wait_for_done
from typer.testing import CliRunner

import mmmo
from mmmo.cli import app
from mmmo.run.store import fold_events, read_events

OPT = {"initial": 4, "batches": 2, "candidates": 2, "batch_size": 2}
METHODS = ["ties", "dare_ties", "task_arithmetic"]


@pytest.mark.slow
def test_mixed_search_killed_then_resumed_matches_an_uninterrupted_run(demo_paths, tmp_path: Path) -> None:
    from demo_specs import write_demo_spec

    spec_path = write_demo_spec(demo_paths, tmp_path / "killed", merge={"method": METHODS}, optimizer=OPT)
    journal = tmp_path / "killed" / "run" / "trials.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmmo", "search", str(spec_path), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_for_done(journal, 5, proc, timeout=600)  # into batch 1: proposed and journaled, one evaluated
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 5 <= len(_done_events(journal)) < 8

    resumed = CliRunner().invoke(app, ["resume", str(journal.parent), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    events = read_events(journal)
    finished = Counter(e["trial"]["id"] for e in events if e["event"] in ("done", "failed"))
    assert sorted(finished) == list(range(8)) and set(finished.values()) == {1}
    assert set(Counter(e["trial"]["id"] for e in events if e["event"] == "proposed").values()) == {1}
    got = fold_events(events).trials
    assert all(t.method in METHODS for t in got)

    ref = mmmo.search(
        write_demo_spec(demo_paths, tmp_path / "ref", merge={"method": METHODS}, optimizer=OPT), show_progress=False
    )
    assert [t.x for t in got] == [t.x for t in ref.trials]
    assert [t.method for t in got] == [t.method for t in ref.trials]
    assert [t.objectives for t in got] == [t.objectives for t in ref.trials]


def test_single_method_run_journals_no_method_and_an_old_journal_resumes(demo_spec, tmp_path: Path) -> None:
    opt = {"initial": 2, "batches": 1, "candidates": 2, "batch_size": 1}
    spec_path = demo_spec(optimizer=opt)
    first = mmmo.search(spec_path, show_progress=False)
    journal = first.run_dir / "trials.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert b'"method"' not in b"".join(lines)  # a single method's journal reads as it did before lists

    # As if killed before the last trial finished: its proposal stays, its result goes.
    last = max(i for i, ln in enumerate(lines) if json.loads(ln)["event"] == "done")
    journal.write_bytes(b"".join(lines[:last]))
    again = mmmo.search(spec_path, show_progress=False)
    assert [t.x for t in again.trials] == [t.x for t in first.trials]
    assert [t.objectives for t in again.trials] == [t.objectives for t in first.trials]
    assert all(t.method is None for t in again.trials)
    assert b'"method"' not in journal.read_bytes()
