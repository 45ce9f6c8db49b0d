"""--debug keeps its promise (the traceback) without changing what a stop means: SIGTERM exits 143, Ctrl-C 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmmo import api
from mmmo.cli import app
from mmmo.run.store import TornJournalWarning, read_events
from mmmo.runtime.signals import EXIT_TERMINATED, Terminated

OPT = {"initial": 4, "batches": 2, "candidates": 4, "batch_size": 2}


@pytest.mark.parametrize(
    ("stop", "status", "said"),
    [
        (Terminated, EXIT_TERMINATED, "terminated (SIGTERM): every finished evaluation is saved"),
        (KeyboardInterrupt, 130, "interrupted: every finished evaluation is saved"),
    ],
)
def test_debug_prints_the_traceback_and_keeps_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: type[KeyboardInterrupt], status: int, said: str
) -> None:
    def stopped_while_searching(run_dir: Path, **kwargs: object) -> None:
        raise stop()

    monkeypatch.setattr(api, "resume", stopped_while_searching)
    run_dir = tmp_path / "run"
    for debug in ([], ["--debug"]):
        r = CliRunner().invoke(app, [*debug, "resume", str(run_dir), "--quiet"])
        assert r.exit_code == status, (debug, r.output)
        assert r.output.strip().splitlines()[-1] == f"{said}; continue with: mmmo resume {run_dir}"
        shown = "Traceback (most recent call last)" in r.output and "in stopped_while_searching" in r.output
        assert shown == bool(debug), r.output


def _done(journal: Path) -> int:
    return journal.read_bytes().count(b'"event":"done"') if journal.exists() else 0


@pytest.mark.slow
def test_sigterm_under_debug_exits_143_with_the_journal_whole_and_resumable(demo_spec, tmp_path: Path) -> None:
    spec_path = demo_spec(optimizer=OPT)
    run_dir = tmp_path / "run"
    journal = run_dir / "trials.jsonl"
    cmd = [sys.executable, "-m", "mmmo", "--debug", "search", str(spec_path), "--quiet"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        t0 = time.time()
        while _done(journal) < 2:  # the search is under way: two candidates scored and journaled
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.time() - t0 < 240, "timed out waiting for evaluations"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert rc == EXIT_TERMINATED, stderr
    assert "Traceback (most recent call last)" in stderr and "mmmo.runtime.signals.Terminated" in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"terminated (SIGTERM): every finished evaluation is saved; continue with: mmmo resume {run_dir}"
    )
    # the journal is whole (every line reads, strictly) and the folder's lock was released
    with warnings.catch_warnings():
        warnings.simplefilter("error", TornJournalWarning)
        stopped = [e for e in read_events(journal) if e["event"] in ("done", "failed")]
    assert 2 <= len(stopped) < 8
    assert (run_dir / "mmmo.lock").read_text() == ""

    resumed = CliRunner().invoke(app, ["resume", str(run_dir), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    events = read_events(journal)
    finished = Counter(e["trial"]["id"] for e in events if e["event"] in ("done", "failed"))
    assert sorted(finished) == list(range(8)) and set(finished.values()) == {1}  # none lost, none twice
