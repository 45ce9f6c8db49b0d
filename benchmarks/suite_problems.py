"""The wide suite: BoTorch's multi-objective test problems as benchmark problems, to judge the search's defaults
on problems they were not designed on (`suite_problem` by name, e.g. "suite-zdt2", "suite-dtlz4-noisy")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from benchmarks.problems import Budget, Problem, test_function_problem

PREFIX = "suite-"
# Every family's budget: 30 evaluations, 10 initial + 4 batches of 5 (the budget the held-out engineering
# problems lost on), 10 acquisition candidates.
SUITE_BUDGET = Budget(10, 4, 5, 10)
# A noisy variant's noise: this share of each objective's standard deviation over the domain.
NOISE_SHARE = 0.1
# The domain's sample (scrambled Sobol) behind that spread and behind a constrained family's minimums (medians).
SAMPLE_POINTS = 1024


@dataclass(frozen=True)
class Family:
    """One test function at one size: its shape in words, and whether it was kept out of the design loop."""

    name: str
    make: Callable[[], Any]  # a botorch MultiObjectiveTestProblem, built with negate=True (maximised)
    shape: str  # the front's shape and what makes the problem hard
    held_out: bool = False  # never looked at while the prior rule was chosen: judged separately
    constrained: tuple[int, ...] = ()  # objectives held at least at their median over the domain


def _families() -> list[Family]:
    from botorch.test_functions import multi_objective as mo

    return [
        Family("zdt1", lambda: mo.ZDT1(dim=6, negate=True), "2 objectives, 6-D, convex front"),
        Family("zdt2", lambda: mo.ZDT2(dim=6, negate=True), "2 objectives, 6-D, concave front"),
        Family("dtlz1", lambda: mo.DTLZ1(dim=5, num_objectives=3, negate=True),
               "3 objectives, 5-D, linear front, multimodal"),
        Family("dtlz5", lambda: mo.DTLZ5(dim=6, num_objectives=3, negate=True),
               "3 objectives, 6-D, degenerate front (a curve)"),
        Family("dtlz7", lambda: mo.DTLZ7(dim=6, num_objectives=3, negate=True),
               "3 objectives, 6-D, disconnected front"),
        Family("vehiclesafety", lambda: mo.VehicleSafety(negate=True), "3 objectives, 5-D, engineering"),
        Family("carsideimpact", lambda: mo.CarSideImpact(negate=True), "4 objectives, 7-D, engineering"),
        Family("gmm", lambda: mo.GMM(num_objectives=3, negate=True), "3 objectives, 2-D, multimodal bumps"),
        Family("dtlz5-constrained", lambda: mo.DTLZ5(dim=6, num_objectives=3, negate=True),
               "dtlz5 with objectives 1 and 2 at least their median", constrained=(0, 1)),
        # kept out of the design loop
        Family("zdt3", lambda: mo.ZDT3(dim=6, negate=True), "2 objectives, 6-D, disconnected front", held_out=True),
        Family("dtlz4", lambda: mo.DTLZ4(dim=6, num_objectives=4, negate=True),
               "4 objectives, 6-D, concave front, biased density", held_out=True),
        Family("penicillin", lambda: mo.Penicillin(negate=True), "3 objectives, 7-D, engineering", held_out=True),
        # (its constraints left out: the objectives alone)
        Family("discbrake", lambda: mo.DiscBrake(negate=True), "2 objectives, 4-D, engineering", held_out=True),
        Family("carsideimpact-constrained", lambda: mo.CarSideImpact(negate=True),
               "carsideimpact with objectives 1 and 3 at least their median", held_out=True, constrained=(0, 2)),
        Family("dtlz2-5", lambda: mo.DTLZ2(dim=8, num_objectives=5, negate=True),
               "5 objectives, 8-D, concave front", held_out=True),
    ]


FAMILIES = {f.name: f for f in _families()}
SUITE_PROBLEMS = [f"{PREFIX}{n}{noise}" for n in FAMILIES for noise in ("", "-noisy")]


def family_of(problem: str) -> Family:
    """The family of a suite problem name ("suite-zdt2-noisy" -> zdt2)."""
    return FAMILIES[problem.removeprefix(PREFIX).removesuffix("-noisy")]


def suite_problem(name: str, budget: Budget) -> Problem:
    """The suite problem `name`: its family's function on the unit cube (`test_function_problem`), scored against
    its own reference point; "-noisy": Gaussian noise (NOISE_SHARE of each objective's spread), its standard
    deviation told to the optimizer; a constrained family: its `constrained` objectives at least their median."""
    family = family_of(name)
    fn = family.make().to(torch.float64)
    problem = test_function_problem(name, fn, budget, None)
    sample = problem.evaluate(torch.quasirandom.SobolEngine(fn.dim, scramble=True, seed=0).draw(
        SAMPLE_POINTS, dtype=torch.float64))
    std = [NOISE_SHARE * float(s) for s in sample.std(dim=0)] if name.endswith("-noisy") else None
    if std is not None:
        problem = test_function_problem(name, fn, budget, std)
    info = {**problem.info, "family": family.name}
    mins = {problem.objectives[c]: float(sample[:, c].median()) for c in family.constrained}
    if mins:
        info["minimums"] = mins
    return replace(problem, minimums=mins, info=info)
