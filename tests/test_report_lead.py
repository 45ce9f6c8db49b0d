"""report.md leads with the chosen merge against the sources: numbers checked against a hand computation, the
overview plot, an old run without per-document outcomes, and the docs column."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console
from scipy import stats

from mmmo.results.report import pareto_table, report_markdown, write_summaries
from mmmo.results.summary import summarize_run
from mmmo.run.documents import TaskDocuments
from mmmo.run.records import SourceScore, Trial
from mmmo.run.store import RunState
from mmmo.spec.schema import spec_from_dict

# Task t0: 10 documents scored 0/1; task t1: 6 documents scored in quarters. `r` copies of each make a larger run.
MERGE_T0, MERGE_T1 = "1111111100", [0.5, 0.75, 1.0, 0.5, 0.25, 1.0]  # trial 0: 0.8 and 4/6
ARITH_T0, ARITH_T1 = "1111100101", [0.25, 0.5, 1.0, 0.5, 0.25, 0.5]  # 0.7 and 0.5: the best expert
TIES_T0, TIES_T1 = "0110110110", [0.5] * 6  # 0.6 and 0.5
BASE_T0, BASE_T1 = "1000000000", [0.0] * 6  # 0.1 and 0.0


def _spec(tmp_path: Path, *, shared_task: bool = False):
    objectives = [
        {"name": "t0", "task": "task0", "metric": "acc", "limit": 10},
        {"name": "t1", "task": "task1", "metric": "acc", "limit": 6},
    ]
    if shared_task:  # a second metric of task0 on the same documents
        objectives.append({"name": "t0_norm", "task": "task0", "metric": "acc_norm", "limit": 10})
    data = {
        "name": "lead", "base_model": "org/base", "models": ["org/arith", "org/ties"], "merge": {"method": "ties"},
        "objectives": [*objectives, {"name": "sparsity", "type": "sparsity"}],
        "optimizer": {"initial": 3, "batches": 0, "candidates": 2, "batch_size": 1},
        "output": {"dir": str(tmp_path / "run")},
    }
    return spec_from_dict(data, tmp_path)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _bits(s: str) -> list[float]:
    return [float(c) for c in s]


def _scored(t0: str, t1: list[float], r: int, *, outcomes: bool = True) -> dict:
    t0, t1 = t0 * r, t1 * r
    return {
        "objectives": {"t0": _mean(_bits(t0)), "t1": _mean(t1)},
        "outcomes": {"t0": {"task0": t0}, "t1": {"task1": t1}} if outcomes else {},
        "n_examples": {"t0": len(t0), "t1": len(t1)} if outcomes else {},
    }


def _trial(i: int, sparsity: float, t0: str, t1: list[float], r: int, *, stopped: bool = False, outcomes=True):
    s = _scored(t0, t1, r, outcomes=outcomes)
    return Trial(i, 0, [0.1 * i, 0.2], "sobol", "done", params={"arith.weight": 0.1 * i},
                 objectives={**s["objectives"], "sparsity": sparsity}, n_examples=s["n_examples"],
                 outcomes=s["outcomes"], stopped=stopped)


def _source(name: str, t0: str, t1: list[float], r: int, *, outcomes: bool = True) -> SourceScore:
    s = _scored(t0, t1, r, outcomes=outcomes)
    return SourceScore(name=name, objectives={**s["objectives"], "sparsity": -0.1}, n_examples=s["n_examples"],
                       outcomes=s["outcomes"])


def _state(r: int, *, outcomes: bool = True) -> RunState:
    trials = [
        _trial(0, -0.02, MERGE_T0, MERGE_T1, r, outcomes=outcomes),
        _trial(1, -0.01, "1010101010", [0.25] * 6, r, outcomes=outcomes),  # dominated by trial 2
        # stopped after half of t0 and t1 (0.8 and 0.5): sparsest, yet on no front (scored on part of its documents)
        _trial(2, -0.005, "11110", [0.5, 0.5, 0.5], r, stopped=True, outcomes=outcomes),
    ]
    sources = [_source(n, a, b, r, outcomes=outcomes) for n, a, b in
               (("base", BASE_T0, BASE_T1), ("arith", ARITH_T0, ARITH_T1), ("ties", TIES_T0, TIES_T1))]
    plan = {"t0": [TaskDocuments("task0", tuple(range(10 * r)), 100, "f0")],
            "t1": [TaskDocuments("task1", tuple(range(6 * r)), 100, "f1")]}
    return RunState(trials, sources, [0.0, 0.0, -0.1], {}, documents=plan if outcomes else None)


def _hand(merge_t0: str, merge_t1: list[float], src_t0: str, src_t1: list[float], r: int) -> dict[str, tuple]:
    """(diff, low, high, p) of merge - source per task and on the mean, from the formulas, r copies of the data."""
    out = {}
    ses = []
    for name, a, b in (("t0", _bits(src_t0), _bits(merge_t0)), ("t1", src_t1, merge_t1)):
        d = [y - x for x, y in zip(a, b)]
        n, mean = len(d) * r, _mean(d)
        ss = r * sum((v - mean) ** 2 for v in d)  # r copies: r times the squared deviations
        se = math.sqrt(ss / (n - 1) / n)
        half = stats.t.ppf(0.975, n - 1) * se
        if name == "t0":  # McNemar: discordant pairs, exact binomial
            n01 = r * sum(x == 0 and y == 1 for x, y in zip(a, b))
            n10 = r * sum(x == 1 and y == 0 for x, y in zip(a, b))
            m = n01 + n10
            p = min(1.0, 2 * sum(math.comb(m, k) for k in range(min(n01, n10) + 1)) / 2**m)
        else:
            p = 2 * stats.t.sf(abs(mean) / se, n - 1)
        out[name] = (mean, mean - half, mean + half, p)
        ses.append(se)
    diff = (out["t0"][0] + out["t1"][0]) / 2
    se = math.sqrt(ses[0] ** 2 + ses[1] ** 2) / 2
    half = stats.norm.ppf(0.975) * se
    out["mean"] = (diff, diff - half, diff + half, math.erfc(abs(diff) / se / math.sqrt(2)))
    return out


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _cell(v: tuple) -> str:
    return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}], {_p(v[3])}"


@pytest.mark.parametrize("r", [1, 10])
def test_the_chosen_merge_leads_with_paired_intervals(tmp_path: Path, r: int) -> None:
    spec = _spec(tmp_path)
    summary = summarize_run(spec, _state(r))
    text = report_markdown(summary, spec)
    arith = _hand(MERGE_T0, MERGE_T1, ARITH_T0, ARITH_T1, r)
    # trial 0: (0.8 + 4/6)/2 = 0.7333; arith (0.7 + 0.5)/2 = 0.6: +0.1333 on 16r paired documents
    assert arith["mean"][0] == pytest.approx(0.4 / 3, abs=1e-12)
    low, high = arith["mean"][1], arith["mean"][2]
    assert (
        f"Trial 0 scores 0.733 on the mean task score, +0.133 against the best expert arith "
        f"(95% CI [{low:+.3f}, {high:+.3f}], {16 * r} paired documents)." in text
    )
    if r == 1:  # se = sqrt(2.9/90 + (5/24)/30)/2 = 0.0990: [-0.061, +0.327]
        assert (f"{low:+.3f}", f"{high:+.3f}") == ("-0.061", "+0.327")
        assert "That difference is within noise: the 95% interval includes zero" in text
    else:  # ten times the documents: the interval shrinks by about sqrt(10) and clears zero
        assert low > 0
        assert f"That gain holds beyond noise: the whole 95% interval lies above zero ({_p(arith['mean'][3])})." in text
    assert text.index("## The chosen merge") < text.index("## Source models") < text.index("## Pareto front")
    hand = {"base": _hand(MERGE_T0, MERGE_T1, BASE_T0, BASE_T1, r), "arith": arith,
            "ties": _hand(MERGE_T0, MERGE_T1, TIES_T0, TIES_T1, r)}
    assert "| objective | trial 0 | vs base | vs arith | vs ties | test |" in text
    for row, score, test in (("t0", 0.8, "mcnemar"), ("t1", 4 / 6, "paired t"), ("mean", 2.2 / 3, "mean of tasks")):
        cells = " | ".join(_cell(hand[s][row]) for s in ("base", "arith", "ties"))
        label = "mean task" if row == "mean" else row
        assert f"| {label} | {score:.4f} | {cells} | {test} |" in text
    if r == 1:  # t0 against arith: n01 = 2, n10 = 1, p = 2 * (1 + 3)/8 = 1
        assert hand["arith"]["t0"][3] == 1.0 and "+0.100 [" in text


def test_write_summaries_draws_the_overview(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_summaries(run_dir, spec, _state(1))
    for name in ("overview.png", "pareto.png", "report.md"):
        assert (run_dir / name).stat().st_size > 1000 if name.endswith(".png") else (run_dir / name).exists()
    text = (run_dir / "report.md").read_text()
    assert "![Overview: the merges and the chosen one per task](overview.png)" in text
    assert "pareto.png shows every pairwise panel of the objectives" in text


def test_an_old_run_without_outcomes_still_renders(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = write_summaries(run_dir, spec, _state(1, outcomes=False))
    text = (run_dir / "report.md").read_text()
    assert (run_dir / "overview.png").exists()
    # the plain difference of mean task scores: 0.7333 - 0.6
    assert "Trial 0 scores 0.733 on the mean task score, +0.133 against the best expert arith." in text
    assert "no per-document outcomes in this run" in text
    # per task, the difference without interval: t0 0.8 - 0.1, 0.8 - 0.7, 0.8 - 0.6
    assert "| t0 | 0.8000 | +0.700 | +0.100 | +0.200 | — |" in text
    assert "| 0 | sobol | 0.8 | 0.6667 | -0.02 | 0.7333 | — | arith.weight=0.000 |" in text  # docs unknown
    assert summary.documents(summary.pareto[0]) is None


def test_docs_count_a_shared_task_once_and_stopped_trials_are_told(tmp_path: Path) -> None:
    spec = _spec(tmp_path, shared_task=True)  # t0 and t0_norm score task0's 10 documents
    state = _state(1)
    for c in [*state.trials, *state.sources]:
        c.n_examples["t0_norm"] = c.n_examples["t0"]
        c.objectives["t0_norm"] = c.objectives["t0"]
    summary = summarize_run(spec, state)
    assert [summary.documents(t) for t in state.trials] == [16, 16, 8]  # trial 2 stopped after 5 + 3
    assert summary.full_documents == 16
    text = report_markdown(summary, spec)
    assert [t.id for t in summary.pareto] == [0, 1]  # trial 2 (stopped) is on no front, so 1 is no longer dominated
    # objectives t0, t1, t0_norm, sparsity; the mean over three task objectives: (0.8 + 4/6 + 0.8)/3 = 0.7556
    assert "| 0 | sobol | 0.8 | 0.6667 | 0.8 | -0.02 | 0.7556 | 16 | arith.weight=0.000 |" in text
    assert "| 2 | sobol |" not in text
    assert "| arith | 0.7 | 0.5 | 0.7 | -0.1 | 0.6333 | 16 |" in text
    # 3 trials, 16 + 16 + 8 = 40 documents, against 3 * 16 = 48 at full cost
    assert (
        "- 1 of 3 trials stopped early after part of their documents (evaluation.stages): they were scored on "
        "8 documents where full scoring takes 16; the run scored 40 documents against 48 for a full-cost run"
    ) in text
    state.documents = None  # a run that recorded no plan: the full count is what an unstopped trial took
    assert summarize_run(spec, state).full_documents is None
    assert "the run scored 40 documents against 48 for a full-cost run" in report_markdown(summarize_run(spec, state), spec)


@pytest.mark.parametrize("width", [80, 160])
def test_show_table_has_a_docs_column_at_any_width(tmp_path: Path, width: int) -> None:
    summary = summarize_run(_spec(tmp_path), _state(1))
    console = Console(width=width, record=True)
    console.print(pareto_table(summary, width=console.width))
    text = console.export_text()
    assert "docs" in text
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert rows["0 *"][6] == "16" and rows["1"][6] == "16" and rows["arith"][6] == "16"
    assert "2" not in rows  # stopped early: on no front
    assert rows["0 *"][5] == "0.7333"
    assert ("arith.weight=0.00" in text) == (width >= 110)  # parameters only where they fit


def test_the_report_says_which_prior_mean_each_batch_used(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    state = _state(1)
    assert "prior mean" not in report_markdown(summarize_run(spec, state), spec)  # no GP proposed a trial
    state.trials[1].batch, state.trials[2].batch = 1, 2
    state.trials[1].prior = "fitted (forecast error 0.012 vs 0.034)"
    state.trials[2].prior = "worst (forecast error 0.5 vs 0.7)"
    text = report_markdown(summarize_run(spec, state), spec)
    assert (
        "- the GPs' prior mean (optimizer.prior_mean auto): batch 1 fitted (forecast error 0.012 vs 0.034), "
        "batch 2 worst (forecast error 0.5 vs 0.7)"
    ) in text
