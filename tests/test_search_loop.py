"""The loop: journaling order, resume after an interrupt, failed trials, reference point, summaries."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterable

import pytest
import torch

from mmmo.optimizer import strategies
from mmmo.optimizer.acquisition import AcqBudget
from mmmo.optimizer.loop import run_loop
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.pareto import hypervolume, infer_ref_point
from mmmo.run.records import Trial
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import OptimizerSpec
from tests.search_problems import Journal

T = torch.float64
CHEAP = AcqBudget(num_restarts=2, raw_samples=32, mc_samples=16, maxiter=20)
NAMES = ["left", "right"]
TASKS = ["left", "right"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def score(x: list[float]) -> dict[str, float]:
    return {
        "left": -((x[0] - 0.3) ** 2) - (x[1] - 0.7) ** 2,
        "right": -((x[0] - 0.7) ** 2) - (x[1] - 0.3) ** 2,
    }


class Evaluator:
    """Scores trials, fails those with x0 > fail_above, optionally interrupts after `stop_after` trials."""

    def __init__(self, fail_above: float = 2.0, stop_after: int | None = None) -> None:
        self.calls: Counter[int] = Counter()
        self.fail_above = fail_above
        self.stop_after = stop_after

    def __call__(self, pending: list[Trial]) -> Iterable[Trial]:
        for t in pending:
            if self.stop_after is not None and sum(self.calls.values()) == self.stop_after:
                raise KeyboardInterrupt
            self.calls[t.id] += 1
            done = copy.deepcopy(t)
            if t.x[0] > self.fail_above:
                done.status, done.error = "failed", "merge blew up"
            else:
                done.status, done.objectives = "done", score(t.x)
            yield done


def run(opt: OptimizerSpec, journal: Journal, evaluate: Evaluator, trials: list[Trial] | None = None):
    options = LoopOptions(
        opt=opt,
        dim=2,
        objective_names=NAMES,
        task_objective_names=TASKS,
        ref_point=journal.ref_point,
        to_params=lambda x: {"a.weight": x[0], "b.weight": x[1]},
        budget=CHEAP,
    )
    return run_loop(trials if trials is not None else journal.history(), options, evaluate, journal)


OPT = OptimizerSpec(strategy="mm-mo", initial=4, batches=3, candidates=4, batch_size=2, seed=5)


@pytest.fixture(scope="module")
def full_run():
    journal, ev = Journal(), Evaluator()
    return run(OPT, journal, ev), journal, ev


def test_fresh_run_numbers_journals_and_summarises(full_run) -> None:
    result, journal, ev = full_run
    assert [t.id for t in result.trials] == list(range(10))
    assert [t.batch for t in result.trials] == [0] * 4 + [1, 1, 2, 2, 3, 3]
    assert all(t.status == "done" for t in result.trials)
    assert set(ev.calls.values()) == {1}
    # Every trial is journaled as proposed before anything of its batch is evaluated.
    for b in range(4):
        ids = [t.id for t in result.trials if t.batch == b]
        first_finish = journal.events.index(("finished", ids[0]))
        assert all(journal.events.index(("proposed", i)) < first_finish for i in ids)
    assert result.trials[5].params == {"a.weight": result.trials[5].x[0], "b.weight": result.trials[5].x[1]}
    # Each GP-proposed trial journals the prior mean its batch's GPs were fitted with, the initial
    # design none (and then no field at all, as a journal written before the field).
    assert all(t.prior is None and "prior" not in journal.trials[t.id] for t in result.trials[:4])
    for t in result.trials[4:]:
        assert journal.trials[t.id]["prior"] == t.prior
        assert t.prior == "fitted"  # 2 objectives: "auto" keeps the fitted prior without asking the data
    # The reporting reference point comes from batch 0 alone and stays fixed.
    Y = torch.tensor([[t.objectives[n] for n in NAMES] for t in result.trials], dtype=T)
    assert result.ref_point == pytest.approx(infer_ref_point(Y[:4]).tolist())
    assert journal.ref_point == result.ref_point
    assert [s.batch for s in journal.summaries] == [0, 1, 2, 3]
    assert [s.n_done for s in journal.summaries] == [4, 2, 2, 2]
    hvs = result.hypervolumes
    assert hvs == [s.hypervolume for s in journal.summaries]
    assert all(b >= a for a, b in itertools.pairwise(hvs))  # cumulative, fixed reference point
    assert hvs[-1] == pytest.approx(hypervolume(Y, result.ref_point))
    last = journal.summaries[-1]
    assert result.pareto_ids == last.pareto_ids
    best_left = max(result.trials, key=lambda t: t.objectives["left"])
    assert last.best_per_objective["left"] == (best_left.id, best_left.objectives["left"])


def test_resume_after_interrupt_loses_and_repeats_nothing(full_run) -> None:
    result, _, _ = full_run
    journal = Journal()
    first = Evaluator(stop_after=7)  # batch 0 (4) + batch 1 (2) + one trial of batch 2
    with pytest.raises(KeyboardInterrupt):
        run(OPT, journal, first)
    assert len(journal.trials) == 8 and sum(first.calls.values()) == 7
    second = Evaluator()
    resumed = run(OPT, journal, second)
    calls = first.calls + second.calls
    assert sorted(calls) == list(range(10)) and set(calls.values()) == {1}
    assert sorted(second.calls) == [7, 8, 9]  # the rest of batch 2, then batch 3
    assert [(t.id, t.batch, t.x, t.step) for t in resumed.trials] == [
        (t.id, t.batch, t.x, t.step) for t in result.trials
    ]
    assert resumed.hypervolumes == pytest.approx(result.hypervolumes)
    assert [s.batch for s in journal.summaries] == [0, 1, 2, 3]  # batch 2 summarised once, after resuming


def test_complete_history_is_not_touched(full_run) -> None:
    result, _, _ = full_run
    journal, ev = Journal(), Evaluator()
    journal.ref_point = result.ref_point
    again = run(OPT, journal, ev, trials=copy.deepcopy(result.trials))
    assert not ev.calls and not journal.events and not journal.summaries
    assert again.hypervolumes == pytest.approx(result.hypervolumes)


def test_failed_trials_stay_out_of_the_gp_and_are_never_reproposed(monkeypatch: pytest.MonkeyPatch) -> None:
    fitted: list[torch.Tensor] = []
    real_fit = strategies.fit_models_with_prior

    def spy(X: torch.Tensor, Y: torch.Tensor, Yvar: torch.Tensor | None = None, prior_mean: str = "auto", **kw):
        assert torch.isfinite(Y).all()
        assert len(kw["batches"]) == X.shape[0]
        fitted.append(X.clone())
        return real_fit(X, Y, Yvar, prior_mean, **kw)

    monkeypatch.setattr(strategies, "fit_models_with_prior", spy)
    journal, ev = Journal(), Evaluator(fail_above=0.6)
    opt = OPT.model_copy(update={"strategy": "qnehvi", "batches": 2})
    result = run(opt, journal, ev)
    failed = [t for t in result.trials if t.status == "failed"]
    assert failed, "the test needs some failures"
    assert fitted
    for X in fitted:
        assert all(x[0] <= 0.6 for x in X.tolist())
        assert X.shape[0] == sum(1 for t in result.trials if t.status == "done" and t.x in X.tolist())
    xs = [tuple(t.x) for t in result.trials]
    assert len(set(xs)) == len(xs)
    assert sum(s.n_failed for s in journal.summaries) == len(failed)


def test_all_failed_initial_design_falls_back_to_sobol() -> None:
    journal, ev = Journal(), Evaluator(fail_above=-1.0)
    result = run(OPT.model_copy(update={"batches": 1}), journal, ev)
    assert [t.step for t in result.trials if t.batch == 1] == ["sobol", "sobol"]
    assert result.ref_point is None and result.hypervolumes == [0.0, 0.0]
    assert result.pareto_ids == []


def test_evaluator_contract_violations_are_reported() -> None:
    opt = OPT.model_copy(update={"batches": 0})

    def drops_one(pending: list[Trial]) -> Iterable[Trial]:
        for t in pending[1:]:
            t.status, t.objectives = "done", score(t.x)
            yield t

    with pytest.raises(MmmoError, match=r"without a result for trial\(s\) \[0\]"):
        run(opt, Journal(), drops_one)  # type: ignore[arg-type]

    def no_objectives(pending: list[Trial]) -> Iterable[Trial]:
        for t in pending:
            t.status, t.objectives = "done", {"left": 0.0}
            yield t

    with pytest.raises(MmmoError, match="trial 0 finished without objective"):
        run(opt, Journal(), no_objectives)  # type: ignore[arg-type]


def test_loop_options_are_checked_once_and_never_change() -> None:
    with pytest.raises(MmmoError, match="task objective"):
        LoopOptions(opt=OPT, dim=2, objective_names=NAMES, task_objective_names=["left", "up"])
    with pytest.raises(MmmoError, match="ref_point has 1 values but there are 2 objectives"):
        LoopOptions(opt=OPT, dim=2, objective_names=NAMES, task_objective_names=TASKS, ref_point=[0.0])
    names = list(NAMES)
    options = LoopOptions(opt=OPT, dim=2, objective_names=names, task_objective_names=TASKS, ended_batches=[0])
    names.append("up")  # the caller's list is not the options' own
    assert options.objective_names == ("left", "right") and options.ended_batches == frozenset({0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.dim = 3  # type: ignore[misc]


@pytest.mark.parametrize("strategy", ["random", "nsga2"])
def test_same_seed_same_run(strategy: str) -> None:
    # mm-mo's repeatability is shown by the resume test (an interrupted run replays an uninterrupted one).
    opt = OPT.model_copy(update={"strategy": strategy, "batches": 2})
    runs = [run(opt, Journal(), Evaluator()) for _ in range(2)]
    assert [t.x for t in runs[0].trials] == [t.x for t in runs[1].trials]
    assert runs[0].hypervolumes == runs[1].hypervolumes


def test_a_batch_cut_short_while_journaled_is_proposed_again_as_it_was(full_run) -> None:
    result, _, _ = full_run
    journal = Journal()
    cut = [Trial.from_json(copy.deepcopy(t.to_json())) for t in result.trials[:7]]  # batch 2's first trial only
    cut[6] = dataclasses.replace(cut[6], status="proposed", objectives=None)
    for t in cut:
        journal.trials[t.id] = t.to_json()
    journal.ref_point = result.ref_point
    ev = Evaluator()
    resumed = run(OPT, journal, ev)
    assert [(t.id, t.batch, t.x, t.step) for t in resumed.trials] == [
        (t.id, t.batch, t.x, t.step) for t in result.trials
    ]  # the same candidates as the run never killed
    assert sorted(ev.calls) == [6, 7, 8, 9]
