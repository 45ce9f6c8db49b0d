"""What a run scores: its hypervolume curve, best mean task score, evaluations to reach a target, and the
quartiles every table reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch


def hv_curve(
    ys: Sequence[Sequence[float]], ref: Sequence[float], minimums: Sequence[tuple[int, float]] = ()
) -> list[float]:
    """Hypervolume of the first k evaluated points against `ref`, for k = 1..len(ys) (NaN rows skipped, and rows
    below a (column, lowest allowed value) of `minimums`: an infeasible point adds nothing)."""
    from mmmo.optimizer.pareto import hypervolume, pareto_mask

    Y = torch.tensor(ys, dtype=torch.float64)
    out: list[float] = []
    front = Y.new_zeros(0, Y.shape[-1])
    last = 0.0
    for k in range(Y.shape[0]):
        y = Y[k : k + 1]
        infeasible = any(float(y[0, c]) < v for c, v in minimums)
        if infeasible or bool(torch.isnan(y).any()) or (front.shape[0] and bool((front >= y).all(-1).any())):
            out.append(last)  # a failed or dominated point leaves the hypervolume as it was
            continue
        front = torch.cat([front, y])
        front = front[pareto_mask(front)]
        last = hypervolume(front, list(ref))
        out.append(last)
    return out


def best_mean_task(ys: Sequence[Sequence[float]], task_cols: Sequence[int]) -> float:
    vals = [statistics.fmean(y[c] for c in task_cols) for y in ys if not any(math.isnan(v) for v in y)]
    return max(vals) if vals else math.nan


def evals_to_reach(curve: Sequence[float], target: float) -> float:
    """1-based number of evaluations after which the curve reaches `target` (inf if never)."""
    return next((k + 1 for k, v in enumerate(curve) if v >= target), math.inf)


def quartiles(v: Sequence[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of `v` (inclusive method); an infinite value counts as 1e18."""
    big = 1e18  # "never" (inf) would turn the interpolated quartiles into NaN
    s = sorted(min(x, big) for x in v)
    if len(s) == 1:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[1], q[0], q[2]

