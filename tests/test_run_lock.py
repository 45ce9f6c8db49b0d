"""One writer per run folder: a second process is refused in one line naming the holder; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mmmo
from mmmo.cli import app
from mmmo.run.lock import LOCK_FILE, RunFolderBusy, run_lock
from mmmo.run.records import Trial
from mmmo.run.store import RunStore
from mmmo.spec.schema import spec_from_dict

HOLD = """
import sys, time
from mmmo.run.lock import run_lock
with run_lock(sys.argv[1], "mmmo search"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _run_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder with a spec and two done trials (no models needed), and the spec file that made it."""
    import yaml

    data = {
        "name": "lk", "base_model": "org/base", "models": ["org/a"], "merge": {"method": "ties"},
        "objectives": [{"name": "a", "task": "t", "metric": "acc"}, {"name": "sp", "type": "sparsity"}],
        "optimizer": {"initial": 2, "batches": 1, "candidates": 2, "batch_size": 2},
        "output": {"dir": str(tmp_path / "run"), "export": "none"},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    journal = RunStore(tmp_path / "run").open(spec_from_dict(data, tmp_path))
    for i, v in enumerate((0.4, 0.6)):
        journal.record_trial(Trial(i, 0, [0.2 + 0.5 * i, 0.5], "sobol", "done", objectives={"a": v, "sp": -v}))
    return tmp_path / "run", spec_path


def _hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_writes_nothing(tmp_path: Path) -> None:
    run_dir, spec_path = _run_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != LOCK_FILE}
    holder = _hold(run_dir)
    try:
        started = time.time()
        for args in (["search", str(spec_path), "--quiet"], ["resume", str(run_dir), "--quiet"],
                     ["resume", str(run_dir), "--repair"], ["export", str(run_dir), "--out", str(run_dir / "m")]):
            r = CliRunner().invoke(app, args)
            assert r.exit_code == 2, (args, r.output)
            lines = r.output.strip().splitlines()
            assert len(lines) == 1, r.output
            assert f"is in use by process {holder.pid} (mmmo search, since " in lines[0]
            since = time.mktime(time.strptime(lines[0].split("since ")[1][:19], "%Y-%m-%d %H:%M:%S"))
            assert started - 60 < since <= time.time() + 1
        # nothing in the run folder was written: same files, same bytes
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != LOCK_FILE} == before
        # reading needs no lock
        shown = CliRunner().invoke(app, ["show", str(run_dir)])
        assert shown.exit_code == 0 and "2 done, 0 failed, 0 pending of a budget of 4" in shown.stdout
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    run_dir, _ = _run_folder(tmp_path)
    holder = _hold(run_dir)
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the lock with the process
    holder.wait()
    assert (run_dir / LOCK_FILE).exists()
    with run_lock(run_dir, "mmmo search"):
        pass


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_open_files(tmp_path: Path) -> None:
    run_dir, spec_path = _run_folder(tmp_path)
    with run_lock(run_dir, "mmmo resume"), run_lock(run_dir, "mmmo search"):  # resume -> search: one process
        assert str(os.getpid()) in (run_dir / LOCK_FILE).read_text()
    assert (run_dir / LOCK_FILE).read_text() == ""  # released: no holder named any more
    holder = _hold(run_dir)
    try:
        # the API refuses before it reads or loads anything
        with pytest.raises(RunFolderBusy, match=f"process {holder.pid}"):
            mmmo.search(spec_path, show_progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lustre without -o flock and some NFS/FUSE mounts answer flock with ENOLCK/ENOSYS: no traceback."""
    import errno
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="this file system cannot lock files"):
        with run_lock(tmp_path / "run", "mmmo search") as path:
            assert path == (tmp_path / "run" / LOCK_FILE).resolve()

    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output error"):
        with run_lock(tmp_path / "run", "mmmo search"):
            pass


def test_a_full_disk_while_scoring_stops_the_search_instead_of_failing_the_candidate(tmp_path: Path) -> None:
    """Any other error fails only its candidate; a full disk would fail every later one, so it propagates and the
    trial stays pending in the journal (a resume after freeing space evaluates it)."""
    import errno

    from mmmo.evaluation.evaluator import CandidateEvaluator

    class Merger:
        def __init__(self, err: Exception) -> None:
            self.err = err

        def apply(self, weights: object, densities: object, *_args: object, **_options: object) -> float:
            raise self.err

    data = {  # one expert, dare_ties: a weight and a density; the sources and tasks are not needed to reach the merge
        "name": "disk", "base_model": "org/base", "models": ["org/a"],
        "objectives": [{"name": "a", "task": "t", "metric": "acc"}],
        "output": {"dir": str(tmp_path / "run")},
    }
    spec = spec_from_dict(data, tmp_path, check_paths=False)
    trial = Trial(id=0, batch=0, x=[0.5, 0.5], step="sobol")
    evaluator = CandidateEvaluator(spec, None, Merger(RuntimeError("shape mismatch")), torch.device("cpu"))  # type: ignore[arg-type]
    failed = evaluator.evaluate(trial)
    assert failed.status == "failed" and "shape mismatch" in (failed.error or "")
    evaluator.merger = Merger(OSError(errno.ENOSPC, "No space left on device"))  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space left"):
        evaluator.evaluate(trial)


TRY = """
import sys
from mmmo.run.lock import RunFolderBusy, run_lock
try:
    with run_lock(sys.argv[1], "intruder"):
        print("taken")
except RunFolderBusy as busy:
    print(f"refused: {busy}")
"""


class _Stop(Exception):
    """Ends the search once the probes are done: the test's run has no models to evaluate."""


@pytest.mark.parametrize("entry", ["search", "resume"])
def test_fresh_holds_one_lock_from_before_the_move_to_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    """--fresh moves the old run aside and starts the new one under the same lock: a second process that tries
    the folder right after the move, or when the new run opens its journal, is refused naming this process."""
    run_dir, spec_path = _run_folder(tmp_path)
    old = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != LOCK_FILE}
    probes: list[tuple[str, str]] = []

    def probe(when: str) -> None:
        out = subprocess.run([sys.executable, "-c", TRY, str(run_dir)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        probes.append((when, out.stdout.strip()))

    real_move, real_open = RunStore.move_aside, RunStore.open

    def move_then_probe(self: RunStore) -> Path:
        backup = real_move(self)
        probe("after the move")
        return backup

    def probe_then_stop(self: RunStore, *args: object, **kwargs: object) -> object:
        probe("when the new run opens")
        raise _Stop

    monkeypatch.setattr(RunStore, "move_aside", move_then_probe)
    monkeypatch.setattr(RunStore, "open", probe_then_stop)
    with pytest.raises(_Stop):
        if entry == "search":
            mmmo.search(spec_path, fresh=True, show_progress=False)
        else:
            mmmo.resume(run_dir, fresh=True, show_progress=False)
    assert [when for when, _ in probes] == ["after the move", "when the new run opens"]
    for when, said in probes:
        assert said.startswith(f"refused: {run_dir.resolve()} is in use by process {os.getpid()} (mmmo "), (when, said)
    # the old run is whole in its backup; the folder kept only its lock file, released and nameless now
    (backup,) = tmp_path.glob("run.bak-*")
    assert {p.name: p.read_bytes() for p in backup.iterdir()} == old
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]
    assert (run_dir / LOCK_FILE).read_text() == ""
    monkeypatch.setattr(RunStore, "open", real_open)
    with run_lock(run_dir, "mmmo search"):
        pass


def test_fresh_twice_in_one_second_keeps_both_backups(tmp_path: Path) -> None:
    run_dir, _ = _run_folder(tmp_path)
    first = RunStore(run_dir).move_aside()
    run_dir.mkdir(exist_ok=True)
    (run_dir / "trials.jsonl").write_text("second run\n")
    second = RunStore(run_dir).move_aside()
    assert first != second and first.name.startswith("run.bak-") and second.name.startswith("run.bak-")
    assert (second / "trials.jsonl").read_text() == "second run\n"
    assert {p.name for p in first.iterdir()} == {"spec.yaml", "trials.jsonl"}
