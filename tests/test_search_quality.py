"""Search quality on BraninCurrin: mm-mo must beat random search at 30 evaluations (median of 5 seeds).

The acquisition runs on a reduced budget (QUALITY_BUDGET) to keep this test to a couple of minutes; the
full comparison with every baseline is benchmarks/search_quality.py (benchmarks/RESULTS.md, issue 14: at the
search's own budget, median hypervolume 55.6 for mm-mo against 15.1 for random, of at most 59.4).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import pytest
import torch
from botorch.test_functions.multi_objective import BraninCurrin

from mmmo.optimizer.acquisition import AcqBudget
from mmmo.optimizer.loop import run_loop
from mmmo.optimizer.options import LoopOptions
from mmmo.run.records import Trial
from mmmo.spec.schema import OptimizerSpec

QUALITY_BUDGET = AcqBudget(num_restarts=2, raw_samples=64, mc_samples=32, maxiter=30)
SEEDS = range(5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


PROBLEM = BraninCurrin(negate=True).to(torch.float64)  # maximise; inputs already span the unit cube


def evaluate(pending: list[Trial]) -> Iterable[Trial]:
    Y = PROBLEM(torch.tensor([t.x for t in pending], dtype=torch.float64))
    for t, y in zip(pending, Y.tolist()):
        t.status, t.objectives = "done", {"branin": y[0], "currin": y[1]}
        yield t


def final_hypervolume(strategy: str, seed: int) -> float:
    opt = OptimizerSpec(strategy=strategy, initial=10, batches=4, candidates=10, batch_size=5, seed=seed)
    options = LoopOptions(
        opt=opt,
        dim=2,
        objective_names=["branin", "currin"],
        task_objective_names=["branin", "currin"],
        ref_point=PROBLEM.ref_point.tolist(),  # (-18, -6): the same fixed point for every run
        budget=QUALITY_BUDGET,
    )
    result = run_loop([], options, evaluate)
    assert len(result.trials) == 30
    return result.hypervolumes[-1]


def test_mm_mo_beats_random_on_branin_currin() -> None:
    mm_mo = [final_hypervolume("mm-mo", s) for s in SEEDS]
    rand = [final_hypervolume("random", s) for s in SEEDS]
    assert all(0.0 <= hv <= PROBLEM._max_hv for hv in mm_mo + rand)
    assert statistics.median(mm_mo) > statistics.median(rand), (mm_mo, rand)
