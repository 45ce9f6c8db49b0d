"""The best merge in a problem's space: dense Sobol sampling then local refinement (L-BFGS-B, or SLSQP under
constraints) of the problem's TRUE preference value, cached in benchmarks/data/best_in_space.json."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmarks.environment import DATA
from benchmarks.problems import Problem

BEST_IN_SPACE = DATA / "best_in_space.json"
SAMPLES = 100_000
REFINE_TOP = 16

Values = Callable[[torch.Tensor], torch.Tensor]  # points [k, d] in the unit cube -> [k] (or [k, c] slacks)


def best_in_space(value: Values, dim: int, *, slack: Values | None = None, samples: int = SAMPLES,
                  top: int = REFINE_TOP, seed: int = 0) -> tuple[float, list[float], float]:
    """The highest `value` over the unit cube `[0, 1]^dim` where every `slack` (if given) is >= 0.

    `samples` scrambled Sobol points are scored; the best `top` feasible ones start a local search (L-BFGS-B, or
    SLSQP with the slacks as inequality constraints) with finite-difference gradients. Returns the best value,
    its point, and the share of the sampled points that are feasible. Raises when no sampled point is."""
    from mmmo.optimizer.strategies import sobol_points

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


def best_key(problem: Problem) -> dict[str, Any]:
    """What determines a problem's best in the space: its surrogate table and its target."""
    target = problem.target()
    return {"table_digest": problem.info.get("table_digest"), "objectives": problem.objectives,
            "weights": list(target.weights), "minimums": [list(m) for m in target.minimums], "samples": SAMPLES}


def cached_best(problem: Problem, compute: bool = False) -> BestInSpace | None:
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
