"""The merge you take home: the TRUE preference value of the merge each strategy would export, against the best
merge in the space.

    .venv/bin/python benchmarks/take_home.py --problem demo --best-in-space   # cache the best in the space
    .venv/bin/python benchmarks/take_home.py --problem demo --run "single-objective BO"   # resumable, 5 seeds
    .venv/bin/python benchmarks/take_home.py --problem demo                   # table and plot from stored runs
    .venv/bin/python benchmarks/take_home.py --problem all --new PATH ...      # every problem, with other runs

The preference is the problem's `Target` (`search_quality.Problem.target`): the mean of the task scores, subject
to the problem's outcome constraints (demo-constrained: every task at least the base model's). Each strategy
exports its own way: the library's Bayesian-optimisation strategies (`mm-mo`, `qnehvi`) the evaluated merge with
the highest posterior mean of the preference (`mmmo.search.target.choose_take_home(by="posterior")` on what
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import search_quality as sq
import torch

BEST_IN_SPACE = sq.DATA / "best_in_space.json"
SAMPLES = 100_000
REFINE_TOP = 16
SINGLE_OBJECTIVE = "single-objective BO"
TAKE_HOME_PROBLEMS = ["demo", "demo-noisy", "demo-layers3", "demo-layers6", "demo-constrained"]
# A problem whose stored runs of target-blind strategies are another problem's (same surrogate, same runs).
RUNS_FROM = {"demo-constrained": "demo"}
ORDER = ["mm-mo", "qnehvi", SINGLE_OBJECTIVE, "cma-es", "random", "nsga2", "standard recipe"]

Values = Callable[[torch.Tensor], torch.Tensor]  # points [k, d] in the unit cube -> [k] (or [k, c] slacks)


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
    return "posterior" if sq.is_bo(base) and base != SINGLE_OBJECTIVE else "observed"


@dataclass(frozen=True)
class TakeHome:
    """The merge a run exports after its first `evaluations`: its row in the run (None: no evaluated merge met
    the constraints as observed) and its TRUE preference value (NaN when None)."""

    evaluations: int
    row: int | None
    value: float


def take_home(run: dict[str, Any], target: Any, rule: str, stderr: Values | None = None,
              evaluations: int | None = None) -> TakeHome:
    """What `run` (a stored search_quality run: `x`, true `y`, observed `y_obs` when noisy) exports after its
    first `evaluations` (None: all), chosen by `rule` on what it observed; `stderr` maps observed values
    `[n, m]` to their stderrs (None: noise-free, the GP infers its noise as the library's runs did)."""
    from mmmo.search.target import choose_take_home

    n = len(run["x"]) if evaluations is None else min(evaluations, len(run["x"]))
    X = torch.tensor(run["x"][:n], dtype=torch.float64)
    Y = torch.tensor(run["y"][:n], dtype=torch.float64)
    Y_obs = torch.tensor(run.get("y_obs", run["y"])[:n], dtype=torch.float64)
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


# ------------------------------------------------------------------------------------------ best in the space


def best_in_space(value: Values, dim: int, *, slack: Values | None = None, samples: int = SAMPLES,
                  top: int = REFINE_TOP, seed: int = 0) -> tuple[float, list[float], float]:
    """The highest `value` over the unit cube `[0, 1]^dim` where every `slack` (if given) is >= 0.

    `samples` scrambled Sobol points are scored; the best `top` feasible ones start a local search (L-BFGS-B, or
    SLSQP with the slacks as inequality constraints) with finite-difference gradients. Returns the best value,
    its point, and the share of the sampled points that are feasible. Raises when no sampled point is."""
    from mmmo.search.strategies import sobol_points

    X = sobol_points(samples, dim, seed)
    v = torch.cat([value(c) for c in X.split(8192)])
    ok = torch.ones_like(v, dtype=torch.bool) if slack is None else torch.cat(
        [(slack(c) >= 0).all(-1) for c in X.split(8192)])
    if not bool(ok.any()):
        raise ValueError("no sampled point is feasible")
    feasible_share = float(ok.double().mean())
    v = torch.where(ok, v, torch.full_like(v, -math.inf))
    order = torch.argsort(v, descending=True)[:top]
    best_v, best_x = float(v[order[0]]), X[order[0]].tolist()
    for i in order.tolist():
        x, fx = _refine(value, slack, X[i])
        if fx > best_v:
            best_v, best_x = fx, x
    return best_v, best_x, feasible_share


def _refine(value: Values, slack: Values | None, x0: torch.Tensor) -> tuple[list[float], float]:
    """One local search from `x0`; returns its point and value if feasible (else `x0`'s)."""
    import numpy as np
    from scipy.optimize import minimize

    h = 1e-6

    def batch(f: Values, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # f and its forward-difference Jacobian in one call: x and x + h e_j for every j
        P = torch.as_tensor(x, dtype=torch.float64).unsqueeze(0).repeat(len(x) + 1, 1)
        P[1:] += h * torch.eye(len(x), dtype=torch.float64)
        F = f(P).detach().double().reshape(len(x) + 1, -1).numpy()
        return F[0], ((F[1:] - F[0]) / h).T

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, J = batch(value, x)
        return -float(f[0]), -J[0]

    bounds = [(0.0, 1.0)] * x0.numel()
    start = x0.numpy().copy()
    if slack is None:
        res = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 200})
    else:
        # a small margin: SLSQP ends within its tolerance of a bound, and the point must be strictly feasible
        cons = {"type": "ineq", "fun": lambda x: batch(slack, x)[0] - 1e-7, "jac": lambda x: batch(slack, x)[1]}
        res = minimize(objective, start, jac=True, method="SLSQP", bounds=bounds, constraints=[cons],
                       options={"maxiter": 200})
    x = torch.as_tensor(np.clip(res.x, 0.0, 1.0), dtype=torch.float64).unsqueeze(0)
    feasible = slack is None or bool((slack(x) >= 0).all())
    if not feasible:
        return x0.tolist(), float(value(x0.unsqueeze(0))[0])
    return x[0].tolist(), float(value(x)[0])


@dataclass(frozen=True)
class BestInSpace:
    """A problem's best merge: its TRUE preference value and point, how it was found, and its cache key."""

    key: dict[str, Any]
    value: float
    x: list[float]
    feasible_share: float  # of the sampled points (1.0 unconstrained)
    samples: int
    refined: int
    seconds: float


def best_key(problem: sq.Problem) -> dict[str, Any]:
    """What determines a problem's best in the space: its surrogate table and its target."""
    target = problem.target()
    return {"table_digest": problem.info.get("table_digest"), "objectives": problem.objectives,
            "weights": list(target.weights), "minimums": [list(m) for m in target.minimums], "samples": SAMPLES}


def cached_best(problem: sq.Problem, compute: bool = False) -> BestInSpace | None:
    """The problem's best in the space from the cache (computed and stored when `compute`); None if missing."""
    stored = json.loads(BEST_IN_SPACE.read_text()) if BEST_IN_SPACE.is_file() else {}
    key = best_key(problem)
    hit = next((b for b in stored.get("problems", {}).values() if b["key"] == key), None)
    if hit is not None:
        return BestInSpace(**hit)
    if not compute:
        return None
    target = problem.target()
    t0 = time.perf_counter()
    slack = (lambda X: target.slack(problem.evaluate(X))) if target.constrained else None
    v, x, share = best_in_space(lambda X: target.value(problem.evaluate(X)), problem.dim, slack=slack)
    best = BestInSpace(key, v, [round(c, 6) for c in x], share, SAMPLES, REFINE_TOP,
                       round(time.perf_counter() - t0, 1))
    stored.setdefault("problems", {})[problem.name] = asdict(best)
    BEST_IN_SPACE.write_text(json.dumps(stored, indent=1) + "\n")
    return best


# ------------------------------------------------------------------------------------ single-objective BO


def run_single_objective(problem: sq.Problem, budget: sq.Budget, seed: int) -> dict[str, Any]:
    """BO on the preference alone (the library's loop with one objective: qLogNEI), from the same initial design
    as mm-mo; on a noisy problem it sees the mean of the noisy task scores with its stderr. Returns a run in
    search_quality's format (every objective's true and observed values per evaluation)."""
    from mmmo.run.records import Trial
    from mmmo.search.acquisition import budget_for
    from mmmo.search.loop import LoopOptions, run_loop

    rec = sq.Recorder(problem, seed)
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

    opt, _ = sq.loop_spec("mm-mo", problem, budget, seed)
    options = LoopOptions(opt=opt, dim=problem.dim, objective_names=["preference"],
                          task_objective_names=["preference"], budget=budget_for(1),
                          initial_points=problem.recipes())
    t0 = time.perf_counter()
    run_loop([], options, evaluate)
    seconds = time.perf_counter() - t0
    return {"strategy": SINGLE_OBJECTIVE, "seed": seed, **rec.result(), "seconds": seconds,
            "batches": budget.batches, "step_seconds": (seconds - rec.seconds) / budget.batches}


def part_file(problem: str) -> Path:
    return sq.DATA / f"search_quality_{problem}.part-take-home.json"


def run_strategy(problem: sq.Problem, strategy: str, seeds: Sequence[int], out: Path) -> None:
    """`seeds` of `strategy` (single-objective BO, or a search_quality strategy) on `problem`, stored
    (resumably) in `out` under the problem's results key."""
    budget = problem.budget
    key = sq.results_key(problem, budget)
    stored = json.loads(out.read_text()) if out.is_file() else {"key": key, "runs": []}
    if stored["key"] != key:
        raise SystemExit(f"{out}: stored runs are for another problem, budget or reference point")
    for seed in seeds:
        if any(r["strategy"] == strategy and r["seed"] == seed for r in stored["runs"]):
            continue
        if strategy == SINGLE_OBJECTIVE:
            r = run_single_objective(problem, budget, seed)
        else:
            r = sq.run_one(strategy, problem, budget, seed)
        stored["runs"].append(r)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(stored, separators=(",", ":")))
        tmp.replace(out)
        print(f"{problem.name} seed {seed} {strategy}: {r['seconds']:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------------- the table


def stored_runs(name: str, key: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored runs of problem `name` (results file and part files) whose key is `key`."""
    path = sq.default_out(name, False)
    runs: list[dict[str, Any]] = []
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored["key"] == key:
            runs = stored["runs"]
    return sq.merge_runs(runs, key, [], sq.parts(path))


def problem_runs(problem: sq.Problem, new: Sequence[Path]) -> list[dict[str, Any]]:
    """Every stored run of `problem` of a strategy in ORDER, the stored "mm-mo" labelled today's default, and every
    run in `new` (files of the same key, another process's), its "mm-mo" labelled the new default."""
    key = sq.results_key(problem, problem.budget)
    runs = stored_runs(problem.name, key)
    source = RUNS_FROM.get(problem.name)
    if source is not None:  # the same surrogate: target-blind strategies' runs are the source problem's
        src = sq.make_problem(source, sq.PROBLEM_BUDGETS[source], sq.DEFAULT_DEMO_DIR, sq.DEMO_EXAMPLES)
        if src.info["table_digest"] != problem.info["table_digest"]:
            raise SystemExit(f"{problem.name} and {source} no longer share a surrogate")
        have = {(r["strategy"], r["seed"]) for r in runs}
        runs += [r for r in stored_runs(source, sq.results_key(src, src.budget))
                 if (r["strategy"], r["seed"]) not in have]
    # the strategies of the table (not search_quality's ablations); "mm-mo" as stored is today's default
    runs = [r if r["strategy"] != "mm-mo" else {**r, "strategy": "mm-mo (today's default)"}
            for r in runs if r["strategy"] in ORDER]
    for path in new:
        other = json.loads(path.read_text())
        if other.get("key") != key:
            raise SystemExit(f"{path}: not runs of {problem.name} at its budget and reference point")
        runs += [r if r["strategy"] != "mm-mo" else {**r, "strategy": "mm-mo (new default)"} for r in other["runs"]]
    return runs


def label_order(strategy: str) -> tuple[int, str]:
    base = strategy.split(" (")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), strategy)


def stderr_model(problem: sq.Problem) -> Values | None:
    """What a noisy demo problem told the optimizer as each observed value's stderr (None: noise-free)."""
    if problem.n_examples is None:
        return None
    cols = [problem.objectives.index(n) for n in problem.tasks]
    return lambda Y: sq.binomial_stderr(Y, problem.n_examples, cols)


def checkpoints(budget: sq.Budget) -> list[int]:
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


def score_runs(problem: sq.Problem, runs: list[dict[str, Any]]) -> list[RunTakeHome]:
    target, stderr = problem.target(), stderr_model(problem)
    out = []
    for r in runs:
        rule = take_home_rule(r["strategy"])
        n = len(r["x"])
        points = [c for c in checkpoints(problem.budget) if c < n] + [n]
        curve = [take_home(r, target, rule, stderr, c) for c in points]
        Y = torch.tensor(r["y"], dtype=torch.float64)
        ok = target.feasible(Y) & ~torch.isnan(Y).any(-1)
        best = float(target.value(Y[ok]).max()) if bool(ok.any()) else math.nan
        lucky = curve[-1].value if rule == "observed" else take_home(r, target, "observed").value
        out.append(RunTakeHome(r["strategy"], r["seed"], curve, lucky, best,
                               sq.hv_curve(r["y"], problem.ref_point)[-1]))
    return out


def recipe_value(problem: sq.Problem) -> float:
    """The TRUE preference value of the standard recipe (the first, if several)."""
    return float(problem.target().value(problem.evaluate(problem.recipes()))[0])


def table(problem: sq.Problem, scored: list[RunTakeHome], best: BestInSpace, recipe: float) -> str:
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
        hv = sq.fmt([x.final_hv for x in rs], 1, 100 / best_hv)
        row = (f"| {s} | {take_home_rule(s)} | {len(rs)} | {sq.fmt(vals, 3)} | {sq.fmt(shares, 0, 100)}% "
               f"| {sq.fmt([x.best_observed for x in rs], 3)} | {sq.fmt([x.best_evaluated for x in rs], 3)} | {hv} |")
        if constrained:
            found = "".join("y" if x.curve[-1].row is not None else "n" for x in rs)
            row += f" {found.count('y')}/{len(rs)} ({found}) |"
        lines.append(row)
    return "\n".join(lines)


def plot(problem: sq.Problem, scored: list[RunTakeHome], best: BestInSpace, recipe: float, out: Path) -> None:
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
    ax.set_xlabel("evaluations")
    ax.set_ylabel("true preference of the merge it would export")
    ax.set_title(f"{problem.name}: take-home vs evaluations (median over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def report(problem: sq.Problem, new: Sequence[Path], png: Path) -> str:
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
            + f"). Plot: `{png.relative_to(sq.REPO) if png.is_relative_to(sq.REPO) else png}`.")
    return head + "\n\n" + table(problem, scored, best, recipe)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=[*TAKE_HOME_PROBLEMS, "all"], default="demo")
    p.add_argument("--best-in-space", action="store_true", help="find and cache the best in the space, then exit")
    p.add_argument("--run", default=None, help=f"run this strategy ({SINGLE_OBJECTIVE!r} or a search_quality one)")
    p.add_argument("--seeds", default="5", help="with --run: a count N (seeds 0..N-1) or a list, e.g. 1,3")
    p.add_argument("--out", type=Path, default=None, help="where --run stores its runs (default: the part file)")
    p.add_argument("--new", type=Path, nargs="*", default=[],
                   help="results files of the new code (same key); their 'mm-mo' is shown as 'mm-mo (new default)'")
    p.add_argument("--plot-dir", type=Path, default=sq.DATA)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    sq.quiet_benchmark(a.threads)
    names = TAKE_HOME_PROBLEMS if a.problem == "all" else [a.problem]
    for name in names:
        problem = sq.make_problem(name, sq.PROBLEM_BUDGETS[name], sq.DEFAULT_DEMO_DIR, sq.DEMO_EXAMPLES)
        if a.best_in_space:
            best = cached_best(problem, compute=True)
            print(f"{name}: best in the space {best.value:.4f} at {best.x} ({best.seconds} s)", flush=True)
        elif a.run:
            seeds = [int(v) for v in a.seeds.split(",")] if "," in a.seeds else list(range(int(a.seeds)))
            run_strategy(problem, a.run, seeds, a.out or part_file(name))
        else:
            new = [f for f in a.new if json.loads(f.read_text()).get("key") == sq.results_key(problem, problem.budget)]
            print(report(problem, new, a.plot_dir / f"take_home_{name}.png") + "\n", flush=True)


if __name__ == "__main__":
    main()
