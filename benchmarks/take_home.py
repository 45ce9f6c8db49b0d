"""The merge you take home: the TRUE preference value of the merge each strategy would export, against the best
merge in the space.

    .venv/bin/python -m benchmarks.take_home --problem demo --best-in-space   # cache the best in the space
    .venv/bin/python -m benchmarks.take_home --problem demo --run "single-objective BO"   # resumable, 5 seeds
    .venv/bin/python -m benchmarks.take_home --problem demo                   # table and plot from stored runs
    .venv/bin/python -m benchmarks.take_home --problem all --new PATH ...      # every problem, with other runs

The preference is the problem's `Target` (`benchmarks.problems.Problem.target`): the mean of the task scores, subject
to the problem's outcome constraints (demo-constrained: every task at least the base model's). Each strategy
exports its own way: the library's Bayesian-optimisation strategies (`mm-mo`, `qnehvi`) the evaluated merge with
the highest posterior mean of the preference (`mmmo.optimizer.target.choose_take_home(by="posterior")` on what
they observed: the noisy scores with their stderrs on a noisy problem, the values on a noise-free one), the
baselines (random, nsga2, cma-es, the standard recipe, single-objective BO) their best observed. Only a merge
whose OBSERVED scores meet the constraints can be exported. Its take-home is the surrogate's TRUE preference
value at that merge; the share of the available gain is (take-home - standard recipe) / (best in space -
standard recipe). The best in the space is found by dense sampling (100,000 scrambled Sobol points) and L-BFGS-B
(SLSQP under constraints) from the best 16, on the TRUE surrogate, feasible points only, and is cached in
benchmarks/data/best_in_space.json with the problem's table digest and target.

Runs are read from benchmarks/data/search_quality_<problem>.json and its part files (this script's own runs go
to the part file `search_quality_<problem>.part-take-home.json`); demo-constrained also reads demo's stored runs
for every strategy it did not run itself (the same surrogate; those strategies do not see the constraints).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.best_in_space import BestInSpace, Values, cached_best
from benchmarks.demo_tables import DEFAULT_DEMO_DIR, DEMO_EXAMPLES
from benchmarks.environment import DATA, REPO, benchmark_environment, quiet_benchmark
from benchmarks.metrics import hv_curve
from benchmarks.problems import PROBLEM_BUDGETS, Budget, Problem, binomial_stderr, make_problem, results_key
from benchmarks.report import finish_plot, fmt
from benchmarks.results import StrategyRun, merge_runs, parts, read_results, results_path, save_runs
from benchmarks.strategies import Recorder, is_bo, loop_spec, run_one

SINGLE_OBJECTIVE = "single-objective BO"
TAKE_HOME_PROBLEMS = ["demo", "demo-noisy", "demo-layers3", "demo-layers6", "demo-constrained"]
# A problem whose stored runs of target-blind strategies are another problem's (same surrogate, same runs).
RUNS_FROM = {"demo-constrained": "demo"}
ORDER = ["mm-mo", "qnehvi", SINGLE_OBJECTIVE, "cma-es", "random", "nsga2", "standard recipe"]


# ------------------------------------------------------------------------------------------- pure arithmetic


def share_of_gain(take_home: float, recipe: float, best: float) -> float:
    """(take-home - standard recipe) / (best in space - standard recipe): 1.0 is the best merge there is, 0.0 the
    standard recipe, negative below it; NaN when nothing was taken home."""
    if not best > recipe:
        raise ValueError(f"the best in the space ({best}) must exceed the standard recipe ({recipe})")
    return (take_home - recipe) / (best - recipe)


def take_home_rule(strategy: str) -> str:
    """How a strategy chooses its export: `posterior` for the library's Bayesian-optimisation strategies,
    `observed` (its best observed) for the baselines."""
    base = strategy.split(" (")[0]  # "mm-mo (new default)" chooses as mm-mo does
    return "posterior" if is_bo(base) and base != SINGLE_OBJECTIVE else "observed"


@dataclass(frozen=True)
class TakeHome:
    """The merge a run exports after its first `evaluations`: its row in the run (None: no evaluated merge met
    the constraints as observed) and its TRUE preference value (NaN when None)."""

    evaluations: int
    row: int | None
    value: float


def take_home(run: StrategyRun, target: Any, rule: str, stderr: Values | None = None,
              evaluations: int | None = None) -> TakeHome:
    """What `run` (a stored search_quality run: `x`, true `y`, observed `y_obs` when noisy) exports after its
    first `evaluations` (None: all), chosen by `rule` on what it observed; `stderr` maps observed values
    `[n, m]` to their stderrs (None: noise-free, the GP infers its noise as the library's runs did)."""
    from mmmo.optimizer.target import choose_take_home

    n = len(run.x) if evaluations is None else min(evaluations, len(run.x))
    X = torch.tensor(run.x[:n], dtype=torch.float64)
    Y = torch.tensor(run.y[:n], dtype=torch.float64)
    Y_obs = torch.tensor(run.observed[:n], dtype=torch.float64)
    done = ~torch.isnan(Y_obs).any(-1)  # failed evaluations are never exported
    idx = torch.nonzero(done).flatten()
    if idx.numel() == 0:
        return TakeHome(n, None, math.nan)
    Yvar = None if stderr is None else stderr(Y_obs[idx]) ** 2
    chosen = choose_take_home(X[idx], Y_obs[idx], target, Yvar, by=rule)
    if chosen is None:
        return TakeHome(n, None, math.nan)
    i = int(idx[chosen.row])
    return TakeHome(n, i, float(target.value(Y[i])))


# ------------------------------------------------------------------------------------ single-objective BO


def run_single_objective(problem: Problem, budget: Budget, seed: int) -> StrategyRun:
    """BO on the preference alone (the library's loop with one objective: qLogNEI), from the same initial design
    as mm-mo; on a noisy problem it sees the mean of the noisy task scores with its stderr. Returns a run in
    search_quality's format (every objective's true and observed values per evaluation)."""
    from mmmo.optimizer.acquisition import budget_for
    from mmmo.optimizer.loop import run_loop
    from mmmo.optimizer.options import LoopOptions
    from mmmo.run.records import Trial

    rec = Recorder(problem, seed)
    target = problem.target()
    w = torch.tensor(target.weights, dtype=torch.float64)
    w = w / w.sum()

    def evaluate(trials: list[Trial]) -> list[Trial]:
        Y, S = rec(torch.tensor([t.x for t in trials], dtype=torch.float64))
        out = []
        for i, t in enumerate(trials):
            if bool(torch.isnan(Y[i]).any()):
                out.append(replace(t, status="failed", error="evaluation failed"))
                continue
            stderr = {} if S is None else {"preference": float(((w * S[i]) ** 2).sum().sqrt())}
            out.append(replace(t, status="done", objectives={"preference": float(target.value(Y[i]))},
                               stderr=stderr))
        return out

    opt, _ = loop_spec("mm-mo", problem, budget, seed)
    options = LoopOptions(opt=opt, dim=problem.dim, objective_names=["preference"],
                          task_objective_names=["preference"], budget=budget_for(1),
                          initial_points=problem.recipes())
    t0 = time.perf_counter()
    run_loop([], options, evaluate)
    seconds = time.perf_counter() - t0
    return StrategyRun(strategy=SINGLE_OBJECTIVE, seed=seed, x=rec.xs, y=rec.ys, y_obs=rec.observed(), seconds=seconds,
                       eval_seconds=rec.seconds, batches=budget.batches,
                       step_seconds=(seconds - rec.seconds) / budget.batches)


def part_file(problem: str) -> Path:
    return DATA / f"search_quality_{problem}.part-take-home.json"


def run_strategy(problem: Problem, strategy: str, seeds: Sequence[int], out: Path) -> None:
    """`seeds` of `strategy` (single-objective BO, or a search_quality strategy) on `problem`, stored
    (resumably) in `out` under the problem's results key."""
    budget = problem.budget
    key = results_key(problem, budget)
    stored_key, runs = read_results(out, StrategyRun.from_json)
    if stored_key is not None and stored_key != key:
        raise SystemExit(f"{out}: stored runs are for another problem, budget or reference point")
    for seed in seeds:
        if any(r.strategy == strategy and r.seed == seed for r in runs):
            continue
        if strategy == SINGLE_OBJECTIVE:
            r = run_single_objective(problem, budget, seed)
        else:
            r = run_one(strategy, problem, budget, seed)
        runs.append(r)
        save_runs(out, key, runs)
        print(f"{problem.name} seed {seed} {strategy}: {r.seconds:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------------- the table


def stored_runs(name: str, key: dict[str, Any]) -> list[StrategyRun]:
    """The stored runs of problem `name` (results file and part files) whose key is `key`."""
    path = results_path("search_quality", name, False)
    stored_key, runs = read_results(path, StrategyRun.from_json)
    return merge_runs(runs if stored_key == key else [], key, [], parts(path))


def problem_runs(problem: Problem, new: Sequence[Path]) -> list[StrategyRun]:
    """Every stored run of `problem` of a strategy in ORDER, the stored "mm-mo" labelled the former default, and every
    run in `new` (files of the same key, another process's), its "mm-mo" labelled the new default."""
    key = results_key(problem, problem.budget)
    runs = stored_runs(problem.name, key)
    source = RUNS_FROM.get(problem.name)
    if source is not None:  # the same surrogate: target-blind strategies' runs are the source problem's
        src = make_problem(source, PROBLEM_BUDGETS[source], DEFAULT_DEMO_DIR, DEMO_EXAMPLES)
        if src.info["table_digest"] != problem.info["table_digest"]:
            raise SystemExit(f"{problem.name} and {source} no longer share a surrogate")
        have = {(r.strategy, r.seed) for r in runs}
        runs += [r for r in stored_runs(source, results_key(src, src.budget)) if (r.strategy, r.seed) not in have]
    # the strategies of the table (not search_quality's ablations); "mm-mo" as stored ran on 2026-11-27, with the
    # default of that day (no take-home points)
    runs = [r if r.strategy != "mm-mo" else replace(r, strategy="mm-mo (former default, k = 0)")
            for r in runs if r.strategy in ORDER]
    for path in new:
        other_key, others = read_results(path, StrategyRun.from_json)
        if other_key != key:
            raise SystemExit(f"{path}: not runs of {problem.name} at its budget and reference point")
        runs += [r if r.strategy != "mm-mo" else replace(r, strategy="mm-mo (new default)") for r in others]
    return runs


def label_order(strategy: str) -> tuple[int, str]:
    base = strategy.split(" (")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), strategy)


def stderr_model(problem: Problem) -> Values | None:
    """What a noisy demo problem told the optimizer as each observed value's stderr (None: noise-free)."""
    if problem.n_examples is None:
        return None
    cols = [problem.objectives.index(n) for n in problem.tasks]
    return lambda Y: binomial_stderr(Y, problem.n_examples, cols)


def checkpoints(budget: Budget) -> list[int]:
    """Evaluation counts at which a run's take-home is computed: the end of the initial design and of each batch."""
    return [budget.initial + b * budget.batch_size for b in range(budget.batches + 1)]


@dataclass(frozen=True)
class RunTakeHome:
    strategy: str
    seed: int
    curve: list[TakeHome]  # at every checkpoint; the last is the run's take-home
    best_observed: float  # the TRUE preference of its best observed feasible merge (the choice by luck)
    best_evaluated: float  # the highest TRUE preference among its feasible evaluated merges (hindsight)
    final_hv: float


def score_runs(problem: Problem, runs: list[StrategyRun]) -> list[RunTakeHome]:
    target, stderr = problem.target(), stderr_model(problem)
    out = []
    for r in runs:
        rule = take_home_rule(r.strategy)
        n = len(r.x)
        points = [c for c in checkpoints(problem.budget) if c < n] + [n]
        curve = [take_home(r, target, rule, stderr, c) for c in points]
        Y = torch.tensor(r.y, dtype=torch.float64)
        ok = target.feasible(Y) & ~torch.isnan(Y).any(-1)
        best = float(target.value(Y[ok]).max()) if bool(ok.any()) else math.nan
        lucky = curve[-1].value if rule == "observed" else take_home(r, target, "observed").value
        out.append(RunTakeHome(r.strategy, r.seed, curve, lucky, best, hv_curve(r.y, problem.ref_point)[-1]))
    return out


def recipe_value(problem: Problem) -> float:
    """The TRUE preference value of the standard recipe (the first, if several)."""
    return float(problem.target().value(problem.evaluate(problem.recipes()))[0])


def table(problem: Problem, scored: list[RunTakeHome], best: BestInSpace, recipe: float) -> str:
    """One problem's markdown table: per strategy the take-home, its share of the gain, the hindsight best and the
    final hypervolume (% of the best run's)."""
    best_hv = max(s.final_hv for s in scored)
    constrained = problem.target().constrained
    lines = ["| strategy | chooses by | seeds | take-home, true preference | share of available gain "
             "| best observed's true value | best evaluated (hindsight) | final HV, % of best seen |"
             + (" feasible merge found |" if constrained else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if constrained else "")]
    for s in sorted({x.strategy for x in scored}, key=label_order):
        rs = sorted((x for x in scored if x.strategy == s), key=lambda x: x.seed)
        vals = [x.curve[-1].value for x in rs]
        shares = [share_of_gain(v, recipe, best.value) for v in vals]
        hv = fmt([x.final_hv for x in rs], 1, 100 / best_hv)
        row = (f"| {s} | {take_home_rule(s)} | {len(rs)} | {fmt(vals, 3)} | {fmt(shares, 0, 100)}% "
               f"| {fmt([x.best_observed for x in rs], 3)} | {fmt([x.best_evaluated for x in rs], 3)} | {hv} |")
        if constrained:
            found = "".join("y" if x.curve[-1].row is not None else "n" for x in rs)
            row += f" {found.count('y')}/{len(rs)} ({found}) |"
        lines.append(row)
    return "\n".join(lines)


def plot(problem: Problem, scored: list[RunTakeHome], best: BestInSpace, recipe: float, out: Path) -> None:
    """Median (over seeds) TRUE take-home value against evaluations, per strategy, with the best in the space."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, s in enumerate(sorted({x.strategy for x in scored} - {"standard recipe"}, key=label_order)):
        curves = [x.curve for x in scored if x.strategy == s]  # (the standard recipe: its own line below)
        ns = sorted({t.evaluations for c in curves for t in c})
        # a run shorter than others keeps its last take-home
        med = [np.nanmedian([next((t.value for t in reversed(c) if t.evaluations <= n), np.nan) for c in curves])
               for n in ns]
        ax.plot(ns, med, "-", marker="o", ms=3, label=s, lw=2 if s.startswith("mm-mo") else 1.2,
                color=plt.get_cmap("tab10")(i % 10))
    ax.axhline(best.value, color="k", lw=1, ls="--", label=f"best in space {best.value:.3f}")
    ax.axhline(recipe, color="grey", lw=1, ls=":", label=f"standard recipe {recipe:.3f}")
    finish_plot(fig, ax, out, ylabel="true preference of the merge it would export",
                title=f"{problem.name}: take-home vs evaluations (median over seeds)")


def report(problem: Problem, new: Sequence[Path], png: Path) -> str:
    best = cached_best(problem)
    if best is None:
        raise SystemExit(f"no best in the space for {problem.name}: run --problem {problem.name} --best-in-space")
    recipe = recipe_value(problem)
    runs = problem_runs(problem, new)
    if not runs:
        return f"### {problem.name}\n\nno runs stored"
    scored = score_runs(problem, runs)
    plot(problem, scored, best, recipe, png)
    b = problem.budget
    cons = "; constraints " + ", ".join(f"{problem.objectives[c]} >= {v:.3f}" for c, v in problem.target().minimums)
    head = (f"### {problem.name}\n\n{problem.dim}-D, budget {b.total} evaluations ({b.initial} initial + "
            f"{b.batches} x {b.batch_size}){cons if problem.minimums else ''}. Standard recipe {recipe:.3f}; "
            f"best in the space {best.value:.3f} ({best.samples:,} Sobol points, {best.refined} local searches"
            + (f"; {100 * best.feasible_share:.0f}% of the sampled points feasible" if problem.minimums else "")
            + f"). Plot: `{png.relative_to(REPO) if png.is_relative_to(REPO) else png}`.")
    return head + "\n\n" + table(problem, scored, best, recipe)


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_environment()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=[*TAKE_HOME_PROBLEMS, "all"], default="demo")
    p.add_argument("--best-in-space", action="store_true", help="find and cache the best in the space, then exit")
    p.add_argument("--run", default=None, help=f"run this strategy ({SINGLE_OBJECTIVE!r} or a search_quality one)")
    p.add_argument("--seeds", default="5", help="with --run: a count N (seeds 0..N-1) or a list, e.g. 1,3")
    p.add_argument("--out", type=Path, default=None, help="where --run stores its runs (default: the part file)")
    p.add_argument("--new", type=Path, nargs="*", default=[],
                   help="results files of the new code (same key); their 'mm-mo' is shown as 'mm-mo (new default)'")
    p.add_argument("--plot-dir", type=Path, default=DATA)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    quiet_benchmark(a.threads)
    names = TAKE_HOME_PROBLEMS if a.problem == "all" else [a.problem]
    for name in names:
        problem = make_problem(name, PROBLEM_BUDGETS[name], DEFAULT_DEMO_DIR, DEMO_EXAMPLES)
        if a.best_in_space:
            best = cached_best(problem, compute=True)
            print(f"{name}: best in the space {best.value:.4f} at {best.x} ({best.seconds} s)", flush=True)
        elif a.run:
            seeds = [int(v) for v in a.seeds.split(",")] if "," in a.seeds else list(range(int(a.seeds)))
            run_strategy(problem, a.run, seeds, a.out or part_file(name))
        else:
            new = [f for f in a.new if json.loads(f.read_text()).get("key") == results_key(problem, problem.budget)]
            print(report(problem, new, a.plot_dir / f"take_home_{name}.png") + "\n", flush=True)


if __name__ == "__main__":
    main()
