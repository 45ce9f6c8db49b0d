"""How strong the initial design's evidence between the two priors is, point by point: at the first batch of each
problem and seed, each prior's CRPS of every initial-design point's hypervolume gain
(`mmmo.optimizer.prior.initial_design_point_errors`), the sum `prior_mean: forecast` compares, and a one-sided
Wilcoxon signed-rank test of "the fitted prior forecasts better" over the points. A rule that keeps the pin
unless that test is significant needs the test to separate the problems where the fitted prior searches better.

    .venv/bin/python -m benchmarks.prior_evidence demo demo-noisy suite-vehiclesafety suite-carsideimpact dtlz2
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.environment import DATA, benchmark_environment, quiet_benchmark

SEEDS = 5
DEMO_DIR = Path(".cache/demo-test")  # read only by the problems built from the real demo (demo-constrained, demo-real)


@dataclass(frozen=True)
class Evidence:
    """One problem and seed at its first batch: each prior's CRPS per initial-design point (hypervolume units) and
    the one-sided Wilcoxon p-value of "fitted's errors are lower" (1.0 when every pair ties)."""

    problem: str
    seed: int
    fitted: list[float]
    worst: list[float]
    p_fitted_better: float

    @property
    def ratio(self) -> float:
        """The fitted prior's summed error over the pinned one's: below 1, `forecast` picks the fitted prior."""
        return sum(self.fitted) / sum(self.worst)

    def line(self) -> str:
        better = sum(f < w for f, w in zip(self.fitted, self.worst, strict=True))
        return (f"{self.problem:28s} seed {self.seed}  fitted/pinned error {self.ratio:4.2f}  fitted better on "
                f"{better}/{len(self.fitted)} points  Wilcoxon p = {self.p_fitted_better:.3f}")


def first_batch_evidence(name: str, seed: int) -> Evidence:
    """`Evidence` for problem `name` at seed `seed`: its initial design observed as a search would observe it."""
    import torch
    from scipy.stats import wilcoxon

    from benchmarks.problems import PROBLEM_BUDGETS, make_problem
    from benchmarks.strategies import Recorder, initial_points
    from benchmarks.suite_problems import SUITE_BUDGET, SUITE_PROBLEMS, suite_problem
    from mmmo.optimizer.gp import fit_models_with_prior
    from mmmo.optimizer.prior import initial_design_point_errors

    if name in SUITE_PROBLEMS:
        budget = SUITE_BUDGET
        problem = suite_problem(name, budget)
    else:
        budget = PROBLEM_BUDGETS[name]
        problem = make_problem(name, budget, DEMO_DIR, 50)
    X = initial_points(problem, budget, seed)
    Y, stderr = Recorder(problem, seed)(X)
    # The told stderrs squared, without the loop's floor on a 0 or 1 score's variance (optimizer.gp): the errors can
    # differ slightly from what a search journals.
    surrogates = fit_models_with_prior(X, Y, None if stderr is None else stderr**2, "forecast",
                                       ref_point=problem.ref_point)
    models = {kind: list(m.models) for kind, m in surrogates.by_prior.items()}
    ref = torch.tensor(problem.ref_point, dtype=torch.float64)
    errors = initial_design_point_errors(models, Y.to(torch.float64), torch.arange(X.shape[0]), ref)
    fitted, worst = errors["fitted"], errors["worst"]
    tied = all(f == w for f, w in zip(fitted, worst, strict=True))
    p = 1.0 if tied else float(wilcoxon(fitted, worst, alternative="less").pvalue)
    return Evidence(name, seed, fitted, worst, p)


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_environment()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problems", nargs="+", help="search_quality problem names (3 or more objectives)")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--alpha", type=float, default=0.1, help="the test's level, for the summary line")
    parser.add_argument("--out", type=Path, default=DATA / "prior_evidence.json")
    a = parser.parse_args(argv)
    quiet_benchmark(1)
    found = [first_batch_evidence(name, seed) for name in a.problems for seed in range(a.seeds)]
    for e in found:
        print(e.line(), flush=True)
    forecast = sum(e.ratio < 1 for e in found)
    significant = sum(e.p_fitted_better < a.alpha for e in found)
    print(f"{len(found)} problem-seeds: the summed errors pick the fitted prior on {forecast}, "
          f"a Wilcoxon test at p < {a.alpha} on {significant}")
    a.out.write_text(json.dumps([asdict(e) for e in found], indent=1) + "\n")


if __name__ == "__main__":
    main()
