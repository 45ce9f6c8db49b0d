"""The search strategies compared on a problem, each behind one call: `run_one(name, problem, budget, seed)` gives
the run's record (every point, its true and observed values, timings); `Recorder` evaluates and keeps them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from benchmarks.demo_tables import DEMO_TASKS
from benchmarks.problems import Budget, Problem
from benchmarks.results import StrategyRun


class Recorder:
    """One run's evaluations: every point, its true and observed values, and the time spent evaluating."""

    def __init__(self, problem: Problem, seed: int) -> None:
        self.problem = problem
        self.generator = torch.Generator().manual_seed(1_000_003 * (seed + 1))  # the run's noise stream
        self.xs: list[list[float]] = []
        self.ys: list[list[float]] = []  # true values
        self.ys_obs: list[list[float]] = []  # what the optimizer saw
        self.seconds = 0.0

    def __call__(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Evaluate `X [n, dim]`: the observed values `[n, m]` and their stderrs (None when noise-free)."""
        t0 = time.perf_counter()
        X = X.to(torch.float64).reshape(-1, self.problem.dim)
        Y = self.problem.evaluate(X)
        Y_obs, S = (Y, None) if self.problem.noise is None else self.problem.noise(Y, self.generator)
        self.xs += X.tolist()
        self.ys += Y.tolist()
        self.ys_obs += Y_obs.tolist()
        self.seconds += time.perf_counter() - t0
        return Y_obs, S

    def observed(self) -> list[list[float]] | None:
        """What the optimizer saw, kept only where it differs from the truth (a noisy problem)."""
        return self.ys_obs if self.problem.noisy else None


# OptimizerSpec overrides of the strategies run through `run_loop` ("_objectives": optimise only those).
# The ablation of weak-to-strong, Fisher screening and known noise ran with the fitted prior mean (BoTorch's).
ALL_STEPS = {"weak_to_strong": {"enabled": True, "mode": "pool"}, "fisher_screening": True, "known_noise": True,
             "prior_mean": "fitted"}
LOOP_STRATEGIES: dict[str, dict[str, Any]] = {
    "mm-mo": {},  # the library's defaults
    "qnehvi": {"strategy": "qnehvi", "prior_mean": "fitted"},  # BoTorch's qLogNEHVI on BoTorch's default GPs
    "random": {"strategy": "random"},
    "nsga2": {"strategy": "nsga2"},
    # The ablation, relative to mm-mo with every step on (pool weak-to-strong, Fisher screening, known noise),
    # named by what it changes, so the names keep their meaning whatever the library's defaults are.
    "mm-mo all steps": ALL_STEPS,
    "all steps -w2s": {**ALL_STEPS, "weak_to_strong": {"enabled": False}},
    "all steps -fisher": {**ALL_STEPS, "fisher_screening": False},
    "all steps -noise": {**ALL_STEPS, "known_noise": False},
    "mm-mo crossover": {**ALL_STEPS, "weak_to_strong": {"enabled": True, "mode": "crossover"}},
    "mm-mo -w2s -fisher -prior": {"weak_to_strong": {"enabled": False}, "fisher_screening": False,
                                  "prior_mean": "fitted"},  # = qnehvi
    "mm-mo worst prior": {"prior_mean": "worst"},  # the prior pinned in every batch, not only where it matters
    # The prior decided per batch by the initial design's forecasts (from 3 objectives; measured, not the default).
    "mm-mo forecast prior": {"prior_mean": "forecast"},
    "mm-mo -sparsity": {"_objectives": DEMO_TASKS},  # demo problems only; not in the default set
    # Points of each batch on the take-home target (the rest on the front); 0 is the front-only search.
    "mm-mo take-home 0": {"take_home_points": 0},
    "mm-mo take-home 1": {"take_home_points": 1},
    "mm-mo take-home 2": {"take_home_points": 2},
    "mm-mo take-home 3": {"take_home_points": 3},
}
ALL_STRATEGIES = ["mm-mo", "qnehvi", "random", "nsga2", "cma-es", "standard recipe", "authors' code",
                  "mm-mo all steps", "all steps -w2s", "all steps -fisher", "all steps -noise", "mm-mo crossover",
                  "mm-mo -w2s -fisher -prior", "mm-mo worst prior", "mm-mo forecast prior", "mm-mo -sparsity", "mm-mo take-home 0",
                  "mm-mo take-home 1", "mm-mo take-home 2", "mm-mo take-home 3"]
DEFAULT_STRATEGIES = [s for s in ALL_STRATEGIES if s != "mm-mo -sparsity" and not s.startswith("mm-mo take-home")]
DEMO_ONLY = {"standard recipe", "mm-mo -sparsity"}


# Seeds per strategy unless a run says otherwise: the GP-acquisition strategies (`is_bo`) get fewer, as they
# cost seconds to minutes per run where the others cost milliseconds.
SEEDS = 10
BO_SEEDS = 5


def is_bo(name: str) -> bool:
    """The GP-acquisition strategies (run for --bo-seeds seeds; the rest for --seeds)."""
    return name == "qnehvi" or name.startswith(("mm-mo", "all steps"))


def loop_spec(name: str, problem: Problem, budget: Budget, seed: int) -> tuple[Any, list[str]]:
    """The `OptimizerSpec` a loop strategy runs with, and the objectives it optimises."""
    from mmmo.spec.schema import OptimizerSpec

    cfg = dict(LOOP_STRATEGIES[name])
    objective_names = list(cfg.pop("_objectives", problem.objectives))
    if problem.recipes() is None:
        cfg["standard_recipes"] = False
    opt = OptimizerSpec(initial=budget.initial, batches=budget.batches, candidates=budget.candidates,
                        batch_size=budget.batch_size, seed=seed, **cfg)
    return opt, objective_names


def spec_id(name: str, problem: Problem, budget: Budget, seed: int) -> str | None:
    """What determines a loop strategy's run (its full OptimizerSpec and objectives); None for the others.

    Two strategies with the same id at the same seed make the same run (a batch is a pure function of the
    spec, the history and the batch index), e.g. `mm-mo +w2s` and `mm-mo` while the library enables
    weak-to-strong by default: the second is copied from the first instead of being run again.
    """
    if name not in LOOP_STRATEGIES:
        return None
    opt, objective_names = loop_spec(name, problem, budget, seed)
    return json.dumps({"opt": opt.model_dump(mode="json"), "objectives": objective_names}, sort_keys=True)


def scored_trials(trials: list[Any], rec: Recorder, objective_names: Sequence[str]) -> list[Any]:
    """`trials` (mmmo `Trial`s) evaluated by `rec` on its problem: done with the observed values of
    `objective_names` (their stderrs where noisy, 0 for exact objectives), or failed where a value is NaN."""
    problem = rec.problem
    cols = [problem.objectives.index(n) for n in objective_names]
    Y, S = rec(torch.tensor([t.x for t in trials], dtype=torch.float64))
    out = []
    for i, (t, y) in enumerate(zip(trials, Y.tolist())):
        if any(math.isnan(v) for v in y):
            out.append(replace(t, status="failed", error="evaluation failed"))
            continue
        stderr = {n: 0.0 for n in objective_names if n in problem.exact}
        n_examples: dict[str, int] = {}
        if S is not None:
            stderr.update({n: float(S[i, c]) for n, c in zip(objective_names, cols) if n not in problem.exact})
            if problem.n_examples is not None:
                n_examples = {n: problem.n_examples for n in objective_names if n in problem.tasks}
        out.append(replace(t, status="done", objectives={n: y[c] for n, c in zip(objective_names, cols)},
                           stderr=stderr, n_examples=n_examples))
    return out


def run_loop_strategy(
    name: str, problem: Problem, budget: Budget, seed: int, rec: Recorder
) -> tuple[list[float], list[str], list[str | None]]:
    """One run of a `run_loop` strategy: the seconds each batch's proposal took, the step behind each point and
    the GPs' prior mean it was proposed under."""
    from mmmo.optimizer.loop import BatchSummary, NullObserver, run_loop
    from mmmo.run.records import Trial

    opt, objective_names = loop_spec(name, problem, budget, seed)
    propose: list[float] = []
    steps: list[str] = []  # which step proposed each point (sobol, standard, acquisition, weak_to_strong, ...)
    priors: list[str | None] = []

    def evaluate(trials: list[Trial]) -> list[Trial]:
        steps.extend(t.step for t in trials)
        priors.extend(t.prior for t in trials)
        return scored_trials(trials, rec, objective_names)

    class ProposeTimes(NullObserver):
        def on_batch_end(self, summary: BatchSummary) -> None:
            if summary.propose_seconds is not None:
                propose.append(summary.propose_seconds)

    run_loop([], loop_options(opt, objective_names, problem), evaluate, ProposeTimes())
    return propose, steps, priors


def loop_options(opt: Any, objective_names: Sequence[str], problem: Problem) -> Any:
    """The `LoopOptions` a loop strategy runs `problem` with, for its `OptimizerSpec` `opt` and its objectives."""
    from mmmo.optimizer.acquisition import budget_for
    from mmmo.optimizer.options import LoopOptions

    cols = [problem.objectives.index(n) for n in objective_names]
    # A constrained problem tells the library its take-home target.
    told = {"target": problem.target()} if problem.minimums else {}
    return LoopOptions(opt=opt, dim=problem.dim, objective_names=objective_names,
                       task_objective_names=[n for n in objective_names if n in problem.tasks],
                       ref_point=[problem.ref_point[c] for c in cols], budget=budget_for(len(objective_names)),
                       initial_points=problem.recipes(), **told)


def initial_points(problem: Problem, budget: Budget, seed: int) -> torch.Tensor:
    """The library's initial design: the standard recipe(s) of a demo problem first, then seeded Sobol points."""
    from mmmo.optimizer.strategies import initial_design

    return initial_design(budget.initial, problem.dim, seed, problem.recipes())


def run_cma(problem: Problem, budget: Budget, seed: int, rec: Recorder) -> None:
    """CMA-ES on the sum of task scores (the mergekit-evolve approach; on a test function every objective is a
    task), started from the same initial design as the loop strategies.

    The initial design is evaluated first; its best point (by the observed summed task score) is CMA-ES's
    starting mean, and each later batch is one generation of `batch_size` children.
    """
    import cma

    task_cols = [problem.objectives.index(n) for n in problem.tasks]
    X0 = initial_points(problem, budget, seed)
    ys = rec(X0)[0].tolist()
    score = lambda y: sum(y[c] for c in task_cols) if not any(math.isnan(v) for v in y) else -1e9  # noqa: E731
    best = max(range(len(ys)), key=lambda i: score(ys[i]))
    es = cma.CMAEvolutionStrategy(X0[best].tolist(), 0.3, {"bounds": [0.0, 1.0], "popsize": budget.batch_size,
                                                           "seed": seed + 1, "verbose": -9})
    for _ in range(budget.batches):
        cand = es.ask()
        Y = rec(torch.stack([torch.as_tensor(c, dtype=torch.float64) for c in cand]))[0].tolist()
        es.tell(cand, [-score(y) for y in Y])


def run_standard_recipe(problem: Problem, budget: Budget, seed: int, rec: Recorder) -> None:
    """Only the standard recipe point(s): what a user trying the usual merge by hand gets."""
    rec(problem.recipes())


def run_authors(problem: Problem, budget: Budget, seed: int, rec: Recorder) -> None:
    """The MM-MO authors' released code as it effectively behaves: each batch's `candidates` are Sobol points
    (no acquisition), crossed with DE mutants of the top configurations (weak-to-strong), then the
    `batch_size` the GPs (noise inferred) are least sure of are kept (Fisher screening)."""
    from mmmo.optimizer.fisher import fisher_screen
    from mmmo.optimizer.gp import fit_models
    from mmmo.optimizer.strategies import batch_seed, sobol_points
    from mmmo.optimizer.weak_to_strong import weak_to_strong

    task_cols = [problem.objectives.index(n) for n in problem.tasks]
    X_seen = initial_points(problem, budget, seed)
    Y_obs = rec(X_seen)[0]
    skip = budget.initial  # the Sobol stream continues after the initial design's points
    for b in range(1, budget.batches + 1):
        ok = ~torch.isnan(Y_obs).any(-1)
        X_done, Y_done = X_seen[ok], Y_obs[ok]
        model = fit_models(X_done, Y_done, prior_mean="fitted")  # the released code's BoTorch GPs
        generator = torch.Generator().manual_seed(batch_seed(seed, b))
        kept = X_seen.new_zeros(0, problem.dim)
        for _ in range(8):  # top up (rarely needed) when screening drops near-duplicates
            proposals = sobol_points(budget.candidates, problem.dim, seed, skip=skip)
            skip += budget.candidates
            X, _ = weak_to_strong(proposals, X_done, Y_done[:, task_cols], top_k=5, f=0.5, cr=0.5,
                                  generator=generator)
            keep = fisher_screen(model, X, budget.batch_size - kept.shape[0], torch.cat([X_seen, kept]))
            kept = torch.cat([kept, X[keep]])
            if kept.shape[0] == budget.batch_size:
                break
        Y_obs = torch.cat([Y_obs, rec(kept)[0]])
        X_seen = torch.cat([X_seen, kept])


def warm_imports(strategies: Sequence[str]) -> None:
    """Import what the strategies use before any run, so no run's time includes a first import."""
    import mmmo.optimizer.loop  # noqa: F401
    import mmmo.optimizer.strategies  # noqa: F401

    if "cma-es" in strategies:
        import cma  # noqa: F401
    if "nsga2" in strategies:
        import optuna  # noqa: F401


def run_one(name: str, problem: Problem, budget: Budget, seed: int) -> StrategyRun:
    rec = Recorder(problem, seed)
    runner = {"cma-es": run_cma, "standard recipe": run_standard_recipe, "authors' code": run_authors}.get(name)
    t0 = time.perf_counter()
    propose: list[float] | None = None
    steps: list[str] | None = None
    priors: list[str | None] | None = None
    if runner is not None:
        runner(problem, budget, seed, rec)
    else:
        propose, steps, priors = run_loop_strategy(name, problem, budget, seed, rec)
    seconds = time.perf_counter() - t0
    batches = 0 if name == "standard recipe" else budget.batches
    return StrategyRun(
        strategy=name, seed=seed, x=rec.xs, y=rec.ys, y_obs=rec.observed(), seconds=seconds,
        eval_seconds=rec.seconds, propose_seconds=propose, steps=steps,
        priors=priors if priors and any(p is not None for p in priors) else None,
        spec=spec_id(name, problem, budget, seed) if name in LOOP_STRATEGIES else None, batches=batches,
        # BO batch-step time: the run's time outside evaluation, per batch after the initial design
        step_seconds=(seconds - rec.seconds) / batches if batches else math.nan,
    )

