"""Each BO batch spends `take_home_points` on the take-home target (qLogNEI on its weighted mean, under its
outcome constraints) and the rest on the front; the batch stays a pure function of the history."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from search_problems import CHEAP, objectives, search_options

from mmmo.optimizer import loop, strategies
from mmmo.optimizer.acquisition import propose_hvi
from mmmo.optimizer.gp import fit_models
from mmmo.optimizer.history import History
from mmmo.optimizer.loop import run_loop
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.strategies import batch_seed, initial_design, propose_batch
from mmmo.optimizer.target import Target
from mmmo.run.records import Trial
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import OptimizerSpec

T = torch.float64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def history(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    X = initial_design(n, 2, 0)
    return X, objectives(X)


def batch(k: int, X: torch.Tensor, Y: torch.Tensor, target: Target | None = None, size: int = 4) -> list:
    opt = OptimizerSpec(initial=X.shape[0], batch_size=size, candidates=max(size, 10), take_home_points=k, seed=3)
    options = search_options(opt, 2, Y.shape[-1], 2, budget=CHEAP, target=target)
    return propose_batch(options, History(X_done=X, Y_done=Y, X_seen=X), batch_index=1)


def test_the_take_home_part_proposes_its_share_of_the_batch() -> None:
    X, Y = history()
    assert Counter(p.step for p in batch(2, X, Y)) == {"take_home": 2, "acquisition": 2}
    assert Counter(p.step for p in batch(1, X, Y)) == {"take_home": 1, "acquisition": 3}
    # more than the batch holds: the whole batch goes to the target
    got = batch(9, X, Y, size=3)
    assert [p.step for p in got] == ["take_home"] * 3
    P = torch.tensor([p.x for p in batch(2, X, Y)], dtype=T)
    assert torch.cdist(P, X, p=float("inf")).min() > 1e-6  # nothing evaluated is proposed again
    assert torch.pdist(P, p=float("inf")).min() > 1e-6  # the two parts never propose the same point


def slots(dim: int, size: int, points: int | str = "auto", batches: int = 10) -> list[int]:
    """The take-home points of batches 1..`batches` of a `dim`-D search with batches of `size`."""
    opt = OptimizerSpec(initial=8, batch_size=size, candidates=max(size, 10), take_home_points=points)
    options = search_options(opt, dim, 3, 2)
    return [options.take_home_slots(b) for b in range(1, batches + 1)]


def test_auto_spends_a_share_of_the_batch_that_grows_with_the_dimensions() -> None:
    assert OptimizerSpec().take_home_points == "auto"
    assert slots(6, 5) == [1] * 10 and slots(11, 5) == [1] * 10  # a fifth of each batch of 5
    assert slots(12, 5) == [2] * 10 and slots(36, 5) == [2] * 10  # two fifths from 12 dimensions on
    assert slots(6, 10) == [2] * 10 and slots(18, 10) == [4] * 10
    # a share under one point per batch still comes round, and a batch of one is never all on the target
    assert slots(6, 1) == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0] and sum(slots(6, 1, batches=100)) == 20
    assert sum(slots(18, 1, batches=100)) == 40 and sum(slots(6, 3, batches=100)) == 60
    # a number is the count per batch, at most the batch
    assert slots(36, 5, 0) == [0] * 10 and slots(6, 3, 9) == [3] * 10
    with pytest.raises(MmmoError, match="initial design"):
        search_options(OptimizerSpec(), 6, 3, 2).take_home_slots(0)
    for wrong in (-1, "most"):
        with pytest.raises(ValueError, match="take_home_points"):
            OptimizerSpec(take_home_points=wrong)


def test_a_batch_is_a_pure_function_of_the_history() -> None:
    X, Y = history()
    torch.manual_seed(1)
    first = [(p.x, p.step) for p in batch(2, X, Y)]
    torch.manual_seed(2)  # the global RNG plays no part
    assert [(p.x, p.step) for p in batch(2, X, Y)] == first


def test_no_take_home_points_is_exactly_the_front_search() -> None:
    X, Y = history()
    got = batch(0, X, Y)
    opt = OptimizerSpec(initial=8, batch_size=4, seed=3)
    model = fit_models(X, Y, None, opt.prior_mean)
    front = propose_hvi(model, X, None, 4, seed=batch_seed(3, 1), budget=CHEAP, Y_baseline=Y)
    assert [p.x for p in got] == front.tolist()
    assert {p.step for p in got} == {"acquisition"}
    # an unconstrained target changes nothing while no point is spent on it
    assert [p.x for p in batch(0, X, Y, Target((0.0, 1.0, 0.0)))] == [p.x for p in got]


def line(X: torch.Tensor) -> torch.Tensor:
    """`[n, 2]`: y0 rises with x0, y1 falls with it: y1 >= 0.5 holds where x0 <= 0.5."""
    return torch.stack([X[:, 0] + 0.1 * X[:, 1], 1.0 - X[:, 0]], -1)


def test_the_target_constraints_steer_the_take_home_points() -> None:
    X = initial_design(10, 2, 1)
    Y = line(X)
    free = batch(1, X, Y, Target((1.0, 0.0)), size=1)
    held = batch(1, X, Y, Target((1.0, 0.0), ((1, 0.5),)), size=1)
    assert free[0].step == held[0].step == "take_home"
    assert free[0].x[0] > 0.8  # unconstrained, y0 is highest at x0 = 1
    assert float(line(torch.tensor([held[0].x], dtype=T))[0, 1]) >= 0.45  # constrained: (nearly) feasible
    assert held[0].x[0] > 0.3  # and still as high on y0 as the constraint lets it be


def test_the_front_part_has_the_constraints_and_the_take_home_points_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real = strategies.propose_hvi

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(strategies, "propose_hvi", spy)
    X, Y = history()
    got = batch(2, X, Y, Target((1.0, 1.0, 0.0), ((2, 0.6),)))
    (kw,) = seen
    home = torch.tensor([p.x for p in got if p.step == "take_home"], dtype=T)
    torch.testing.assert_close(kw["X_pending"], home)
    (constraint,) = kw["constraints"]
    samples = torch.tensor([[0.0, 0.0, 0.7], [0.0, 0.0, 0.5]], dtype=T)
    torch.testing.assert_close(constraint(samples), torch.tensor([-0.1, 0.1], dtype=T))  # feasible where <= 0
    seen.clear()
    batch(0, X, Y, Target((1.0, 1.0, 0.0)))
    assert "constraints" not in seen[0] and "X_pending" not in seen[0]  # unconstrained, nothing pending


def test_the_loop_hands_its_target_to_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    targets: list[Target | None] = []
    real = loop.propose_batch

    def spy(options: LoopOptions, *args: Any, **kwargs: Any) -> list:
        targets.append(options.resolved_target)  # what every batch's proposal reads its target from
        return real(options, *args, **kwargs)

    monkeypatch.setattr(loop, "propose_batch", spy)
    opt = OptimizerSpec(strategy="random", initial=3, batches=1, batch_size=2, seed=0)
    names = ["a", "b", "sparsity"]

    def evaluate(trials: list[Trial]) -> list[Trial]:
        Y = objectives(torch.tensor([t.x for t in trials], dtype=T)).tolist()
        return [Trial(id=t.id, batch=t.batch, x=t.x, step=t.step, status="done", objectives=dict(zip(names, y)))
                for t, y in zip(trials, Y)]

    default = LoopOptions(opt=opt, dim=2, objective_names=names, task_objective_names=["a", "b"])
    run_loop([], default, evaluate)
    assert targets == [Target((1.0, 1.0, 0.0))] * 2  # the plain mean of the task objectives
    stated = Target((2.0, 1.0, 0.0), ((0, 0.1),))
    targets.clear()
    run_loop([], LoopOptions(opt=opt, dim=2, objective_names=names, task_objective_names=["a"], target=stated),
             evaluate)
    assert targets == [stated] * 2
    with pytest.raises(MmmoError, match="2 weights but there are 3 objectives"):
        LoopOptions(opt=opt, dim=2, objective_names=names, task_objective_names=["a"], target=Target((1.0, 1.0)))
