"""Progress a batch-system log file shows: one plain, time-stamped line per finished trial and per batch end, written
as they happen; hub downloads announced at their start and end, even with --quiet."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from rich.console import Console

from mmmo.evaluation.evaluator import local_model_folder
from mmmo.evaluation.hub import MODEL_FILES, folder_size, hub_model_folder, size_text
from mmmo.optimizer.loop import BatchSummary
from mmmo.run.records import ScheduleStats, SourceScore, Trial
from mmmo.runtime.errors import MmmoError
from mmmo.runtime.progress import SearchProgress, search_progress
from mmmo.runtime.progress_lines import LogProgress, duration, seconds_left
from mmmo.spec.schema import SearchSpec

STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _spec(**optimizer: object) -> SearchSpec:
    # Objectives a and a2 score the same documents (same task and limit): a trial's documents count them once.
    return SearchSpec.model_validate({
        "name": "t", "base_model": "org/base", "models": ["org/a", "org/b"], "merge": {"method": "dare_ties"},
        "objectives": [
            {"name": "a", "task": "ta", "metric": "exact_match", "limit": 10},
            {"name": "b", "task": "tb", "metric": "exact_match"},
            {"name": "a2", "task": "ta", "metric": "acc", "limit": 10},
            {"name": "sparsity", "type": "sparsity"},
        ],
        "optimizer": {"initial": 4, "batches": 2, "candidates": 6, "batch_size": 3, **optimizer},
    })


def _done(tid: int, a: float, b: float, a2: float, **fields: object) -> Trial:
    return Trial(
        id=tid, batch=1, x=[0.5], step="acquisition", status="done",
        objectives={"a": a, "b": b, "a2": a2, "sparsity": -0.0123},
        n_examples={"a": 10, "b": 20, "a2": 10}, merge_seconds=1.2, eval_seconds=3.0, stages_scored=1, **fields,
    )


def _summary(batch: int, hv: float) -> BatchSummary:
    return BatchSummary(batch=batch, n_done=3, n_failed=0, hypervolume=hv, pareto_ids=[], best_per_objective={})


def _lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert text.endswith("\n") and "\x1b" not in text  # whole lines, no colour or cursor codes
    lines = text.splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def test_a_finished_trial_is_one_line_with_its_scores_documents_and_seconds() -> None:
    out = io.StringIO()
    log = LogProgress(_spec(), stream=out)
    log.resume_from([])
    log.finished(_done(5, 0.6, 0.25, 0.5))
    log.finished(_done(6, 0.4, 0.3, 0.2, stopped=True))
    log.finished(Trial(id=7, batch=1, x=[0.1], step="acquisition", status="failed", error="RuntimeError: CUDA oom",
                       eval_seconds=0.5))
    log.finished(replace(_done(8, 0.5, 0.5, 0.5), method="ties"))  # a search over methods names each trial's
    assert _lines(out) == [
        "trial 5 (batch 1) done: a=0.6 b=0.25 a2=0.5 sparsity=-0.0123; 30 documents; 4.2 s; 1/10 trials finished",
        "trial 6 (batch 1) stopped after stage 1: a=0.4 b=0.3 a2=0.2 sparsity=-0.0123; 30 documents; 4.2 s; "
        "2/10 trials finished",
        "trial 7 (batch 1) failed: RuntimeError: CUDA oom; 0.5 s; 3/10 trials finished",
        "trial 8 (batch 1, ties) done: a=0.5 b=0.5 a2=0.5 sparsity=-0.0123; 30 documents; 4.2 s; 4/10 trials finished",
    ]


def test_the_time_stamp_is_the_local_time_of_the_line() -> None:
    out = io.StringIO()
    clock = FakeClock(1_700_000_000.0)
    log = LogProgress(_spec(), stream=out, clock=clock)
    log.note("scoring 3 source model(s) on the objectives")
    assert out.getvalue() == f"[{time.strftime('%H:%M:%S', time.localtime(clock.now))}] " \
        "scoring 3 source model(s) on the objectives\n"


def test_batch_line_carries_hypervolume_best_mean_task_score_elapsed_and_time_left() -> None:
    out = io.StringIO()
    clock = FakeClock(1000.0)
    with LogProgress(_spec(), stream=out, clock=clock) as log:
        clock.now = 1010.0  # sources scored; a resumed run: two trials finished in an earlier session
        earlier = [_done(0, 0.9, 0.1, 0.2), Trial(id=1, batch=0, x=[0.2], step="sobol", status="failed")]
        log.resume_from(earlier)
        clock.now = 1040.0  # three trials finished in 30 s: 10 s a trial, 10 - 5 = 5 left in the budget
        log.finished(_done(2, 0.5, 0.5, 0.5))  # mean task score 0.5 beats trial 0's 0.4
        log.finished(_done(3, 0.8, 0.8, 0.8, stopped=True))  # stopped: not scored in full, not a "best"
        log.finished(_done(4, 0.1, 0.1, 0.1))
        log.batch_end(_summary(1, 0.123456))
    assert _lines(out)[0] == "resuming: 2/10 trials finished earlier"
    assert _lines(out)[-1] == (
        "batch 1 done: hypervolume 0.1235; best mean task score 0.5 (trial 2); elapsed 40s; 5/10 trials, "
        "about 50s left"
    )
    assert log.per_trial_seconds() == pytest.approx(10.0)


def test_async_batch_line_says_how_busy_the_evaluators_were_and_the_bar_which_run() -> None:
    out = io.StringIO()
    clock = FakeClock(1000.0)
    with LogProgress(_spec(), stream=out, clock=clock) as log:
        clock.now = 1020.0
        log.finished(_done(2, 0.5, 0.5, 0.5))
        use = ScheduleStats(workers=2, wall_seconds=20.0, busy_seconds=37.0, propose_seconds=3.0)
        log.batch_end(replace(_summary(1, 0.5), schedule=use))
    assert _lines(out)[-1].startswith("batch 1 done: hypervolume 0.5; best mean task score 0.5 (trial 2); elapsed "
                                      "20s; evaluators busy 92%;")
    spec = _spec(schedule="async")
    bar = SearchProgress(spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"workers": 3})}),
                         console=Console(file=io.StringIO()))
    bar.started(_done(7, 0.1, 0.1, 0.1))
    bar.started(_done(8, 0.1, 0.1, 0.1))
    assert bar.busy_text() == "trials 7, 8 running, 1 of 3 evaluators idle"
    bar.finished(_done(7, 0.1, 0.1, 0.1))
    assert bar.busy_text() == "trials 8 running, 2 of 3 evaluators idle"
    # The batch schedule announces a whole batch before it queues: the bar names the latest trial, as it always did.
    batch = SearchProgress(_spec(), console=Console(file=io.StringIO()))
    for i in (10, 11, 12):
        batch.started(_done(i, 0.1, 0.1, 0.1))
    assert batch.busy_text() == "trial 12 (batch 1, acquisition, stage 2)"


def test_time_left_follows_the_latest_batch() -> None:
    out = io.StringIO()
    clock = FakeClock(0.0)
    log = LogProgress(_spec(), stream=out, clock=clock)  # budget 10
    log.resume_from([])
    clock.now = 4.0  # the initial design: 4 trials in 4 s, no optimiser step
    for i in range(4):
        log.finished(_done(i, 0.5, 0.5, 0.5))
    log.batch_end(_summary(0, 0.1))
    clock.now = 34.0  # the next batch: 3 trials in 30 s (its optimiser step included): 10 s a trial
    for i in range(4, 7):
        log.finished(_done(i, 0.5, 0.5, 0.5))
    assert log.per_trial_seconds() == pytest.approx(10.0)
    log.batch_end(_summary(1, 0.2))
    assert _lines(out)[4].endswith("4/10 trials, about 6s left")  # the session's 1 s a trial: 6 left
    assert _lines(out)[-1].endswith("7/10 trials, about 30s left")  # the latest batch's 10 s a trial: 3 left
    log.batch_end(_summary(2, 0.2))  # no trial since: the mark stays on batch 1's end
    assert log.last_batch == (34.0, 7)


def test_batch_line_before_any_trial_and_at_the_end_of_the_budget() -> None:
    out = io.StringIO()
    clock = FakeClock(0.0)
    log = LogProgress(_spec(initial=2, batches=0), stream=out, clock=clock)
    log.resume_from([])
    log.batch_end(_summary(0, 0.0))
    clock.now = 125.0
    log.finished(_done(0, 0.5, 0.25, 0.75))
    log.finished(_done(1, 0.75, 0.25, 0.5))  # the same mean task score, 0.5: the first trial keeps it
    log.batch_end(_summary(0, 0.5))
    assert _lines(out)[0] == "batch 0 done: hypervolume 0; elapsed 0s; 0/2 trials, time left unknown"
    assert _lines(out)[-1] == (
        "batch 0 done: hypervolume 0.5; best mean task score 0.5 (trial 0); elapsed 2m05s; 2/2 trials"
    )


def test_sources_are_plain_lines() -> None:
    out = io.StringIO()
    log = LogProgress(_spec(), stream=out)
    log.source(SourceScore(name="base", objectives={"a": 0.5, "b": 1.0, "a2": 0.25, "sparsity": -0.0}))
    log.source(SourceScore(name="a", objectives=None, error="OSError: no weights"))
    assert _lines(out) == ["source base: a=0.5 b=1 a2=0.25 sparsity=0", "source a failed: OSError: no weights"]


def test_durations_and_time_left() -> None:
    assert [duration(s) for s in (0.4, 45, 125, 3723, 90061)] == ["0s", "45s", "2m05s", "1h02m03s", "25h01m01s"]
    assert seconds_left(12.5, 4) == 50.0
    assert seconds_left(None, 4) is None
    assert seconds_left(None, 0) == 0.0


def test_a_log_file_gets_plain_lines_a_terminal_the_bar_and_quiet_nothing() -> None:
    spec = _spec()
    assert isinstance(search_progress(spec, console=Console(file=io.StringIO())), LogProgress)
    assert isinstance(search_progress(spec, console=Console(file=io.StringIO(), force_interactive=True,
                                                            force_terminal=True)), SearchProgress)
    quiet_out = io.StringIO()
    quiet = search_progress(spec, enabled=False, console=Console(file=quiet_out))
    with quiet:
        quiet.resume_from([])
        quiet.note("hidden")
        quiet.finished(_done(0, 0.1, 0.2, 0.3))
        quiet.batch_end(_summary(0, 0.5))
    assert quiet_out.getvalue() == ""


# --- hub downloads -------------------------------------------------------------------------------------------------


def _fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sizes: dict[str, int | None], *, fail: str = "",
              cached: bool = False) -> list[str]:
    """The hub lists files of `sizes` for any repo; a download writes 1000 bytes per matched file into
    tmp_path/snapshot (or raises `fail`). Returns the repos downloaded."""
    downloaded: list[str] = []

    def model_info(self: object, repo_id: str, **kwargs: object) -> SimpleNamespace:
        assert kwargs.get("files_metadata") is True
        siblings = [huggingface_hub.hf_api.RepoSibling(rfilename=n, size=s) for n, s in sizes.items()]
        return SimpleNamespace(sha="0" * 40, siblings=siblings)

    def snapshot_download(repo_id: str, *, allow_patterns: list[str], **kwargs: object) -> str:
        assert allow_patterns == list(MODEL_FILES)
        downloaded.append(repo_id)
        if fail:
            raise OSError(fail)
        folder = tmp_path / "snapshot"
        folder.mkdir(exist_ok=True)
        for name in sizes:
            if not name.endswith(".bin"):
                (folder / name).write_bytes(b"x" * 1000)
        return str(folder)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    if cached:
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(tmp_path / "cached"))
    return downloaded


SIZES = {"model.safetensors": 15_200_000_000, "config.json": 700, "tokenizer.json": 2_000_000,
         "training_args.bin": 9_000}  # the .bin is not among the files a merge needs


def test_a_hub_download_is_announced_at_its_start_and_end(monkeypatch, tmp_path: Path, capsys) -> None:
    downloaded = _fake_hub(monkeypatch, tmp_path, SIZES)
    folder = local_model_folder("org/never-cached-model")
    assert folder == str(tmp_path / "snapshot") and downloaded == ["org/never-cached-model"]
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [STAMP.sub("", line) for line in captured.err.splitlines()]
    assert lines == [
        "downloading org/never-cached-model from the hub: 3 file(s), 15.2 GB",
        "downloaded org/never-cached-model: 3.0 kB on disk in 0s",
    ]
    assert folder_size(folder) == 3000


def test_a_hub_download_without_every_size_names_the_files_only(monkeypatch, tmp_path: Path, capsys) -> None:
    _fake_hub(monkeypatch, tmp_path, {"model.safetensors": None, "config.json": 700})
    hub_model_folder("org/m")
    assert STAMP.sub("", capsys.readouterr().err.splitlines()[0]) == "downloading org/m from the hub: 2 file(s)"


def test_a_cached_or_offline_hub_model_prints_nothing(monkeypatch, tmp_path: Path, capsys) -> None:
    downloaded = _fake_hub(monkeypatch, tmp_path, SIZES, cached=True)
    assert hub_model_folder("org/m") == str(tmp_path / "snapshot")

    def offline(self: object, repo_id: str, **kwargs: object) -> None:
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    assert hub_model_folder("org/m") == str(tmp_path / "snapshot")  # the cache's copy, as before
    assert downloaded == ["org/m", "org/m"]
    assert capsys.readouterr().err == ""


def test_a_failed_hub_download_is_one_line_error_after_its_start(monkeypatch, tmp_path: Path, capsys) -> None:
    _fake_hub(monkeypatch, tmp_path, SIZES, fail="Connection reset by peer")
    with pytest.raises(MmmoError, match=r"^cannot fetch hub model 'org/m': OSError: Connection reset by peer$"):
        hub_model_folder("org/m")
    assert [STAMP.sub("", line) for line in capsys.readouterr().err.splitlines()] == [
        "downloading org/m from the hub: 3 file(s), 15.2 GB"
    ]


def test_sizes_in_decimal_units() -> None:
    assert [size_text(n) for n in (512, 3_400_000, 15_200_000_000, 2_500_000_000_000)] == [
        "512 B", "3.4 MB", "15.2 GB", "2.5 TB"
    ]


# --- the done-when test: a search's log file, read while the search runs -------------------------------------------


def test_a_search_log_file_shows_each_trial_while_the_search_runs(demo_paths, tmp_path: Path) -> None:
    from demo_specs import write_demo_spec

    # The fastest search there is: two documents a task, the initial design of two trials and no further batch.
    opt = {"initial": 2, "batches": 0, "candidates": 2, "batch_size": 1}
    spec_path = write_demo_spec(demo_paths, tmp_path, limit=2, optimizer=opt)
    out_path, err_path = tmp_path / "out.log", tmp_path / "err.log"
    trial_line = re.compile(r"^\[\d\d:\d\d:\d\d\] trial 0 \(batch 0\) done: arith=\S+ reverse=\S+ sort=\S+ "
                            r"sparsity=\S+; 6 documents; \d+\.\d s; 1/2 trials finished$", re.M)
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mmmo", "search", str(spec_path)], stdout=out, stderr=err,
                                env=dict(os.environ), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 600
        while not trial_line.search(err_path.read_text()):
            assert proc.poll() is None, f"search ended before its first trial line: {err_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no trial line in the log after 10 minutes"
            time.sleep(0.05)
        assert proc.poll() is None  # the line was in the file while the search still ran
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err_path.read_text()
    assert rc == 0, log[-3000:]
    assert "\x1b" not in log
    assert re.search(r"^\[\d\d:\d\d:\d\d\] batch 0 done: hypervolume \S+; best mean task score \S+ \(trial \d\); "
                     r"elapsed \S+; 2/2 trials$", log, re.M), log
    assert re.search(r"^\[\d\d:\d\d:\d\d\] trial 1 \(batch 0\) done: .*; 2/2 trials finished$", log, re.M), log
    assert "Pareto front" in out_path.read_text()  # the result table stays on stdout
