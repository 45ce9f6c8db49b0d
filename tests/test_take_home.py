"""The merge a user takes home: one preference (`take_home:`) chooses it in report.md, `mmmo show` and
`mmmo export`; the posterior prefers a well-measured merge to a lucky one; requirements read the run's sources;
a run where none qualifies says so in one line and exports nothing; an old run chooses as it always did."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mmmo.cli import app
from mmmo.results import export as export_module
from mmmo.results.export import select_trials
from mmmo.results.report import report_markdown, write_summaries
from mmmo.results.summary import load_run, summarize_run
from mmmo.results.take_home import resolve_target
from mmmo.run.records import SourceScore, Trial
from mmmo.run.store import SPEC_FILE, EventKind, RunState, RunStore
from mmmo.runtime.errors import MmmoError, SpecError
from mmmo.spec.schema import spec_from_dict

LUCKY, STEADY = 3, 10  # the lucky trial (0.85 on 6 documents) and the best well-measured one (0.80 on 2000)


def _data(tmp_path: Path, take_home: dict | None = None, **evaluation) -> dict:
    data = {
        "name": "th", "base_model": "org/base", "models": ["org/arith", "org/sort"], "merge": {"method": "ties"},
        "objectives": [{"name": "t0", "task": "task0", "metric": "acc"}, {"name": "t1", "task": "task1", "metric": "acc"},
                       {"name": "sparsity", "type": "sparsity"}],
        "optimizer": {"initial": 4, "batches": 1, "candidates": 2, "batch_size": 2},
        "evaluation": evaluation, "output": {"dir": str(tmp_path / "run")},
    }
    return data if take_home is None else {**data, "take_home": take_home}


def _spec(tmp_path: Path, take_home: dict | None = None, **evaluation):
    return spec_from_dict(_data(tmp_path, take_home, **evaluation), tmp_path)


def _se(p: float, docs: int) -> float:
    return math.sqrt(p * (1 - p) / docs)


def _trial(i: int, x: float, t0: float, t1: float | None = None, *, docs: int = 2000, sparsity: float = -0.5) -> Trial:
    t1 = t0 if t1 is None else t1
    return Trial(
        i, 0, [x, 0.5, 0.5, 0.5], "sobol", "done", objectives={"t0": t0, "t1": t1, "sparsity": sparsity},
        n_examples={"t0": docs, "t1": docs}, stderr={"t0": _se(t0, docs), "t1": _se(t1, docs), "sparsity": 0.0},
    )


def _source(name: str, t0: float, t1: float) -> SourceScore:
    return SourceScore(name=name, objectives={"t0": t0, "t1": t1, "sparsity": 0.0}, n_examples={"t0": 2000, "t1": 2000},
                       stderr={"t0": _se(t0, 2000), "t1": _se(t1, 2000), "sparsity": 0.0})


def _lucky_run() -> list[Trial]:
    """A smooth, well-measured slope 0.45 + 0.35 x (0.80 at x = 1, the sparsest), and at x = 0.3, among neighbours
    near 0.55, one trial that scored 0.85 on 6 documents: highest observed, yet what its neighbours say is ~0.55."""
    trials = [_trial(i, i / 10, 0.45 + 0.35 * i / 10, sparsity=-0.5 + 0.4 * i / 10) for i in range(11)]
    trials[LUCKY] = _trial(LUCKY, 0.3, 0.85, docs=6, sparsity=-0.38)
    return trials


def _sources() -> list[SourceScore]:
    return [_source("base", 0.40, 0.30), _source("arith", 0.70, 0.40), _source("sort", 0.45, 0.60)]


def _write_run(tmp_path: Path, trials: list[Trial], take_home: dict | None = None) -> Path:
    spec = _spec(tmp_path, take_home)
    journal = RunStore(spec.run_dir).open(spec)
    for s in _sources():
        journal.append(EventKind.SOURCE, source=s.to_json())
    for t in trials:
        journal.record_trial(t)
    return spec.run_dir


def _exported(monkeypatch, *args: str) -> tuple[list[int], object]:
    """The trial ids `mmmo export RUN ...` would write (the merge itself is not built), and the CLI result."""
    written: list[int] = []

    def fake(spec, trials, out, merger=None, **kw):
        written.extend(t.id for t in trials)
        return [Path(out) / f"trial-{t.id}" for t in trials]

    monkeypatch.setattr(export_module, "export_trials", fake)
    return written, CliRunner().invoke(app, ["export", *args])


def test_report_show_and_export_take_home_the_same_well_measured_trial(tmp_path: Path, monkeypatch) -> None:
    run_dir = _write_run(tmp_path, _lucky_run())
    spec, state, summary = load_run(run_dir)
    assert spec.take_home.choose == "posterior"  # the default of a new spec
    assert summary.best("t0").id == LUCKY  # highest observed: the lucky one
    assert summary.best().id == STEADY  # the posterior shrinks it towards its neighbours

    write_summaries(run_dir, spec, state)
    report = (run_dir / "report.md").read_text()
    assert f"- take-home merge: trial {STEADY} (mean task score 0.8000)" in report
    assert (f"Trial {STEADY} scores 0.800 on the mean task score, +0.250 against the best expert arith. Chosen as "
            "the take-home merge by the highest posterior mean of the mean task score among the 11 trials scored "
            "in full.") in report
    chosen_rows = [line for line in report.splitlines() if line.endswith("| chosen, front |")]
    assert [line.split("|")[1].strip() for line in chosen_rows] == [str(STEADY)]

    shown = CliRunner().invoke(app, ["show", str(run_dir)], env={"COLUMNS": "160"})
    assert shown.exit_code == 0, shown.output
    assert f" {STEADY} * " in shown.output and f" {LUCKY} * " not in shown.output
    assert (f"take-home merge (*): trial {STEADY}, the highest posterior mean of the mean task score among the 11 "
            "trials scored in full") in shown.output

    written, r = _exported(monkeypatch, str(run_dir), "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert written == [STEADY]
    # Re-chosen at export time by the observed rule, nothing re-run: the lucky trial.
    written, r = _exported(monkeypatch, str(run_dir), "--choose", "observed", "--out", str(tmp_path / "o2"))
    assert r.exit_code == 0 and written == [LUCKY]
    written, r = _exported(monkeypatch, str(run_dir), "--best", "sparsity", "--out", str(tmp_path / "o3"))
    assert r.exit_code == 0 and written == [STEADY]  # --best OBJECTIVE: highest observed on it, as always


def test_the_choice_is_the_same_on_every_read(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    picks = {summarize_run(spec, RunState(_lucky_run(), _sources(), None, {})).take_home.trial.id for _ in range(3)}
    assert picks == {STEADY}
    reversed_journal = summarize_run(spec, RunState(_lucky_run()[::-1], _sources(), None, {}))
    assert reversed_journal.best().id == STEADY


def test_a_posterior_that_cannot_be_fitted_falls_back_to_observed_and_says_so(tmp_path: Path, monkeypatch) -> None:
    from mmmo.optimizer import target as target_module

    monkeypatch.setattr(target_module, "fit_models", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    spec = _spec(tmp_path)
    with pytest.raises(RuntimeError):  # a GP that raises is an error, not a silent fallback
        _ = summarize_run(spec, RunState(_lucky_run(), _sources(), None, {})).take_home

    class NotFinite:  # a posterior with NaN means (a degenerate fit) falls back to the observed scores
        def posterior(self, X):
            return type("P", (), {"mean": torch.full((X.shape[0], 1), math.nan)})()

    monkeypatch.setattr(target_module, "fit_models", lambda *a, **k: NotFinite())
    choice = summarize_run(spec, RunState(_lucky_run(), _sources(), None, {})).take_home
    assert choice.trial.id == LUCKY
    assert choice.how == ("the highest observed value of the mean task score among the 11 trials scored in full "
                          "(the posterior's GP could not be fitted)")


def test_a_relative_requirement_reads_the_source_score_from_the_run(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"require": ["t1 >= base", "t0 >= sort - 0.05"], "choose": "observed"})
    trials = [
        _trial(0, 0.1, 0.95, 0.45),  # mean 0.70, t1 below the base's 0.5 in the first run
        _trial(1, 0.5, 0.70, 0.55),  # mean 0.625: meets both
        _trial(2, 0.9, 0.55, 0.95),  # mean 0.75, t0 below sort's 0.70 - 0.05
    ]
    sources = [_source("base", 0.3, 0.5), _source("arith", 0.6, 0.4), _source("sort", 0.70, 0.6)]
    names, tasks = ["t0", "t1", "sparsity"], ["t0", "t1"]
    target, texts = resolve_target(spec.take_home, names, tasks, sources)
    assert target.weights == (1.0, 1.0, 0.0)
    assert target.minimums == ((1, 0.5), (0, pytest.approx(0.65)))
    assert texts == ("t1 >= base (0.5)", "t0 >= sort - 0.05 (0.65)")
    summary = summarize_run(spec, RunState(trials, sources, None, {}))
    assert summary.best().id == 1
    assert summary.take_home.infeasible == {0: ("t1 >= base (0.5)",), 2: ("t0 >= sort - 0.05 (0.65)",)}
    report = report_markdown(summary, spec)
    assert ("Requirements (take_home.require): t1 >= base (0.5), t0 >= sort - 0.05 (0.65); 2 of 3 trials scored in "
            "full break at least one.") in report
    assert "| front, infeasible: breaks t1 >= base (0.5) |" in report
    # The same requirement in a run whose base scored 0.4 on t1: trial 0 now qualifies and wins.
    weaker_base = [_source("base", 0.3, 0.4), *sources[1:]]
    assert summarize_run(spec, RunState(trials, weaker_base, None, {})).best().id == 0
    for broken, line in (
        (sources[1:], "take_home.require 't1 >= base': the source model base has not been scored in this run"),
        ([SourceScore(name="base", objectives=None, error="CUDA out of memory"), *sources[1:]],
         "take_home.require 't1 >= base': the source model base failed to score (CUDA out of memory)"),
    ):
        with pytest.raises(MmmoError) as err:
            summarize_run(spec, RunState(trials, broken, None, {})).best()
        assert str(err.value) == line


def test_no_qualifying_merge_is_one_line_and_exports_nothing_unless_asked(tmp_path: Path, monkeypatch) -> None:
    run_dir = _write_run(tmp_path, _lucky_run(), {"require": ["t1 >= 0.9"]})
    spec, state, summary = load_run(run_dir)
    none = ("No evaluated merge meets every take_home requirement (t1 >= 0.9): all 11 trials scored in full break "
            "at least one.")
    assert summary.best() is None and summary.take_home.none_qualifies == none
    report = report_markdown(summary, spec)
    assert f"## The chosen merge\n\n{none}\n" in report
    assert "overview.png" not in report and "take-home merge: trial" not in report
    assert report.count("infeasible: breaks t1 >= 0.9 |") == 11

    written, r = _exported(monkeypatch, str(run_dir), "--out", str(tmp_path / "out"))
    assert r.exit_code == 2 and written == [] and not (tmp_path / "out").exists()
    assert r.output.strip() == (
        f"error: {none} Nothing exported: mmmo export --allow-infeasible takes the best by the preference ignoring "
        "them."
    )
    written, r = _exported(monkeypatch, str(run_dir), "--pareto", "--out", str(tmp_path / "out"))
    assert r.exit_code == 2 and written == [] and "no trial of the Pareto front meets" in r.output
    written, r = _exported(monkeypatch, str(run_dir), "--allow-infeasible", "--out", str(tmp_path / "out"))
    assert r.exit_code == 0 and written == [STEADY]
    assert (f"{none} Exporting trial {STEADY}, chosen by the highest posterior mean of the mean task score among "
            "the 11 trials scored in full (ignoring the requirements, which none meets).") in r.output
    shown = CliRunner().invoke(app, ["show", str(run_dir)], env={"COLUMNS": "160"})
    assert shown.exit_code == 0 and none in shown.output.replace("\n", " ")


def test_a_constrained_choice_never_takes_an_infeasible_trial(tmp_path: Path, monkeypatch) -> None:
    run_dir = _write_run(tmp_path, _lucky_run(), {"require": ["sparsity >= -0.3"]})
    _, _, summary = load_run(run_dir)
    infeasible = set(summary.take_home.infeasible)
    assert infeasible == {0, 1, 2, LUCKY, 4}  # sparsity -0.5 + 0.04 i < -0.3 for i < 5; the lucky one -0.38
    assert summary.best().id == STEADY and summary.best().id not in infeasible
    written, r = _exported(monkeypatch, str(run_dir), "--pareto", "--out", str(tmp_path / "p"))
    assert r.exit_code == 0 and written == [STEADY]  # the front {LUCKY, STEADY} less the infeasible lucky one
    # Re-chosen with other requirements at export time: t0 >= 0.7 leaves 8, 9, 10 (and the lucky one).
    written, r = _exported(monkeypatch, str(run_dir), "--require", "t0>=0.7", "--require", "sparsity >= -0.1",
                           "--choose", "observed", "--out", str(tmp_path / "q"))
    assert r.exit_code == 0 and written == [STEADY]
    written, r = _exported(monkeypatch, str(run_dir), "--weights", "sparsity=1", "--require", "t0 >= base + 0.2",
                           "--out", str(tmp_path / "w"))
    assert r.exit_code == 0 and written == [STEADY]  # sparsest among t0 >= 0.6


@pytest.mark.parametrize(
    ("take_home", "evaluation", "message"),
    [
        ({"weights": {"t9": 1}}, {}, "take_home.weights: 't9' is not an objective of this spec (t0, t1, sparsity)"),
        ({"weights": {"t0": -1, "t1": 2}}, {}, "take_home.weights: must not be negative (t0: -1)"),
        ({"weights": {"t0": 0, "t1": 0}}, {}, "take_home.weights: all zero: give at least one objective a positive "
                                              "weight"),
        ({"require": ["t0 => 0.5"]}, {}, "take_home.require: 't0 => 0.5' is malformed: expected '<objective> >= "
                                         "<number>' or '<objective> >= <source> [+|- <number>]'"),
        ({"require": ["t0 >= base -"]}, {}, "take_home.require: 't0 >= base -' is malformed: expected '<objective> "
                                            ">= <number>' or '<objective> >= <source> [+|- <number>]'"),
        ({"require": ["t0 >= 0.5", "t7 >= base"]}, {},
         "take_home.require[1] 't7 >= base': 't7' is not an objective of this spec (t0, t1, sparsity)"),
        ({"require": ["t0 >= base-0.02"]}, {},
         "take_home.require[0] 't0 >= base-0.02': 'base-0.02' is neither a number nor a source model (base, arith, "
         "sort); an offset needs blanks around its sign, e.g. 'base - 0.02'"),
        ({"require": ["t0 >= arith"]}, {"evaluate_sources": False},
         "take_home.require[0] 't0 >= arith': relative to arith, which evaluation.evaluate_sources: false never "
         "scores"),
        ({"choose": "luck"}, {}, "take_home.choose: got 'luck': input should be 'posterior' or 'observed'"),
        ({"weight": {"t0": 1}}, {}, "take_home.weight: unknown key"),
    ],
)
def test_spec_errors_are_one_line_naming_the_item(tmp_path: Path, take_home, evaluation, message) -> None:
    with pytest.raises(SpecError) as err:
        _spec(tmp_path, take_home, **evaluation)
    assert str(err.value) == message


def test_a_section_that_is_valid_reads_as_written(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"weights": {"t0": 2, "sparsity": 0.5}, "require": ["t1>=0.6", "t0 >= sort + 1e-2"]})
    assert [(r.objective, r.source, r.offset) for r in spec.take_home.requirements] == [
        ("t1", None, 0.6), ("t0", "sort", 0.01)
    ]
    assert spec.take_home.weight_of(["t0", "t1", "sparsity"], ["t0", "t1"]) == (2.0, 0.0, 0.5)
    assert spec.take_home.choose == "posterior"
    summary = summarize_run(spec, RunState(_lucky_run(), _sources(), None, {}))
    assert summary.take_home.preference == "the weighted mean of 2 × t0 + 0.5 × sparsity"


def test_an_old_run_chooses_exactly_as_before(tmp_path: Path, monkeypatch) -> None:
    run_dir = _write_run(tmp_path, _lucky_run())
    stored = yaml.safe_load((run_dir / SPEC_FILE).read_text())
    del stored["take_home"]  # a run written before the section existed
    (run_dir / SPEC_FILE).write_text(yaml.safe_dump(stored, sort_keys=False))
    spec, state, summary = load_run(run_dir)
    assert spec.take_home.choose == "observed" and spec.take_home.weights is None and spec.take_home.require == []
    assert summary.best().id == LUCKY  # the highest observed mean task score, as before
    assert "Chosen as the take-home merge by the highest observed value of the mean task score among the 11" in (
        report_markdown(summary, spec)
    )
    assert [t.id for t in select_trials(summary)] == [LUCKY]
    written, r = _exported(monkeypatch, str(run_dir), "--out", str(tmp_path / "out"))
    assert r.exit_code == 0 and written == [LUCKY]
    RunStore(run_dir).open(RunStore(run_dir).stored_spec())  # resumes: the stored spec is not a changed one


def test_best_per_method_is_the_take_home_choice_within_each_method(tmp_path: Path) -> None:
    data = _data(tmp_path, {"choose": "observed", "require": ["t1 >= 0.5"]})
    data["merge"]["method"] = ["ties", "task_arithmetic"]
    spec = spec_from_dict(data, tmp_path)
    trials = [_trial(0, 0.1, 0.9, 0.4), _trial(1, 0.2, 0.6, 0.6), _trial(2, 0.3, 0.7, 0.55),
              _trial(3, 0.4, 0.95, 0.45)]
    for t, m in zip(trials, ["ties", "ties", "task_arithmetic", "task_arithmetic"]):
        t.method = m
    summary = summarize_run(spec, RunState(trials, _sources(), None, {}))
    assert summary.best().id == 2
    assert {m: t.id for m, t in summary.best_per_method().items()} == {"ties": 1, "task_arithmetic": 2}
