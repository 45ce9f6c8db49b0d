"""Re-scoring the top candidates on more documents before choosing the merge to take home: does it pay?

    .venv/bin/python -m benchmarks.rescore_top --problem demo-noisy --draws 5

Replays stored runs of a noisy problem (`benchmarks/data/take_home_points_<problem>.json`: every evaluation's point,
TRUE values and the binomially noisy values the search saw). After the first `at` evaluations, the `top` merges by
the posterior mean of the preference are scored again on `extra` times the documents they had (a fresh binomial
draw around their TRUE values, pooled with the first: the stderr shrinks by sqrt(1 + extra)), and the take-home
merge is chosen again by the posterior. The cost is counted in evaluations' worth of documents (top x extra), so a
variant that stops the search early and re-scores can be compared with the plain choice at the same cost.
Reported per strategy and variant: the share of the available gain of the TRUE value of the chosen merge
(take_home.share_of_gain), the mean over `--draws` re-scoring draws per run, then median [IQR] over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.best_in_space import cached_best
from benchmarks.demo_tables import DEFAULT_DEMO_DIR, DEMO_EXAMPLES
from benchmarks.environment import DATA, benchmark_environment, quiet_benchmark
from benchmarks.problems import PROBLEM_BUDGETS, Problem, binomial_stderr, make_problem
from benchmarks.report import fmt
from benchmarks.results import StrategyRun, read_results
from benchmarks.take_home import recipe_value, share_of_gain


@dataclass(frozen=True)
class Variant:
    """Choose after the first `at` evaluations (None: all), the `top` by posterior re-scored on `extra` x their
    documents first (top 0: the plain posterior choice)."""

    at: int | None
    top: int
    extra: int

    def label(self, total: int) -> str:
        when = f"after {self.at if self.at is not None else total}"
        return when + (f", top {self.top} re-scored on {1 + self.extra}x documents" if self.top else ", as is")

    def cost(self, total: int) -> int:
        """Evaluations' worth of documents scored in all."""
        return (self.at if self.at is not None else total) + self.top * self.extra


VARIANTS = [Variant(None, 0, 0), Variant(None, 3, 1), Variant(None, 5, 1), Variant(None, 3, 3),
            Variant(25, 5, 1), Variant(20, 5, 2)]


def choose(run: StrategyRun, problem: Problem, v: Variant, generator: torch.Generator) -> float:
    """The TRUE preference value of the merge `run` takes home under variant `v` (NaN: none)."""
    from mmmo.optimizer.target import choose_take_home, posterior_value

    target, n = problem.target(), problem.n_examples
    assert n is not None, f"{problem.name} is not a noisy problem"
    cols = [problem.objectives.index(t) for t in problem.tasks]
    k = len(run.x) if v.at is None else min(v.at, len(run.x))
    X = torch.tensor(run.x[:k], dtype=torch.float64)
    Y = torch.tensor(run.y[:k], dtype=torch.float64)
    Y_obs = torch.tensor(run.observed[:k], dtype=torch.float64)
    ok = ~torch.isnan(Y_obs).any(-1)
    X, Y, Y_obs = X[ok], Y[ok], Y_obs[ok]
    docs = torch.full((X.shape[0],), float(n), dtype=torch.float64)
    if v.top:
        posterior = posterior_value(X, Y_obs, target, binomial_stderr(Y_obs, docs.unsqueeze(-1), cols) ** 2)
        score = posterior if posterior is not None else target.value(Y_obs)
        for i in torch.argsort(score, descending=True)[: v.top].tolist():
            more = n * v.extra
            p = Y[i, cols].clamp(0.0, 1.0)
            fresh = torch.binomial(torch.full_like(p, float(more)), p, generator=generator) / more
            Y_obs[i, cols] = (n * Y_obs[i, cols] + more * fresh) / (n + more)
            docs[i] = n + more
    chosen = choose_take_home(X, Y_obs, target, binomial_stderr(Y_obs, docs.unsqueeze(-1), cols) ** 2, by="posterior")
    return float("nan") if chosen is None else float(target.value(Y[chosen.row]))


def table(problem: Problem, runs: list[StrategyRun], draws: int) -> str:
    best = cached_best(problem)
    if best is None:
        raise SystemExit(f"no best in the space cached for {problem.name}: run benchmarks.take_home --best-in-space")
    recipe, total = recipe_value(problem), problem.budget.total
    lines = [f"{problem.name}: best in the space {best.value:.4f}, standard recipe {recipe:.4f}; share of the "
             f"available gain, mean of {draws} re-scoring draws per run, median [IQR] over seeds", "",
             "| strategy | variant | documents (evaluations' worth) | seeds | share of available gain |",
             "|---|---|---|---|---|"]
    for strategy in dict.fromkeys(r.strategy for r in runs):
        rs = [r for r in runs if r.strategy == strategy]
        for v in VARIANTS:
            shares = []
            for r in rs:
                g = torch.Generator().manual_seed(7919 * r.seed + 1)
                values = [choose(r, problem, v, g) for _ in range(draws if v.top else 1)]
                shares.append(statistics.fmean(share_of_gain(x, recipe, best.value) for x in values))
            lines.append(f"| {strategy} | {v.label(total)} | {v.cost(total)} | {len(rs)} | {fmt(shares, 0, 100)}% |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_environment()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="demo-noisy")
    p.add_argument("--draws", type=int, default=5, help="re-scoring draws per run")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    quiet_benchmark(a.threads)
    problem = make_problem(a.problem, PROBLEM_BUDGETS[a.problem], DEFAULT_DEMO_DIR, DEMO_EXAMPLES)
    key, runs = read_results(DATA / f"take_home_points_{a.problem}.json", StrategyRun.from_json)
    if key is None:
        raise SystemExit(f"no stored runs of {a.problem}: run benchmarks.search_quality with take-home strategies")
    print(table(problem, runs, a.draws), flush=True)


if __name__ == "__main__":
    main()
