"""BO overhead: the time of one mm-mo batch step (GP fit, acquisition, weak-to-strong, screening) vs evaluation.

    .venv/bin/python -m benchmarks.overhead                      # default: a few minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.overhead --trials 10,50,100,200 --dims 6,24,96 --repeats 3   # bigger

Part 1 scores `--history` Sobol points of the demo with `CandidateEvaluator.evaluate` (limit 50 per task),
then times each step of the next mm-mo batch on that history. Part 2 times the whole batch step on synthetic
4-objective data as the number of trials grows (6-D) and as the search dimension grows (layer granularity:
6 = model, 24 = layers:4, 96 = layers:16, with a fixed number of trials). Acquisition effort is
`budget_for(4)`, as the search uses.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.demo_tables import DEFAULT_DEMO_DIR, demo_search_spec
from benchmarks.demo_tables import DEMO_OBJECTIVES as OBJECTIVES
from benchmarks.demo_tables import DEMO_TASKS as TASKS
from benchmarks.environment import benchmark_environment, quiet_benchmark
from mmmo.optimizer.acquisition import budget_for, propose_hvi
from mmmo.optimizer.fisher import fisher_screen
from mmmo.optimizer.gp import fit_models
from mmmo.optimizer.strategies import batch_seed, sobol_points
from mmmo.optimizer.weak_to_strong import weak_to_strong
from mmmo.spec.schema import OptimizerSpec


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def step_times(X: torch.Tensor, Y: torch.Tensor, task_cols: list[int], seed: int = 0) -> dict[str, float]:
    """Seconds spent in each part of one batch step of the paper's mm-mo (crossover mode: 10 candidates, batch of 5)."""
    opt = OptimizerSpec(seed=seed)
    budget = budget_for(Y.shape[-1])
    s = batch_seed(seed, 1)
    model, t_fit = timed(lambda: fit_models(X, Y))
    cand, t_acq = timed(lambda: propose_hvi(model, X, None, opt.candidates, kind=opt.acquisition, seed=s,
                                            budget=budget, Y_baseline=Y))
    w = opt.weak_to_strong
    gen = torch.Generator().manual_seed(s)
    (cand2, _), t_w2s = timed(lambda: weak_to_strong(cand, X, Y[:, task_cols], top_k=w.top_k, f=w.f, cr=w.cr,
                                                     generator=gen))
    _, t_scr = timed(lambda: fisher_screen(model, cand2, opt.batch_size, X))
    return {"gp_fit": t_fit, "acquisition": t_acq, "weak_to_strong": t_w2s, "screening": t_scr,
            "total": t_fit + t_acq + t_w2s + t_scr}


def synthetic(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` Sobol points and 4 smooth conflicting objectives: 3 'tasks' peaked at different corners, and sparsity."""
    X = sobol_points(n, dim, seed)
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(3, dim, generator=g, dtype=torch.float64)
    tasks = torch.exp(-((X.unsqueeze(1) - centres) ** 2).mean(-1) * 8.0)  # [n, 3]
    sparsity = -X[:, : dim // 2].mean(-1, keepdim=True)
    return X, torch.cat([tasks, sparsity], -1)


def median_times(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def fmt_row(label: str, t: dict[str, float], extra: str = "") -> str:
    return (f"| {label} | {t['gp_fit']:.2f} | {t['acquisition']:.2f} | {t['weak_to_strong']:.3f} | "
            f"{t['screening']:.3f} | {t['total']:.2f} |{extra}")


HEADER = ("| {} | GP fit (s) | acquisition (s) | weak-to-strong (s) | screening (s) | batch step (s) |{}\n"
          "|---|---|---|---|---|---|{}")


def main() -> None:
    benchmark_environment()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", type=Path, default=DEFAULT_DEMO_DIR)
    p.add_argument("--limit", type=int, default=50, help="examples per task for the demo evaluations")
    p.add_argument("--history", type=int, default=30, help="demo trials before the timed batch step")
    p.add_argument("--trials", default="10,50,100", help="trial counts for the growth table (6-D)")
    p.add_argument("--dims", default="6,24,96", help="search dimensions for the growth table")
    p.add_argument("--dim-trials", type=int, default=30, help="trials for the dimension table")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--skip-demo", action="store_true")
    a = p.parse_args()
    quiet_benchmark(a.threads)
    task_cols = [OBJECTIVES.index(n) for n in TASKS]

    if not a.skip_demo:
        from mmmo.evaluation.evaluator import CandidateEvaluator
        from mmmo.run.records import Trial

        ev = CandidateEvaluator.from_spec(demo_search_spec(a.demo_dir, a.limit), device="cpu")
        Xd = sobol_points(a.history, ev.space.dim, 7)
        ys, secs, merge_s = [], [], []
        for i, x in enumerate(Xd.tolist()):
            t, s = timed(lambda i=i, x=x: ev.evaluate(Trial(id=i, batch=0, x=x, step="sobol")))
            ys.append([t.objectives[k] for k in OBJECTIVES])
            secs.append(s)
            merge_s.append(t.merge_seconds or 0.0)
        eval_s = statistics.median(secs)
        Yd = torch.tensor(ys, dtype=torch.float64)
        st = median_times([step_times(Xd, Yd, task_cols, seed=r) for r in range(a.repeats)])
        print(f"## Demo: one candidate evaluation vs one mm-mo batch step ({a.history} trials, "
              f"limit {a.limit}, {a.threads} thread(s))\n")
        print(f"one evaluation: median {eval_s:.2f} s (merge {statistics.median(merge_s):.2f} s), "
              f"over {len(secs)} candidates; a batch of 5 evaluations: {5 * eval_s:.1f} s\n")
        print(HEADER.format("history", " step / one eval | step / batch of 5 evals |", "---|---|"))
        print(fmt_row(f"{a.history} trials", st, f" {st['total'] / eval_s:.1f}x | {st['total'] / (5 * eval_s):.1f}x |"))
        print()

    print(f"## Synthetic 4 objectives: batch step vs number of trials (6-D, {a.repeats} repeat(s), median)\n")
    print(HEADER.format("trials", "", ""))
    for n in [int(v) for v in a.trials.split(",")]:
        X, Y = synthetic(n, 6, 0)
        print(fmt_row(str(n), median_times([step_times(X, Y, task_cols, seed=r) for r in range(a.repeats)])),
              flush=True)
    print(f"\n## Synthetic 4 objectives: batch step vs search dimension ({a.dim_trials} trials)\n")
    print(HEADER.format("dim", "", ""))
    for d in [int(v) for v in a.dims.split(",")]:
        X, Y = synthetic(a.dim_trials, d, 0)
        print(fmt_row(str(d), median_times([step_times(X, Y, task_cols, seed=r) for r in range(a.repeats)])),
              flush=True)


if __name__ == "__main__":
    main()
