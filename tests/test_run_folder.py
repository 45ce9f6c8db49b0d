"""Run folders a user can trust, on the demo models: one writer, SIGTERM handled like Ctrl-C, a moved folder resumed,
a full disk said in one line with nothing lost, and exports that are small by default."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mmmo
from mmmo.cli import app
from mmmo.results.export import pareto_by_contribution
from mmmo.run.store import fold_events, read_events
from mmmo.runtime.diskspace import human_bytes

OPT = {"initial": 4, "batches": 2, "candidates": 4, "batch_size": 2}


def _done_count(journal: Path) -> int:
    if not journal.exists():
        return 0
    return sum(b'"event":"done"' in ln for ln in journal.read_bytes().split(b"\n"))


def _wait_for_done(journal: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while _done_count(journal) < n:
        if proc.poll() is not None:
            raise AssertionError(f"search exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for evaluations")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_search_is_refused_and_sigterm_ends_the_first_cleanly(demo_spec, tmp_path: Path) -> None:
    spec_path = demo_spec(optimizer=OPT)
    run_dir = tmp_path / "run"
    journal = run_dir / "trials.jsonl"
    cmd = [sys.executable, "-m", "mmmo", "search", str(spec_path), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        _wait_for_done(journal, 2, first)
        # A second terminal (or a re-submitted job) on the same spec: refused at once, in one line.
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is in use by process {first.pid} (mmmo search, since " in lines[0], lines
        first.send_signal(signal.SIGTERM)  # what Slurm, Kubernetes and `timeout` send first
        rc = first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    stderr = first.stderr.read().decode()
    assert rc == 143, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"terminated (SIGTERM): every finished evaluation is saved; continue with: mmmo resume {run_dir}"
    )
    stopped_at = _done_count(journal)
    assert 2 <= stopped_at < 8

    resumed = CliRunner().invoke(app, ["resume", str(run_dir), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    events = read_events(journal)
    finished = Counter(e["trial"]["id"] for e in events if e["event"] in ("done", "failed"))
    assert sorted(finished) == list(range(8)) and set(finished.values()) == {1}  # none lost, none twice
    assert set(Counter(e["trial"]["id"] for e in events if e["event"] == "proposed").values()) == {1}


@pytest.fixture(scope="module")
def finished_run(demo_paths, tmp_path_factory) -> Path:
    """A finished 8-trial demo run (no export), shared read-only: tests copy it before changing anything."""
    from demo_specs import write_demo_spec

    folder = tmp_path_factory.mktemp("run-folder")
    return mmmo.search(write_demo_spec(demo_paths, folder, optimizer={"batches": 2}), show_progress=False).run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("ray", "models"))
    return to


def test_a_moved_run_folder_resumes_where_it_now_is(finished_run: Path, tmp_path: Path) -> None:
    moved = _copy(finished_run, tmp_path / "bigger-disk" / "moved-run")
    journal = moved / "trials.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    fourth_done = [i for i, ln in enumerate(lines) if b'"event":"done"' in ln][3]
    journal.write_bytes(b"".join(lines[: fourth_done + 1]))  # as if stopped after the initial design
    original = (finished_run / "trials.jsonl").read_bytes()

    r = CliRunner().invoke(app, ["resume", str(moved), "--quiet"])
    assert r.exit_code == 0, r.output
    got = fold_events(read_events(journal)).trials
    want = fold_events(read_events(finished_run / "trials.jsonl")).trials
    assert [(t.id, t.status, t.objectives) for t in got] == [(t.id, t.status, t.objectives) for t in want]
    after = journal.read_bytes().splitlines(keepends=True)
    assert after[: fourth_done + 1] == lines[: fourth_done + 1]  # the first four evaluations were not redone
    assert mmmo.load_run(moved)[0].output.dir == str(moved)  # the spec now names where the run is
    assert (finished_run / "trials.jsonl").read_bytes() == original  # the folder it came from is untouched


def test_resume_repair_moves_a_damaged_line_aside_and_reruns_its_trial(finished_run: Path, tmp_path: Path) -> None:
    run = _copy(finished_run, tmp_path / "run")
    journal = run / "trials.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    n = next(i for i, ln in enumerate(lines) if b'"event":"done"' in ln and b'"id":5,' in ln)
    lines[n] = lines[n][:30] + b"\xff\xfe" + lines[n][50:]  # a disk error in the middle of the journal
    journal.write_bytes(b"".join(lines))

    r = CliRunner().invoke(app, ["resume", str(run), "--quiet"])
    assert r.exit_code == 2 and f"line {n + 1} is not valid JSON" in r.output and "--repair" in r.output

    r = CliRunner().invoke(app, ["resume", str(run), "--repair", "--quiet"])
    assert r.exit_code == 0, r.output
    side = next(run.glob("trials.damaged-*.jsonl"))
    assert f"repair: moved 1 unreadable line(s) to {side}; their trials are run again" in r.output
    assert side.read_bytes() == lines[n]
    events = read_events(journal)
    finished = Counter(e["trial"]["id"] for e in events if e["event"] in ("done", "failed"))
    assert sorted(finished) == list(range(8)) and set(finished.values()) == {1}
    want = fold_events(read_events(finished_run / "trials.jsonl")).trials
    assert [t.objectives for t in fold_events(events).trials] == [t.objectives for t in want]  # 5 ran again


def test_a_full_disk_while_writing_summaries_is_one_line_and_loses_nothing(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(finished_run, tmp_path / "run")
    (run / "pareto.json").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up while the summaries are written
        if "pareto" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    r = CliRunner().invoke(app, ["resume", str(run), "--quiet"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: no space left on the device of {run}; every finished evaluation is saved in trials.jsonl: "
        f"free some space, then continue with: mmmo resume {run}"
    ]
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for changed in ("mmmo.lock", "spec.yaml"):  # spec.yaml now names the copy's folder
        after.pop(changed), before.pop(changed, None)
    assert after == before  # the journal and every summary as they were; no temporary file left


def test_a_full_disk_during_export_is_one_line_and_leaves_no_folder(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None) -> None:  # noqa: ANN001 - safetensors' signature
        Path(filename).write_bytes(b"\0" * 4096)  # part of the file made it to disk
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["export", str(finished_run), "--out", str(out)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no space left on the device of {out}/trial-"), lines
    assert lines[0].endswith("its partial folder was removed; free some space and export again")
    assert list(out.iterdir()) == []  # no half-written model, not even a hidden one


def test_export_checks_free_space_before_loading_anything(
    finished_run: Path, demo_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmmo.results import export
    from mmmo.runtime import diskspace

    monkeypatch.setattr(export, "build_merger", lambda *a: pytest.fail("loaded models on a full disk"))
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    r = CliRunner().invoke(app, ["export", str(finished_run), "--pareto", "--limit", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    # the demo base's tensors in float32 (CPU), plus its tokenizer and config files, per merge
    from safetensors import safe_open

    from mmmo.merge.recipes.save import AUX_FILES

    with safe_open(str(demo_paths.base / "model.safetensors"), "pt") as f:
        weights = 4 * sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    small = sum(p.stat().st_size for p in demo_paths.base.iterdir() if p.name in ("config.json", *AUX_FILES))
    assert r.output.strip().splitlines() == [
        f"error: not enough free space for 2 merged model(s) in {tmp_path / 'o'}: about "
        f"{human_bytes(2 * (weights + small))} needed, 1 kB free; free some space or export fewer "
        "(mmmo export --trial N, or a smaller output.export_limit)"
    ]
    assert not (tmp_path / "o").exists()


def test_export_is_the_best_merge_by_default_and_the_front_is_capped(finished_run: Path, tmp_path: Path) -> None:
    _, _, summary = mmmo.load_run(finished_run)
    r = CliRunner().invoke(app, ["export", str(finished_run), "--out", str(tmp_path / "best")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [f"trial-{summary.best().id}"]

    ranked = pareto_by_contribution(summary)
    assert len(ranked) >= 3, "the demo front should have room to cap"
    r = CliRunner().invoke(app, ["export", str(finished_run), "--pareto", "--limit", "2", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"exported: {tmp_path / 'p' / f'trial-{t.id}'}" for t in ranked[:2]]
    card = (tmp_path / "p" / f"trial-{ranked[0].id}" / "README.md").read_text()
    weight = ranked[0].params["arith.weight"]
    assert f"| {weight:.3g} |" in card.split("## Recipe")[0]
    assert json.loads((finished_run / "pareto.json").read_text())["pareto"]  # the run folder was only read
