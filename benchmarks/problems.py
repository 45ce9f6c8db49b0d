"""The benchmark problems: multi-objective (maximised) black boxes on the unit cube, each with its budget and the
fixed reference point every run of it is scored against (`make_problem` by name)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.demo_tables import (
    DEMO_EXAMPLES,
    DEMO_OBJECTIVES,
    DEMO_TASKS,
    demo_base_scores,
    demo_digest,
    demo_search_spec,
    demo_space,
    fixed_ref_point,
    load_table,
    table_path,
)


@dataclass
class Budget:
    initial: int = 10
    batches: int = 4
    batch_size: int = 5
    candidates: int = 10

    @property
    def total(self) -> int:
        return self.initial + self.batches * self.batch_size


SMOKE_BUDGET = Budget(initial=6, batches=2, batch_size=3, candidates=6)

# Noise model: (true values [n, m], generator) -> (the values the optimizer sees [n, m], their stderrs [n, m]).
Noise = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Problem:
    """A multi-objective (maximised) black box on the unit cube, with the fixed reference point for scoring."""

    name: str
    dim: int
    objectives: list[str]
    tasks: list[str]  # the objectives whose mean is the "mean task score" (and CMA-ES's scalar)
    evaluate: Callable[[torch.Tensor], torch.Tensor]  # [n, dim] -> TRUE values [n, m], objectives order
    ref_point: list[float]
    budget: Budget
    layer_groups: int | None = None  # a demo merge space (it has standard recipes); None: a test function
    noise: Noise | None = None
    n_examples: int | None = None  # examples behind each task score (binomial noise), told to the optimizer
    exact: list[str] = field(default_factory=list)  # objectives told to the optimizer as exact (stderr 0.0)
    info: dict[str, Any] = field(default_factory=dict)  # what identifies the problem's data in the results key
    minimums: dict[str, float] = field(default_factory=dict)  # outcome constraints: objective -> lowest allowed

    @property
    def noisy(self) -> bool:
        return self.noise is not None

    def target(self) -> Any:
        """The take-home `Target`: the mean of the task objectives, subject to `minimums`."""
        from mmmo.optimizer.target import Target

        cols = [self.objectives.index(n) for n in self.tasks]
        mins = tuple((self.objectives.index(n), v) for n, v in self.minimums.items())
        return Target(Target.mean_of(len(self.objectives), cols).weights, mins)

    def recipes(self) -> torch.Tensor | None:
        """The standard recipe point(s) `[k, dim]` of a demo merge space; None for a test function."""
        if self.layer_groups is None:
            return None
        from mmmo.optimizer.space import standard_recipes

        return standard_recipes(demo_space(self.layer_groups)).to(torch.float64)


def binomial_noise(n: int, task_cols: list[int]) -> Noise:
    """Task scores drawn Binomial(n, p) / n, p the true value clamped to [0, 1], with lm-eval's stderr
    sqrt(p^(1 - p^) / (n - 1)); the other columns exact (stderr 0)."""

    def noise(Y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        Y_obs = Y.clone()
        p = Y[:, task_cols].clamp(0.0, 1.0)
        Y_obs[:, task_cols] = torch.binomial(torch.full_like(p, float(n)), p, generator=generator) / n
        return Y_obs, binomial_stderr(Y_obs, n, task_cols)

    return noise


def binomial_stderr(Y_obs: torch.Tensor, n: int | torch.Tensor, task_cols: list[int]) -> torch.Tensor:
    """`[k, m]` stderrs of observed binomial task scores `Y_obs [k, m]` (lm-eval's sqrt(p^(1 - p^) / (n - 1)) on
    `task_cols`, 0 elsewhere): what the optimizer was told, recomputed from what it saw. `n`: the documents behind
    every score, or `[k, 1]` per row (re-scored rows have more)."""
    S = torch.zeros_like(Y_obs)
    phat = Y_obs[:, task_cols]
    S[:, task_cols] = (phat * (1 - phat) / (n - 1)).sqrt()
    return S


def gaussian_noise(std: Sequence[float]) -> Noise:
    """Additive Gaussian noise of standard deviation `std` per objective, told to the optimizer as its stderr."""

    def noise(Y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.tensor(list(std), dtype=Y.dtype).expand_as(Y)
        eps = torch.randn(Y.shape, generator=generator, dtype=Y.dtype)
        return Y + s * eps, s.clone()

    return noise


def surrogate_problem(name: str, layer_groups: int, budget: Budget, noisy: bool = False) -> Problem:
    """A table interpolated by a GP posterior mean (fitted once), clamped to the table's range per objective."""
    from mmmo.optimizer.gp import fit_models

    path = table_path(layer_groups)
    X_t, Y_t, meta = load_table(path, layer_groups)
    torch.manual_seed(0)
    # The problem itself: BoTorch's fitted mean interpolates the table, whatever prior the searches use.
    model = fit_models(X_t, Y_t, prior_mean="fitted")
    lo, hi = Y_t.min(0).values, Y_t.max(0).values

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean = model.posterior(X.to(torch.float64).reshape(-1, X_t.shape[1])).mean
        return torch.maximum(torch.minimum(mean, hi), lo)

    rows = hashlib.sha256(json.dumps(Y_t.tolist()).encode()).hexdigest()[:16]
    return Problem(
        name=name, dim=X_t.shape[1], objectives=list(DEMO_OBJECTIVES), tasks=list(DEMO_TASKS), evaluate=evaluate,
        ref_point=fixed_ref_point(Y_t), budget=budget, layer_groups=layer_groups,
        noise=binomial_noise(DEMO_EXAMPLES, [0, 1, 2]) if noisy else None,
        n_examples=DEMO_EXAMPLES if noisy else None, exact=["sparsity"],
        info={"table": path.name, "table_rows": Y_t.shape[0], "table_digest": rows, "surrogate_prior": "fitted"},
    )


def demo_real_problem(demo_dir: Path, limit: int, budget: Budget) -> Problem:
    """The real demo: every point is merged and scored by `CandidateEvaluator` (slow)."""
    from mmmo.evaluation.evaluator import CandidateEvaluator
    from mmmo.run.records import Trial

    ev = CandidateEvaluator.from_spec(demo_search_spec(demo_dir, limit), device="cpu")
    _, Y_t, _ = load_table(table_path(1))

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        rows = []
        for x in X.tolist():
            t = ev.evaluate(Trial(id=0, batch=0, x=x, step="bench"))
            rows.append([t.objectives[k] for k in DEMO_OBJECTIVES] if t.status == "done" else [math.nan] * 4)
        return torch.tensor(rows, dtype=torch.float64)

    return Problem(name="demo-real", dim=ev.space.dim, objectives=list(DEMO_OBJECTIVES), tasks=list(DEMO_TASKS),
                   evaluate=evaluate, ref_point=fixed_ref_point(Y_t), budget=budget, layer_groups=1,
                   exact=["sparsity"], info={"demo": demo_digest(), "limit": limit})


def test_function_problem(name: str, fn: Any, budget: Budget, noise_std: Sequence[float] | None) -> Problem:
    """A BoTorch multi-objective test function (built with negate=True: maximised), seen on the unit cube: a point
    x stands for `lower + x * (upper - lower)` of the function's bounds (x itself on a unit-cube domain)."""
    names = [f"f{i}" for i in range(fn.num_objectives)]
    lo, width = fn.bounds[0], fn.bounds[1] - fn.bounds[0]

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(lo + X.to(torch.float64).reshape(-1, fn.dim) * width, noise=False)  # forward applies `negate`

    info: dict[str, Any] = {"function": type(fn).__name__, "dim": fn.dim}
    if noise_std is not None:
        info["noise_std"] = list(noise_std)
    return Problem(name=name, dim=fn.dim, objectives=names, tasks=list(names), evaluate=evaluate,
                   ref_point=[float(v) for v in fn.ref_point], budget=budget,
                   noise=gaussian_noise(noise_std) if noise_std is not None else None, info=info)


BRANINCURRIN_NOISE = [15.19, 0.63]  # the BoTorch multi-objective tutorial's noise levels
DTLZ2_NOISE = [0.1] * 4
PROBLEM_BUDGETS = {
    "demo": Budget(10, 4, 5, 10),
    "demo-noisy": Budget(10, 4, 5, 10),
    "demo-layers3": Budget(10, 10, 5, 10),
    "demo-layers6": Budget(10, 10, 5, 10),
    "demo-constrained": Budget(10, 4, 5, 10),
    "demo-real": Budget(10, 4, 5, 10),
    "branincurrin": Budget(10, 4, 5, 10),
    "branincurrin-noisy": Budget(10, 4, 5, 10),
    "dtlz2": Budget(10, 6, 5, 10),
    "dtlz2-noisy": Budget(10, 6, 5, 10),
}
PROBLEMS = list(PROBLEM_BUDGETS)


def make_problem(name: str, budget: Budget, demo_dir: Path, limit: int) -> Problem:
    if name == "demo":
        return surrogate_problem(name, 1, budget)
    if name == "demo-noisy":
        return surrogate_problem(name, 1, budget, noisy=True)
    if name in ("demo-layers3", "demo-layers6"):
        return surrogate_problem(name, int(name.removeprefix("demo-layers")), budget)
    if name == "demo-constrained":  # every task at least the base model's score on the same documents
        mins = {k: v for k, v in demo_base_scores(demo_dir, limit).items() if k in DEMO_TASKS}
        problem = surrogate_problem(name, 1, budget)
        return replace(problem, minimums=mins, info={**problem.info, "minimums": mins})
    if name == "demo-real":
        return demo_real_problem(demo_dir, limit, budget)
    from botorch.test_functions.multi_objective import DTLZ2, BraninCurrin

    if name.startswith("branincurrin"):
        noise = BRANINCURRIN_NOISE if name.endswith("-noisy") else None
        return test_function_problem(name, BraninCurrin(negate=True).to(torch.float64), budget, noise)
    if name.startswith("dtlz2"):
        noise = DTLZ2_NOISE if name.endswith("-noisy") else None
        return test_function_problem(name, DTLZ2(dim=6, num_objectives=4, negate=True).to(torch.float64), budget,
                                     noise)
    raise SystemExit(f"unknown problem {name!r}; choose from {PROBLEMS}")




def results_key(problem: Problem, budget: Budget) -> dict[str, Any]:
    """What makes two runs comparable (the `key` of a results file), as JSON would give it back."""
    return json.loads(json.dumps({
        "problem": problem.name, "budget": vars(budget), "ref_point": problem.ref_point,
        "objectives": problem.objectives, "tasks": problem.tasks, "noisy": problem.noisy, **problem.info,
    }))

