"""benchmarks/results.py and report.fmt: the results-file helpers search_quality, stages and take_home share."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import results
from benchmarks.report import fmt

KEY = {"problem": "demo", "budget": {"initial": 2}}


def _write(path: Path, key: dict, runs: list[dict]) -> Path:
    path.write_text(json.dumps({"key": key, "runs": runs}))
    return path


def test_part_files_join_once_and_other_keys_are_left_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "stages_demo.json"
    a = _write(tmp_path / "stages_demo.part2.json", KEY, [{"variant": "full", "seed": 0, "hv": 2.0},
                                                          {"variant": "full", "seed": 1, "hv": 3.0}])
    b = _write(tmp_path / "stages_demo.part3.json", {**KEY, "problem": "other"}, [{"variant": "full", "seed": 2}])
    _write(tmp_path / "stages_other.part1.json", KEY, [])
    assert results.parts(out) == [a, b]
    mine = [{"variant": "full", "seed": 0, "hv": 1.0}]
    merged = results.merge_runs(mine, KEY, [], results.parts(out), label="variant")
    assert [(r["seed"], r["hv"]) for r in merged] == [(0, 1.0), (1, 3.0)]  # seed 0 not taken twice
    assert "stages_demo.part3.json left out" in capsys.readouterr().err


def test_an_included_file_of_another_key_stops_the_run(tmp_path: Path) -> None:
    other = _write(tmp_path / "x.json", {**KEY, "problem": "other"}, [])
    with pytest.raises(SystemExit, match="not comparable"):
        results.merge_runs([], KEY, [other])


def test_saved_runs_resume_only_under_the_same_key(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "search_quality_demo.json"
    runs = [{"strategy": "random", "seed": 0, "y": [[0.5, 0.25]]}]
    results.save_runs(out, KEY, runs)
    assert json.loads(out.read_text()) == {"key": KEY, "runs": runs}
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
