"""Multi-fidelity scoring: the full-score distribution, the chance of improving the front, and the loop's stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from mmmo.optimizer.history import History
from mmmo.optimizer.loop import NullObserver, run_loop
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.pareto import hypervolume
from mmmo.optimizer.stages import (
    PartialScores,
    chance_of_improving,
    chance_of_taking_home,
    full_score_distribution,
    hypervolume_gain,
    take_home_stake,
)
from mmmo.optimizer.target import Target, choose_take_home
from mmmo.run.records import Trial
from mmmo.spec.schema import OptimizerSpec

D = torch.float64


def test_full_score_mean_and_variance_by_hand() -> None:
    partial = PartialScores(
        x=torch.zeros(1, 2, dtype=D),
        y=torch.tensor([[0.5, -0.2]], dtype=D),
        yvar=torch.tensor([[0.01, 0.0]], dtype=D),
        scored=torch.tensor([[0.25, 1.0]], dtype=D),  # a task a quarter scored; an exact objective
    )
    mean, var = full_score_distribution(partial, torch.tensor([[0.7, -0.3]], dtype=D), torch.tensor([[0.004, 0.1]], dtype=D))
    # task: 0.25 * 0.5 + 0.75 * 0.7; 0.75^2 * 0.004 + 0.75 * 0.25 * 0.01. exact: as scored.
    assert mean[0].tolist() == pytest.approx([0.65, -0.2])
    assert var[0].tolist() == pytest.approx([0.00225 + 0.001875, 0.0])
    # Without a GP the partial score is its own posterior: the rest adds r * yvar.
    mean, var = full_score_distribution(partial, None, None)
    assert mean[0].tolist() == pytest.approx([0.5, -0.2])
    assert var[0].tolist() == pytest.approx([0.75 * 0.01, 0.0])


def test_chance_of_improving_the_front() -> None:
    front = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=D)
    ref = torch.tensor([0.0, 0.0], dtype=D)
    points = torch.tensor([[0.6, 0.6], [0.4, 0.4], [0.5, 0.5], [0.9, -0.1], [0.5, 0.5]], dtype=D)
    var = torch.zeros_like(points)
    var[4] = 0.01  # on the front's point, with noise: about half of the draws beat it on one side or the other
    chance = chance_of_improving(points, var, front, ref, seed=0)
    assert chance[:4].tolist() == [1.0, 0.0, 0.0, 0.0]  # beyond; dominated; a tie; below the reference point
    assert 0.6 < float(chance[4]) < 0.8  # 1 - P(both below) = 1 - 1/4, within sampling error
    assert chance_of_improving(points, var, front[:0], None, seed=0).tolist() == [1.0] * 5  # nothing to beat


def test_a_minimum_gain_asks_for_that_much_hypervolume() -> None:
    front = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=D)
    ref = torch.tensor([0.0, 0.0], dtype=D)
    y = torch.tensor([[0.6, 0.6]], dtype=D)
    exact = hypervolume(torch.cat([front, y]), ref) - hypervolume(front, ref)  # 0.09
    gains = torch.stack([hypervolume_gain(y, front, ref, torch.Generator().manual_seed(s)) for s in range(20)])
    assert float(gains.mean()) == pytest.approx(exact, abs=0.01)
    hv = hypervolume(front, ref)  # 0.31: the point adds 29% of it
    zero = torch.zeros_like(y)
    assert chance_of_improving(y, zero, front, ref, seed=0, min_gain=0.2).item() == 1.0
    assert chance_of_improving(y, zero, front, ref, seed=0, min_gain=0.4).item() == 0.0
    assert exact / hv == pytest.approx(0.29, abs=0.005)


def test_chance_of_taking_home_by_hand() -> None:
    # The mean of columns 0 and 1 (column 2, say sparsity, not in it), column 1 at least 0.3.
    target = Target((1.0, 1.0, 0.0), minimums=((1, 0.3),))
    points = torch.tensor([[0.6, 0.6, 0.0], [0.4, 0.4, 0.0], [0.9, 0.2, 0.0], [0.5, 0.5, 0.9]], dtype=D)
    var = torch.zeros_like(points)
    var[3, 0] = 0.01  # its mean task score is the incumbent's, give or take: it beats it half the time
    chance = chance_of_taking_home(points, var, target, 0.5, seed=0)
    assert chance[:3].tolist() == [1.0, 0.0, 0.0]  # above; below; above but breaking the requirement
    assert 0.45 < float(chance[3]) < 0.55
    # With no trial to beat yet, any draw meeting the requirements would be the take-home merge.
    assert chance_of_taking_home(points, var, target, float("-inf"), seed=0)[:3].tolist() == [1.0, 1.0, 0.0]


def test_the_stake_is_what_the_take_home_choice_would_take_now() -> None:
    target = Target((1.0, 0.0), minimums=((1, 0.45),))
    X = torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4], [0.8, 0.8]], dtype=D)
    Y = torch.tensor([[0.5, 0.5], [0.6, 0.4], [0.4, 0.6], [0.45, 0.5], [0.7, 0.7]], dtype=D)
    Yvar = torch.full_like(Y, 1e-4)
    # The last trial was stopped after part of its documents: not one the choice may take, nor in its GP.
    done = History(X_done=X, Y_done=Y, X_seen=X, Yvar_done=Yvar, in_full=torch.tensor([True] * 4 + [False]))
    stake = take_home_stake(done, target)
    chosen = choose_take_home(X[:4], Y[:4], target, Yvar[:4])
    assert chosen is not None and (chosen.row, chosen.by) == (0, "posterior")  # [0.6, 0.4] breaks the requirement
    assert stake.incumbent == chosen.value
    assert 0.45 < stake.incumbent < 0.55  # the posterior mean at [0.5, 0.5], shrunk little (variance 1e-4)
    # No trial meets the requirements yet: any draw that does would be the take-home merge.
    assert take_home_stake(replace(done, in_full=torch.tensor([False, True, False, False, False])), target).incumbent == float("-inf")
    # take_home.choose: observed: the best observed value among the qualifying full trials (0.5, not the stopped 0.7)
    assert take_home_stake(done, target, by="observed").incumbent == 0.5


def full_trial(i: int, y: list[float]) -> Trial:
    return Trial(
        id=i, batch=0, x=[0.2 * i + 0.05, 0.9 - 0.2 * i], step="sobol", status="done",
        objectives={"a": y[0], "b": y[1]}, stderr={"a": 0.02, "b": 0.02}, n_examples={"a": 100, "b": 100},
        stages_scored=2,
    )


def two_stage_scores(
    scores: dict[int, tuple[float, float]], calls: list[tuple[int, int]]
) -> Callable[[list[Trial]], list[Trial]]:
    """An evaluator of two stages (25 then 100 documents) that scores trial `id` as `scores[id]` on both, noting
    each (id, stages scored before) it is asked for in `calls`."""

    def evaluate(trials: list[Trial]) -> list[Trial]:
        out = []
        for t in trials:
            calls.append((t.id, t.stages_scored))
            a, b = scores[t.id]
            last = t.stages_scored == 1
            out.append(replace(
                t, status="done" if last else "partial", stages_scored=t.stages_scored + 1,
                objectives={"a": a, "b": b}, stderr={"a": 0.01, "b": 0.01},
                n_examples={"a": 100 if last else 25, "b": 100 if last else 25},
            ))
        return out

    return evaluate


def test_the_loop_stops_a_hopeless_candidate_and_finishes_a_promising_one() -> None:
    history = [full_trial(i, y) for i, y in enumerate([[0.5, 0.5], [0.6, 0.4], [0.4, 0.6], [0.3, 0.3]])]
    history += [
        Trial(id=4, batch=1, x=[0.33, 0.33], step="acquisition"),  # will score far below the front
        Trial(id=5, batch=1, x=[0.66, 0.66], step="acquisition"),  # will score beyond it
    ]
    calls: list[tuple[int, int]] = []
    evaluate = two_stage_scores({4: (0.05, 0.05), 5: (0.9, 0.9)}, calls)

    heard: list[tuple[str, int]] = []

    class Heard(NullObserver):
        def on_partial(self, trial: Trial) -> None:
            heard.append(("partial", trial.id))

        def on_finished(self, trial: Trial) -> None:
            heard.append(("stopped" if trial.stopped else trial.status, trial.id))

    opt = OptimizerSpec(initial=4, batches=1, batch_size=2, candidates=2, standard_recipes=False)
    options = LoopOptions(
        opt=opt, dim=2, objective_names=["a", "b"], task_objective_names=["a", "b"], ref_point=[0.0, 0.0],
        stages=(0.25, 1.0), stage_min_chance=0.1,
    )
    result = run_loop(history, options, evaluate, Heard())
    assert calls == [(4, 0), (5, 0), (5, 1)]  # trial 4 never gets its second stage
    # One trial at a time (parallel=1): each through its stages before the next starts.
    assert heard == [("partial", 4), ("stopped", 4), ("partial", 5), ("done", 5)]
    t4, t5 = result.trials[4], result.trials[5]
    assert (t4.status, t4.stopped, t4.stages_scored, t4.n_examples["a"]) == ("done", True, 1, 25)
    assert (t5.status, t5.stopped, t5.stages_scored, t5.n_examples["a"]) == ("done", False, 2, 100)
    assert 5 in result.pareto_ids and 4 not in result.pareto_ids


def test_a_candidate_that_could_become_the_take_home_merge_goes_on() -> None:
    """Asked for a fifth of the hypervolume, the front's criterion stops both candidates: each adds ~5% of it. The
    take-home target is objective a alone, so the one far above the best a (0.6) goes on with `stage_take_home`."""
    history = [full_trial(i, y) for i, y in enumerate([[0.5, 0.5], [0.6, 0.4], [0.4, 0.6], [0.3, 0.3]])]
    evaluate = two_stage_scores({4: (0.9, 0.05), 5: (0.05, 0.9)}, [])

    def stopped(take_home: bool, minimums: tuple[tuple[int, float], ...] = ()) -> list[bool]:
        fresh = [
            Trial(id=4, batch=1, x=[0.9, 0.1], step="acquisition"),
            Trial(id=5, batch=1, x=[0.1, 0.9], step="acquisition"),
        ]
        options = LoopOptions(
            opt=OptimizerSpec(initial=4, batches=1, batch_size=2, candidates=2, standard_recipes=False),
            dim=2, objective_names=["a", "b"], task_objective_names=["a", "b"], ref_point=[0.0, 0.0],
            stages=(0.25, 1.0), stage_min_chance=0.1, stage_min_gain=0.2, stage_take_home=take_home,
            target=Target((1.0, 0.0), minimums),
        )
        result = run_loop([*history, *fresh], options, evaluate)
        return [t.stopped for t in result.trials[4:]]

    assert stopped(take_home=False) == [True, True]
    assert stopped(take_home=True) == [False, True]
    # Required to score at least 0.3 on b, the high-a candidate (b ~0.05) could not be taken home either.
    assert stopped(take_home=True, minimums=((1, 0.3),)) == [True, True]
