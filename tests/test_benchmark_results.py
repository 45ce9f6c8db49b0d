"""benchmarks/results.py and report.fmt: the typed run records and results-file helpers search_quality, stages,
take_home and method_search share."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import results
from benchmarks.report import fmt
from benchmarks.results import StrategyRun
from benchmarks.stage_runs import StageRun

KEY = {"problem": "demo", "budget": {"initial": 2}}


def _write(path: Path, key: dict, runs: list[dict]) -> Path:
    path.write_text(json.dumps({"key": key, "runs": runs}))
    return path


def stage_run(seed: int, hv: float) -> StageRun:
    return StageRun(variant="full", seed=seed, hv=hv, best_task=0.5, docs=10, stopped=0, failed=0, seconds=1.0,
                    trials=[])


def test_part_files_join_once_and_other_keys_are_left_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "stages_demo.json"
    a = _write(tmp_path / "stages_demo.part2.json", KEY, [stage_run(0, 2.0).to_json(), stage_run(1, 3.0).to_json()])
    b = _write(tmp_path / "stages_demo.part3.json", {**KEY, "problem": "other"}, [stage_run(2, 1.0).to_json()])
    _write(tmp_path / "stages_other.part1.json", KEY, [])
    assert results.parts(out) == [a, b]
    merged = results.merge_runs([stage_run(0, 1.0)], KEY, [], results.parts(out), StageRun.from_json)
    assert [(r.seed, r.hv) for r in merged] == [(0, 1.0), (1, 3.0)]  # seed 0 not taken twice
    assert "stages_demo.part3.json left out" in capsys.readouterr().err


def test_an_included_file_of_another_key_stops_the_run(tmp_path: Path) -> None:
    other = _write(tmp_path / "x.json", {**KEY, "problem": "other"}, [])
    with pytest.raises(SystemExit, match="not comparable"):
        results.merge_runs([], KEY, [other])


def test_saved_runs_resume_only_under_the_same_key(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "search_quality_demo.json"
    runs = [StrategyRun(strategy="random", seed=0, x=[[0.1]], y=[[0.5, 0.25]], seconds=2.0, step_seconds=0.5,
                        steps=["sobol"])]
    results.save_runs(out, KEY, runs)
    stored = json.loads(out.read_text())
    assert stored["key"] == KEY and stored["runs"][0]["steps"] == ["sobol"]
    assert "y_obs" not in stored["runs"][0]  # what a run does not have is not written
    assert not out.with_suffix(".json.tmp").exists()
    assert results.stored_runs(out, KEY, fresh=False) == runs
    assert results.stored_runs(out, KEY, fresh=True) == []
    assert results.stored_runs(out, {**KEY, "problem": "other"}, fresh=False) == []


def test_results_paths_keep_their_places() -> None:
    assert results.results_path("stages", "bernoulli", False) == Path(results.__file__).parent / "data" / (
        "stages_bernoulli.json"
    )
    assert results.results_path("search_quality", "demo", True) == Path("/tmp/search_quality_demo_smoke.json")


def test_fmt_gives_median_and_interquartile_range() -> None:
    assert fmt([1.0, 2.0, 3.0, 4.0, 5.0, math.nan], 1) == "3.0 [2.0–4.0]"
    assert fmt([0.5], 0, 100) == "50 [50–50]"
    assert fmt([0.00123456, 0.00123456], 3, general=True) == "0.00123 [0.00123–0.00123]"
    assert fmt([math.inf, 1.0, 2.0], 0) == "2 [2–never]"
    assert fmt([math.nan], 2) == "–"


def test_a_stored_run_reads_back_the_same_and_a_newer_files_extra_fields_are_ignored(tmp_path: Path) -> None:
    run = StrategyRun(strategy="mm-mo", seed=3, x=[[0.1, 0.2]], y=[[0.5, 0.25]], y_obs=[[0.6, 0.2]], seconds=2.0,
                      eval_seconds=0.5, propose_seconds=[0.1], step_seconds=0.4, batches=1, spec="{}")
    assert StrategyRun.from_json(run.to_json()) == run
    assert StrategyRun.from_json({**run.to_json(), "added_later": 1}) == run
    assert run.observed == [[0.6, 0.2]]
    assert StrategyRun(strategy="random", seed=0, x=[], y=[[1.0]], seconds=0.0).observed == [[1.0]]
    old = {"strategy": "random", "seed": 0, "x": [[0.3]], "y": [[0.5]], "seconds": 1.5}  # an early file's run
    assert math.isnan(StrategyRun.from_json(old).step_seconds) and StrategyRun.from_json(old).steps is None
    assert StageRun.from_json({**stage_run(1, 2.0).to_json(), "new": 0}) == stage_run(1, 2.0)
