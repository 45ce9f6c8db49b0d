"""Every candidate, source model, resumed stage and re-scored export of a run sees the same documents."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import mmmo
from mmmo.api import SearchRecorder
from mmmo.evaluation.evaluator import CandidateEvaluator
from mmmo.results.export import export_from_run
from mmmo.results.rescore import rescore_model
from mmmo.run.documents import decode_outcomes, document_order
from mmmo.run.store import RunStore, read_events
from mmmo.runtime.errors import MmmoError

TASKS = ["demo_arith", "demo_reverse", "demo_sort"]


@pytest.fixture
def lm_eval_samples(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, list[int]]]:
    """The `samples` (document ids per task) of every lm-eval evaluate() call, in order."""
    import lm_eval.evaluator

    calls: list[dict[str, list[int]]] = []
    real = lm_eval.evaluator.evaluate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append({k: list(v) for k, v in kwargs["samples"].items()})
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    return calls


def test_candidates_sources_and_a_rescored_export_see_the_same_documents(
    demo_spec, tmp_path: Path, lm_eval_samples: list[dict[str, list[int]]]
) -> None:
    spec_path = demo_spec(
        optimizer={"initial": 2, "batches": 0, "candidates": 2, "batch_size": 2},
        evaluation={"evaluate_sources": True, "subset_seed": 7},
    )
    result = mmmo.search(spec_path, show_progress=False)
    events = read_events(result.run_dir / "trials.jsonl")
    plan = next(e["documents"] for e in events if e["event"] == "documents")
    # A seeded random sample of 10 of each task's 50 documents, recorded in the run.
    for objective, task in zip(["arith", "reverse", "sort"], TASKS):
        [docs] = plan[objective]
        assert docs["task"] == task and docs["available"] == 50
        assert docs["ids"] == document_order(50, task, 7, "random")[:10]
        assert docs["ids"] != list(range(10))
    expected = {task: sorted(plan[o][0]["ids"]) for o, task in zip(["arith", "reverse", "sort"], TASKS)}
    # 4 scorings (base + 3 experts) and 2 candidates, each one lm-eval call on the same documents.
    assert len(lm_eval_samples) == 6
    assert all(call == expected for call in lm_eval_samples)
    for scored in [*result.trials, *result.sources]:
        assert {o: len(decode_outcomes(v[t])) for (o, v), t in zip(scored.outcomes.items(), TASKS)} == {
            "arith": 10, "reverse": 10, "sort": 10
        }

    best = result.summary.best()
    assert best is not None
    # report.md leads with the chosen merge against the best expert, with a paired interval on 30 documents.
    report = (result.run_dir / "report.md").read_text()
    lead = next(line for line in report.splitlines() if line.startswith(f"Trial {best.id} scores "))
    assert "against the best expert" in lead and "(95% CI [" in lead and "30 paired documents" in lead
    [folder] = export_from_run(result.run_dir, tmp_path / "exported", trial=best.id)
    rescored = rescore_model(result.run_dir, folder)
    assert lm_eval_samples[-1] == expected
    assert [(r.objective, r.n_examples, r.same_outcomes) for r in rescored] == [
        ("arith", 10, True), ("reverse", 10, True), ("sort", 10, True)
    ]
    assert [r.value for r in rescored] == [best.objectives[r.objective] for r in rescored]  # type: ignore[index]


def test_first_documents_is_lm_eval_limit_and_the_subset_cannot_change_on_resume(demo_spec) -> None:
    spec_path = demo_spec(
        optimizer={"initial": 2, "batches": 0, "candidates": 2, "batch_size": 2},
        evaluation={"subset": "first"},
    )
    result = mmmo.search(spec_path, show_progress=False)
    assert result.run_dir.joinpath("trials.jsonl").exists()
    state = RunStore(result.run_dir).load()
    assert state.documents is not None
    assert [d.ids for o in ("arith", "reverse", "sort") for d in state.documents[o]] == [tuple(range(10))] * 3
    text = spec_path.read_text().replace("subset: first", "subset: random")
    spec_path.write_text(text)
    with pytest.raises(MmmoError, match=r"changed: evaluation\.subset"):
        mmmo.search(spec_path, show_progress=False)


def test_a_run_whose_documents_changed_is_not_resumed(demo_spec) -> None:
    spec_path = demo_spec(optimizer={"initial": 2, "batches": 1, "candidates": 2, "batch_size": 1})
    run = mmmo.search(spec_path, show_progress=False).run_dir
    journal = run / "trials.jsonl"
    lines = journal.read_text().splitlines()
    for i, line in enumerate(lines):
        event = json.loads(line)
        if event["event"] == "documents":
            event["documents"]["sort"][0]["fingerprint"] = "0" * 16  # as if demo_sort's data had been edited
            lines[i] = json.dumps(event)
        if event["event"] == "batch_end" and event["batch"] == 1:
            lines[i] = ""  # the last batch unrecorded: the resume has work to do
    journal.write_text("\n".join(ln for ln in lines if ln) + "\n")
    with pytest.raises(MmmoError, match=r"documents changed since it started \(task 'demo_sort': the chosen "
                                         r"documents' contents changed\)"):
        mmmo.resume(run, show_progress=False)


def test_a_resume_mid_stage_scores_no_document_twice(
    demo_spec, monkeypatch: pytest.MonkeyPatch, lm_eval_samples: list[dict[str, list[int]]]
) -> None:
    spec_path = demo_spec(
        optimizer={"initial": 3, "batches": 0, "candidates": 3, "batch_size": 3},
        # A tiny threshold: every trial goes on, so that the test is about the journal, not the criterion.
        evaluation={"stages": [0.3, 1.0], "stage_min_chance": 0.001, "stage_min_gain": 0.0},
    )
    scored: list[tuple[int, int]] = []  # (trial id, stage) of every evaluation
    real_evaluate = CandidateEvaluator.evaluate

    def evaluate(self: CandidateEvaluator, trial: Any) -> Any:
        scored.append((trial.id, trial.stages_scored))
        return real_evaluate(self, trial)

    monkeypatch.setattr(CandidateEvaluator, "evaluate", evaluate)
    real_partial = SearchRecorder.on_partial

    def killed_after_two(self: SearchRecorder, trial: Any) -> None:
        real_partial(self, trial)
        if trial.id == 1:
            raise KeyboardInterrupt  # killed right after trial 1's first stage was journaled

    monkeypatch.setattr(SearchRecorder, "on_partial", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        mmmo.search(spec_path, show_progress=False)
    # One trial at a time (one evaluator): trial 0 through both stages, then trial 1's first.
    assert scored == [(0, 0), (0, 1), (1, 0)]
    first_calls = list(lm_eval_samples)

    monkeypatch.setattr(SearchRecorder, "on_partial", real_partial)
    scored.clear()
    result = mmmo.search(spec_path, show_progress=False)
    # Trial 1 goes on to its second stage (decided again), trial 2 gets both; nothing is scored again.
    assert scored == [(2, 0), (1, 1), (2, 1)]
    # Attempts count the tries of the last stage: one each (a Ray retry of a later stage is not used up).
    assert [(t.status, t.stages_scored, t.stopped, t.n_examples["arith"], t.attempts) for t in result.trials] == [
        ("done", 2, False, 10, 1)
    ] * 3
    # Per task, the documents scored for each trial over both processes: each of the 10 exactly once.
    plan = RunStore(result.run_dir).load().documents
    assert plan is not None
    calls = first_calls + lm_eval_samples[len(first_calls):]
    order = [0, 0, 1, 2, 1, 2]  # the trial each lm-eval call scored, in order (one call per stage)
    per_trial: dict[int, Counter[tuple[str, int]]] = {0: Counter(), 1: Counter(), 2: Counter()}
    for trial_id, call in zip(order, calls, strict=True):
        per_trial[trial_id].update((task, i) for task, ids in call.items() for i in ids)
    for counts in per_trial.values():
        assert set(counts.values()) == {1}
        assert sorted(counts) == sorted((d.task, i) for docs in plan.values() for d in docs for i in d.ids)
    # The first stage is the first 3 documents of the run's order; the combined score is on all 10.
    assert calls[0] == {d.task: sorted(d.ids[:3]) for docs in plan.values() for d in docs}
    t0 = result.trials[0]
    arith = decode_outcomes(t0.outcomes["arith"]["demo_arith"])
    assert t0.objectives is not None and t0.objectives["arith"] == pytest.approx(sum(arith) / 10)
