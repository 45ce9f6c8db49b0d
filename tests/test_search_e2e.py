"""A whole search on the demo models through the Python API and the CLI: journal, front, summaries, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import mmmo
import mmmo.api
from mmmo.cli import app
from mmmo.optimizer.pareto import pareto_mask
from mmmo.run.store import fold_events, read_events


@pytest.fixture(scope="module")
def finished_run(demo_paths, tmp_path_factory):
    from demo_specs import write_demo_spec

    folder = tmp_path_factory.mktemp("e2e")
    spec_path = write_demo_spec(
        demo_paths, folder, evaluation={"evaluate_sources": True}, output={"export": "best"}
    )
    return spec_path, mmmo.search(spec_path, show_progress=False)


def test_search_fills_the_budget_and_journals_every_trial(finished_run) -> None:
    _, result = finished_run
    assert len(result.trials) == 4 + 1 * 2
    assert [t.id for t in result.trials] == list(range(6))
    assert all(t.status == "done" for t in result.trials)
    assert [t.batch for t in result.trials] == [0, 0, 0, 0, 1, 1]
    # The standard recipe (weight 0.5, density 0.5 for every model) opens the initial design.
    assert [t.step for t in result.trials[:4]] == ["standard", "sobol", "sobol", "sobol"]
    assert result.trials[0].params == pytest.approx({n: 0.5 for n in result.trials[0].params})
    events = read_events(result.run_dir / "trials.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds.count("proposed") == 6 and kinds.count("done") == 6 and kinds.count("batch_end") == 2
    state = fold_events(events)
    for t in state.trials:
        assert set(t.objectives) == {"arith", "reverse", "sort", "sparsity"}
        assert all(0.0 <= t.objectives[n] <= 1.0 for n in ("arith", "reverse", "sort"))
        assert t.objectives["sparsity"] < 0.0  # every merge moves away from the base
        assert set(t.params) == {f"{m}.{k}" for m in ("arith", "reverse", "sort") for k in ("weight", "density")}
        assert t.n_examples == {"arith": 10, "reverse": 10, "sort": 10}
        # lm-eval's standard error of each exact-match score (sample std / sqrt n), sparsity exact.
        for n in ("arith", "reverse", "sort"):
            p = t.objectives[n]
            assert t.stderr[n] == pytest.approx((p * (1 - p) * 10 / 9 / 10) ** 0.5, abs=1e-9)
        assert t.stderr["sparsity"] == 0.0
        assert t.merge_seconds is not None and t.eval_seconds is not None
    assert state.ref_point is not None and len(state.ref_point) == 4


def test_sources_are_scored_once_beside_the_front(finished_run, demo_paths) -> None:
    _, result = finished_run
    by_name = {s.name: s for s in result.sources}
    assert set(by_name) == {"base", "arith", "reverse", "sort"}
    assert by_name["base"].objectives["sparsity"] == 0.0
    # Sparsity of a source is −mean |source − base| over the merged parameters, measured here directly. What
    # the sources score on the tasks is a claim about the trained demo, asserted once in test_demo.py.
    from safetensors.torch import load_file

    base = load_file(demo_paths.base / "model.safetensors")
    for skill, folder in demo_paths.experts.items():
        expert = load_file(folder / "model.safetensors")
        total = sum(float((expert[k].double() - v.double()).abs().sum()) for k, v in base.items())
        expected = -total / sum(v.numel() for v in base.values())
        assert by_name[skill].objectives["sparsity"] == pytest.approx(expected, rel=1e-5)
        assert all(0.0 <= by_name[skill].objectives[s] <= 1.0 for s in ("arith", "reverse", "sort"))


def test_pareto_front_is_exactly_the_non_dominated_trials(finished_run) -> None:
    _, result = finished_run
    names = ["arith", "reverse", "sort", "sparsity"]
    Y = torch.tensor([[t.objectives[n] for n in names] for t in result.trials], dtype=torch.float64)
    expected = {t.id for t, keep in zip(result.trials, pareto_mask(Y).tolist()) if keep}
    assert {t.id for t in result.pareto} == expected
    data = json.loads((result.run_dir / "pareto.json").read_text())
    assert {p["trial"] for p in data["pareto"]} == expected
    csv_lines = (result.run_dir / "pareto.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("trial,batch,step,arith,reverse,sort,sparsity,mean_task_score")
    assert len(csv_lines) == 1 + len(expected)


def test_summary_files_and_export(finished_run) -> None:
    spec_path, result = finished_run
    for name in ("pareto.png", "hypervolume.png"):
        assert (result.run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_run = mmmo.load_spec(result.run_dir / "spec.yaml")
    assert as_run.optimizer == mmmo.load_spec(spec_path).optimizer and as_run.model_names == ["arith", "reverse", "sort"]
    report = (result.run_dir / "report.md").read_text()
    assert "## Source models" in report and "| base |" in report
    hv = [e["hypervolume"] for e in read_events(result.run_dir / "trials.jsonl") if e["event"] == "batch_end"]
    assert f"- hypervolume after batch 1: {hv[-1]:.6g}" in report
    front = report.split("## Pareto front")[1].split("## Every trial")[0]
    front_rows = [line for line in front.splitlines() if line.startswith("| ")][1:]  # below the header
    assert sorted(int(r.split("|")[1]) for r in front_rows) == sorted(t.id for t in result.pareto)
    recipe_trial = result.trials[0]
    gain = result.summary.mean_task_score(result.summary.best()) - result.summary.mean_task_score(recipe_trial)
    assert f"- standard recipe: trial 0 ({result.summary.mean_task_score(recipe_trial):.4f}); " \
        f"the best merge is {gain:+.4f} beyond it" in report
    best = result.summary.best()
    assert [p.name for p in result.exported] == [f"trial-{best.id}"]
    folder = result.exported[0]
    assert (folder / "config.json").exists() and (folder / "mergekit_config.yml").exists()
    recipe = yaml.safe_load((folder / "mergekit_config.yml").read_text())
    assert recipe["merge_method"] == "dare_ties"
    assert [round(m["parameters"]["weight"], 6) for m in recipe["models"]] == [
        round(best.params[f"{n}.weight"], 6) for n in ("arith", "reverse", "sort")
    ]


def test_search_on_a_finished_run_evaluates_nothing_more(finished_run) -> None:
    spec_path, result = finished_run
    before = (result.run_dir / "trials.jsonl").read_bytes()
    again = mmmo.search(spec_path, show_progress=False)
    assert (result.run_dir / "trials.jsonl").read_bytes() == before
    assert [t.objectives for t in again.trials] == [t.objectives for t in result.trials]


def test_run_killed_before_its_last_batch_end_is_completed_once(finished_run, monkeypatch) -> None:
    spec_path, result = finished_run
    journal = result.run_dir / "trials.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    assert last["event"] == "batch_end"
    journal.write_bytes(b"".join(lines[:-1]))  # as if killed right after the last evaluation

    again = mmmo.search(spec_path, show_progress=False)
    after = journal.read_bytes().splitlines(keepends=True)
    assert after[:-1] == lines[:-1]  # nothing evaluated again
    end = json.loads(after[-1])
    assert (end["event"], end["batch"], end["hypervolume"]) == ("batch_end", last["batch"], last["hypervolume"])
    assert [t.objectives for t in again.trials] == [t.objectives for t in result.trials]

    # Now the run is complete: a further search neither loads a model nor writes to the journal.
    monkeypatch.setattr(mmmo.api, "make_pool", lambda *a, **k: pytest.fail("a complete run loaded models"))
    mmmo.search(spec_path, show_progress=False)
    assert journal.read_bytes().splitlines(keepends=True) == after


def test_cli_show_json_and_table(finished_run) -> None:
    _, result = finished_run
    runner = CliRunner()
    out = runner.invoke(app, ["show", str(result.run_dir), "--json"])
    assert out.exit_code == 0, out.output
    assert {p["trial"] for p in json.loads(out.stdout)["pareto"]} == {t.id for t in result.pareto}
    out = runner.invoke(app, ["show", str(result.run_dir)])
    assert out.exit_code == 0 and "6 done, 0 failed, 0 pending of a budget of 6" in out.stdout


def test_pareto_table_drops_the_parameters_column_on_a_narrow_console(finished_run) -> None:
    from rich.console import Console

    from mmmo.results.report import pareto_table

    _, result = finished_run
    rendered = {}
    for width in (80, 160):
        console = Console(width=width, record=True)
        console.print(pareto_table(result.summary, width=console.width))
        rendered[width] = console.export_text()
    assert "parameters" in rendered[160] and "arith.weight=" in rendered[160]
    assert "parameters:" in rendered[80] and "arith.weight=" not in rendered[80]  # the caption points elsewhere
    for t in result.pareto:  # every front trial and its mean task score stay readable at 80 columns
        assert f"{result.summary.mean_task_score(t):.4f}" in rendered[80]


def test_export_trial_twice_gives_identical_tensors(finished_run, tmp_path: Path) -> None:
    _, result = finished_run
    runner = CliRunner()
    tid = result.trials[-1].id
    for out in ("a", "b"):
        r = runner.invoke(app, ["export", str(result.run_dir), "--trial", str(tid), "--out", str(tmp_path / out)])
        assert r.exit_code == 0, r.output
    files_a = sorted((tmp_path / "a" / f"trial-{tid}").glob("*.safetensors"))
    assert files_a
    for f in files_a:
        assert f.read_bytes() == (tmp_path / "b" / f"trial-{tid}" / f.name).read_bytes()
    r = runner.invoke(app, ["export", str(result.run_dir), "--trial", "99", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "trial 99 is not a finished trial" in r.output
