"""The asynchronous schedule on a virtual clock: freed evaluators get the next candidate at once, every proposal is
made with the running trials pending, batches end in order, and an interrupted run resumes losing nothing."""

from __future__ import annotations

import copy
import heapq
from collections import Counter
from dataclasses import replace

import pytest
import torch

from mmmo.optimizer import async_loop
from mmmo.optimizer.async_loop import TrialWorkers, run_async_loop
from mmmo.optimizer.loop import NullObserver, run_loop
from mmmo.optimizer.options import LoopOptions
from mmmo.run.records import Trial
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import OptimizerSpec
from tests.search_problems import CHEAP, Journal

NAMES = ["left", "right"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def score(x: list[float]) -> dict[str, float]:
    return {"left": -((x[0] - 0.3) ** 2) - (x[1] - 0.7) ** 2, "right": -((x[0] - 0.7) ** 2) - (x[1] - 0.3) ** 2}


class VirtualWorkers:
    """`slots` evaluators on a virtual clock: trial i takes `durations[i % len]` time units; `wait` jumps the clock
    to the next finish. Records every start and the most trials ever running. `stop_after` finishes: KeyboardInterrupt."""

    def __init__(self, slots: int, durations: list[float], stop_after: int | None = None, fail_ids: tuple = ()):
        self._slots, self.durations, self.stop_after, self.fail_ids = slots, durations, stop_after, fail_ids
        self.now = 0.0
        self.running: list[tuple[float, int, Trial]] = []
        self.started: Counter[int] = Counter()
        self.finished: Counter[int] = Counter()
        self.most_running = 0
        self.idle_time = 0.0

    @property
    def slots(self) -> int:
        return self._slots

    def start(self, trial: Trial) -> None:
        assert len(self.running) < self._slots, "started on a busy pool"
        self.started[trial.id] += 1
        heapq.heappush(self.running, (self.now + self.durations[trial.id % len(self.durations)], trial.id, trial))
        self.most_running = max(self.most_running, len(self.running))

    def next_finished(self, wait: bool) -> Trial | None:
        if not self.running or (not wait and self.running[0][0] > self.now):
            return None
        if self.stop_after is not None and sum(self.finished.values()) == self.stop_after:
            raise KeyboardInterrupt
        end, _, t = heapq.heappop(self.running)
        self.idle_time += (self._slots - len(self.running) - 1) * max(0.0, end - self.now)
        self.now = max(self.now, end)
        self.finished[t.id] += 1
        done = copy.deepcopy(t)
        if t.id in self.fail_ids:
            done.status, done.error = "failed", "merge blew up"
        else:
            done.status, done.objectives = "done", score(t.x)
        return done


OPT = OptimizerSpec(strategy="mm-mo", initial=4, batches=3, batch_size=2, seed=5, schedule="async")


def options(opt: OptimizerSpec = OPT, journal: Journal | None = None) -> LoopOptions:
    ref = journal.ref_point if journal is not None else None
    return LoopOptions(opt=opt, dim=2, objective_names=NAMES, task_objective_names=NAMES, budget=CHEAP, ref_point=ref)


@pytest.fixture(scope="module")
def async_run():
    journal, workers = Journal(), VirtualWorkers(2, [3.0, 1.0, 2.0])
    pending_seen: list[tuple[int, list[list[float]], list[float]]] = []
    real = async_loop.propose_next

    def watched(*args, **kwargs):
        p = real(*args, **kwargs)
        running = sorted(t.x for _, _, t in workers.running)
        pending_seen.append((kwargs["batch_index"], sorted(kwargs["X_pending"].tolist()), running, p.x))
        return p

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(async_loop, "propose_next", watched)
        result = run_async_loop([], options(), workers, journal)
    return result, journal, workers, pending_seen


def test_async_run_fills_every_batch_once_and_never_overfills_the_workers(async_run) -> None:
    result, journal, workers, _ = async_run
    assert [t.id for t in result.trials] == list(range(10))
    assert [t.batch for t in result.trials] == [0] * 4 + [1, 1, 2, 2, 3, 3]
    assert all(t.status == "done" for t in result.trials)
    assert set(workers.started.values()) == {1} and set(journal.finished.values()) == {1}
    assert workers.most_running == 2
    # take_home_points auto in 2-D: a fifth of the points, rounded on the running total, so with batches of 2 the
    # take-home point is slot 0 of batch 2 (0.4, 0.8 and 1.2 points by the ends of batches 1-3 round to 0, 1, 1).
    steps = [t.step for t in result.trials if t.batch > 0]
    assert steps[2] == "take_home" and steps.count("take_home") == 1
    assert all(t.prior == "fitted" for t in result.trials[4:])


def test_every_proposal_is_made_with_the_running_trials_pending(async_run) -> None:
    _, _, _, pending_seen = async_run
    assert len(pending_seen) == 6
    for _, pending, running, x in pending_seen:
        # every running trial is pending, and so is any proposal waiting for an evaluator (at most one each)
        assert all(r in pending for r in running) and len(pending) - len(running) < 2
        assert x not in pending
    # The evaluators never wait for the optimiser: a proposal is made while one of them still scores.
    assert sum(bool(p) for _, p, _, _ in pending_seen) >= 5


def test_batches_end_in_order_once_with_the_run_reference_point(async_run) -> None:
    result, journal, _, _ = async_run
    assert [s.batch for s in journal.summaries] == [0, 1, 2, 3]
    assert journal.ref_point == result.ref_point
    assert result.hypervolumes == [s.hypervolume for s in journal.summaries]
    assert all(b >= a for a, b in zip(result.hypervolumes, result.hypervolumes[1:]))
    last = journal.summaries[-1].schedule
    assert last is not None and last.workers == 2 and last.propose_seconds > 0


def test_interrupted_async_run_resumes_with_every_trial_finished_once(async_run) -> None:
    result, _, _, _ = async_run
    journal = Journal()
    first = VirtualWorkers(2, [3.0, 1.0, 2.0], stop_after=6)
    with pytest.raises(KeyboardInterrupt):
        run_async_loop([], options(), first, journal)
    assert sum(journal.finished.values()) == 6
    in_flight = [t.id for t in journal.history() if t.status == "proposed"]
    assert in_flight  # killed with trials proposed and not back
    second = VirtualWorkers(2, [3.0, 1.0, 2.0])
    resumed = run_async_loop(journal.history(), options(journal=journal), second, journal)
    assert sorted(t.id for t in resumed.trials) == list(range(10))
    assert set(journal.finished.values()) == {1} and sorted(journal.finished) == list(range(10))
    assert set(in_flight) <= set(second.started)  # the unfinished ones are scored on resume
    assert not set(second.started) & {i for i, n in first.finished.items() if n}
    assert [s.batch for s in journal.summaries].count(0) == 1


def test_failed_trials_are_finished_and_the_budget_still_spent() -> None:
    journal, workers = Journal(), VirtualWorkers(3, [1.0, 2.5], fail_ids=(1, 5))
    result = run_async_loop([], options(), workers, journal)
    assert len(result.trials) == 10 and sum(t.status == "failed" for t in result.trials) == 2
    xs = [tuple(t.x) for t in result.trials]
    assert len(set(xs)) == len(xs)  # nothing proposed twice, failed points included


def test_one_worker_is_sequential_and_matches_the_batch_loop_counts() -> None:
    journal, workers = Journal(), VirtualWorkers(1, [1.0])
    result = run_async_loop([], options(), workers, journal)
    assert workers.most_running == 1 and len(result.trials) == 10
    batch = run_loop([], options(OPT.model_copy(update={"schedule": "batch"})), lambda ts: (
        replace(t, status="done", objectives=score(t.x)) for t in ts), NullObserver())
    assert [t.batch for t in batch.trials] == [t.batch for t in result.trials]
    assert [t.x for t in result.trials[:4]] == [t.x for t in batch.trials[:4]]  # the same initial design


def test_workers_that_lose_every_evaluator_stop_with_a_one_line_error() -> None:
    class Dead(VirtualWorkers):
        @property
        def slots(self) -> int:
            return 0

    with pytest.raises(MmmoError, match="no evaluator is left"):
        run_async_loop([], options(), Dead(1, [1.0]), Journal())


def test_the_pools_are_trial_workers() -> None:
    assert isinstance(VirtualWorkers(1, [1.0]), TrialWorkers)


def test_propose_next_refuses_the_initial_design() -> None:
    from mmmo.optimizer.history import History
    from mmmo.optimizer.strategies import propose_next

    empty = History.of([], NAMES, 2)
    with pytest.raises(MmmoError, match="initial design"):
        propose_next(options(), empty, batch_index=0, slot=0, X_pending=torch.zeros(0, 2))


def test_stages_under_the_async_schedule_stop_a_hopeless_candidate_and_finish_a_promising_one() -> None:
    def full(i: int, y: list[float]) -> Trial:
        return Trial(id=i, batch=0, x=[0.1 * i, 0.2 * i], step="sobol", status="done", stages_scored=2,
                     objectives={"left": y[0], "right": y[1]}, stderr={"left": 0.01, "right": 0.01},
                     n_examples={"left": 100, "right": 100})

    history = [full(i, y) for i, y in enumerate([[0.5, 0.5], [0.6, 0.4], [0.4, 0.6], [0.3, 0.3]])]
    history += [Trial(id=4, batch=1, x=[0.33, 0.33], step="acquisition"),
                Trial(id=5, batch=1, x=[0.66, 0.66], step="acquisition")]
    partial_scores = {4: (0.05, 0.05), 5: (0.9, 0.9)}
    calls: list[tuple[int, int]] = []

    class StagedWorkers(VirtualWorkers):
        def next_finished(self, wait: bool) -> Trial | None:
            t = super().next_finished(wait)
            if t is None:
                return None
            calls.append((t.id, t.stages_scored))
            last = t.stages_scored == 1
            a, b = partial_scores[t.id]
            return replace(t, status="done" if last else "partial", stages_scored=t.stages_scored + 1,
                           objectives={"left": a, "right": b}, stderr={"left": 0.01, "right": 0.01},
                           n_examples={"left": 100 if last else 25, "right": 100 if last else 25})

    opt = OptimizerSpec(initial=4, batches=1, batch_size=2, standard_recipes=False, schedule="async")
    options = LoopOptions(opt=opt, dim=2, objective_names=NAMES, task_objective_names=NAMES, ref_point=[0.0, 0.0],
                          stages=(0.25, 1.0), stage_min_chance=0.1, budget=CHEAP)
    journal = Journal()
    result = run_async_loop(history, options, StagedWorkers(2, [1.0, 2.0]), journal)
    assert sorted(calls) == [(4, 0), (5, 0), (5, 1)]  # trial 4 never gets its second stage
    t4, t5 = result.trials[4], result.trials[5]
    assert (t4.status, t4.stopped, t4.stages_scored) == ("done", True, 1)
    assert (t5.status, t5.stopped, t5.stages_scored) == ("done", False, 2)
    assert [s.batch for s in journal.summaries] == [1]  # batch 0 was complete and recorded before


def test_an_initial_design_cut_short_by_a_kill_is_completed_on_resume(async_run) -> None:
    result, _, _, _ = async_run
    journal = Journal()
    cut = [Trial.from_json(copy.deepcopy(t.to_json())) for t in result.trials[:2]]
    cut = [replace(t, status="proposed", objectives=None, prior=None) for t in cut]  # 2 of 4 journaled, then killed
    for t in cut:
        journal.on_proposed([t])
    resumed = run_async_loop(journal.history(), options(), VirtualWorkers(2, [3.0, 1.0, 2.0]), journal)
    assert [t.batch for t in resumed.trials] == [0] * 4 + [1, 1, 2, 2, 3, 3]
    assert [t.x for t in resumed.trials[:4]] == [t.x for t in result.trials[:4]]  # the same design, completed
    assert [s.batch for s in journal.summaries] == [0, 1, 2, 3] and journal.ref_point is not None


def test_an_optimiser_error_keeps_the_evaluations_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = async_loop.propose_next

    def fails_on_the_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MmmoError("the GP fit ran out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(async_loop, "propose_next", fails_on_the_second)
    journal, workers = Journal(), VirtualWorkers(2, [3.0, 1.0, 2.0])
    with pytest.raises(MmmoError, match="out of memory"):
        run_async_loop([], options(), workers, journal)
    # every trial that was started came back and was journaled before the error stopped the run
    assert sorted(journal.finished) == sorted(workers.started) and not workers.running


def test_the_batch_schedule_completes_batches_an_async_run_left_part_full(async_run) -> None:
    result, _, _, _ = async_run
    # killed under async: batch 2 has one trial, running; batch 3 none (the initial design and batch 1 done)
    history = [Trial.from_json(copy.deepcopy(t.to_json())) for t in result.trials[:7]]
    history[6] = replace(history[6], status="proposed", objectives=None)
    journal = Journal()
    for t in history:
        journal.on_proposed([t])
        if t.status == "done":
            journal.on_finished(t)
    journal.ref_point = result.ref_point
    batch = OPT.model_copy(update={"schedule": "batch"})
    done = Counter()

    def evaluate(trials):
        for t in trials:
            done[t.id] += 1
            yield replace(t, status="done", objectives=score(t.x))

    resumed = run_loop(journal.history(), options(batch, journal), evaluate, journal)
    assert [t.batch for t in resumed.trials] == [0] * 4 + [1, 1, 2, 2, 3, 3]
    assert sorted(done) == [6, 7, 8, 9] and set(done.values()) == {1}
    assert resumed.trials[7].x not in [t.x for t in resumed.trials[:7]]
