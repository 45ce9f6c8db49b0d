"""The merge method as a searched choice: one search over several methods against each method searched alone.

    .venv/bin/python -m benchmarks.method_search --build-tables 512      # a table per method (~1 min each)
    .venv/bin/python -m benchmarks.method_search                          # 5 seeds, every strategy
    .venv/bin/python -m benchmarks.method_search --report-only

Each method's surrogate is a table of evaluated demo merges (benchmarks/data/method_table_<method>.json: scrambled
Sobol points of that method's own search space, scored by `CandidateEvaluator` on the demo with `merge.method` that
method) interpolated by a GP posterior mean fitted once, as benchmarks/search_quality.py's `demo` problem does for
dare_ties: every strategy sees the same deterministic objective (3 task scores + sparsity).

Strategies, each at the same budget (the demo's: 10 initial + 4 batches of 5): `mixed` is `merge.method` the whole
list (the library's mixed space: a categorical method coordinate, `optimize_acqf` per method, one standard recipe
per method); `<method> alone` searches that method's space as a single-method spec would. A mixed point is scored by
its method's surrogate. Every run is scored on the true (surrogate) values against ONE reference point, the nadir
minus 10% of the range of every method's table together, so the hypervolume is over the union of the methods'
merges; the best mean task score is the highest mean of the three task scores among the run's evaluations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.demo_tables import (
    DEFAULT_DEMO_DIR,
    DEMO_EXAMPLES,
    DEMO_OBJECTIVES,
    DEMO_TASKS,
    fixed_ref_point,
)
from benchmarks.environment import DATA, benchmark_environment, quiet_benchmark
from benchmarks.metrics import best_mean_task, hv_curve
from benchmarks.problems import Budget
from benchmarks.report import final_scores, fmt
from benchmarks.results import StrategyRun, merge_runs, read_results, save_runs

METHODS = ["ties", "dare_ties", "della", "breadcrumbs_ties"]
BUDGET = Budget(10, 4, 5, 10)
TABLE_SEED = 1234
MODELS = ("arith", "reverse", "sort")


def table_path(method: str) -> Path:
    return DATA / f"method_table_{method}.json"


def method_space(methods: Sequence[str]) -> Any:
    """The demo's search space for `methods` (one: that method's own; several: the mixed space)."""
    from mmmo.merge.methods.registry import method_info
    from mmmo.optimizer.space import SearchSpace
    from mmmo.spec.schema import DEFAULT_DENSITY_BOUNDS

    density = DEFAULT_DENSITY_BOUNDS if any(method_info(m).uses_density for m in methods) else None
    return SearchSpace(MODELS, density_bounds=density, methods=tuple(methods))


def build_table(method: str, n: int, demo_dir: Path) -> None:
    """Score `n` Sobol points of `method`'s own space on the demo; written incrementally as JSON."""
    from mmmo.demo import DEFAULT_PARAMS, build_demo
    from mmmo.evaluation.evaluator import CandidateEvaluator
    from mmmo.optimizer.strategies import sobol_points
    from mmmo.run.records import Trial
    from mmmo.spec.schema import spec_from_dict
    from mmmo.testing import search_spec_for

    demo = build_demo(demo_dir)
    data = search_spec_for(
        demo, limit=DEMO_EXAMPLES, merge={"method": method},
        evaluation={"device": "cpu", "batch_size": 64, "evaluate_sources": False},
        output={"dir": "/tmp/mmmo-bench-unused", "export": "none"},
    )
    ev = CandidateEvaluator.from_spec(spec_from_dict(data, demo.root), device="cpu")
    if ev.space.names != method_space([method]).names:
        sys.exit(f"{method}: the demo spec's space {ev.space.names} is not method_space's")
    X = sobol_points(n, ev.space.dim, TABLE_SEED)
    out = table_path(method)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(n):
        t = ev.evaluate(Trial(id=i, batch=0, x=X[i].tolist(), step="sobol"))
        if t.status != "done":
            print(f"{method} point {i} failed: {t.error}", file=sys.stderr)
            continue
        rows.append({"x": [round(v, 6) for v in t.x], "y": [round(t.objectives[k], 6) for k in DEMO_OBJECTIVES]})
    meta = {"method": method, "objectives": DEMO_OBJECTIVES, "limit": DEMO_EXAMPLES, "seed": TABLE_SEED,
            "demo": DEFAULT_PARAMS.digest(), "names": ev.space.names, "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows}
    out.write_text(json.dumps(meta, separators=(",", ":")))
    print(f"{method}: {len(rows)} points in {meta['seconds']} s -> {out}", flush=True)


class Surrogates:
    """Each method's table interpolated by a GP posterior mean (fitted once), clamped to the table's range."""

    def __init__(self, methods: Sequence[str]) -> None:
        from mmmo.optimizer.gp import fit_models

        self.models: dict[str, Any] = {}
        self.ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        tables = []
        for m in methods:
            path = table_path(m)
            if not path.is_file():
                sys.exit(f"no table at {path}: build it with --build-tables 512")
            data = json.loads(path.read_text())
            if data["names"] != method_space([m]).names:
                sys.exit(f"{path}: its dimensions {data['names']} are not {m}'s space's")
            X = torch.tensor([r["x"] for r in data["rows"]], dtype=torch.float64)
            Y = torch.tensor([r["y"] for r in data["rows"]], dtype=torch.float64)
            torch.manual_seed(0)
            self.models[m] = fit_models(X, Y, prior_mean="fitted")
            self.ranges[m] = (Y.min(0).values, Y.max(0).values)
            tables.append(Y)
        self.ref_point = fixed_ref_point(torch.cat(tables))  # over the union of every method's merges

    def __call__(self, method: str, X: torch.Tensor) -> torch.Tensor:
        """True values `[n, 4]` of `method` at points `X [n, d]` of its own space."""
        lo, hi = self.ranges[method]
        with torch.no_grad():
            mean = self.models[method].posterior(X.to(torch.float64)).mean
        return torch.maximum(torch.minimum(mean, hi), lo)


def run(strategy: str, methods: Sequence[str], surrogates: Surrogates, seed: int) -> StrategyRun:
    """One search through `run_loop`: `mixed` over every method, `<m> alone` over m's space."""
    from mmmo.optimizer.acquisition import budget_for
    from mmmo.optimizer.loop import run_loop
    from mmmo.optimizer.options import LoopOptions
    from mmmo.optimizer.space import standard_recipes
    from mmmo.spec.schema import OptimizerSpec

    searched = list(methods) if strategy == "mixed" else [strategy.removesuffix(" alone")]
    space = method_space(searched)
    own = {m: method_space([m]) for m in searched}
    columns = {m: [space.names.index(n) for n in own[m].names] for m in searched}
    opt = OptimizerSpec(initial=BUDGET.initial, batches=BUDGET.batches, candidates=BUDGET.candidates,
                        batch_size=BUDGET.batch_size, seed=seed)
    xs: list[list[float]] = []
    ys: list[list[float]] = []
    chosen: list[str] = []

    def evaluate(trials):
        out = []
        for t in trials:
            x = torch.tensor(t.x, dtype=torch.float64)
            m = space.method_of(x)
            y = surrogates(m, x[columns[m]].unsqueeze(0))[0].tolist()
            xs.append(t.x)
            ys.append(y)
            chosen.append(m)
            out.append(replace(t, status="done", objectives=dict(zip(DEMO_OBJECTIVES, y)), stderr={"sparsity": 0.0}))
        return out

    options = LoopOptions(opt=opt, dim=space.dim, objective_names=DEMO_OBJECTIVES, task_objective_names=DEMO_TASKS,
                          ref_point=surrogates.ref_point, budget=budget_for(len(DEMO_OBJECTIVES)),
                          initial_points=standard_recipes(space), space=space)
    t0 = time.perf_counter()
    run_loop([], options, evaluate)
    return StrategyRun(strategy=strategy, seed=seed, x=xs, y=ys, methods=chosen, seconds=time.perf_counter() - t0)


def time_kernels(methods: Sequence[str], surrogates: Surrogates, n: int = 10, repeats: int = 3) -> None:
    """Seconds to fit the 4 GPs of a batch on the mixed space's first `n` initial points, per mixed kernel, against
    the single-method GP on the first method's own space (median of `repeats`)."""
    from mmmo.optimizer import gp
    from mmmo.optimizer.space import standard_recipes
    from mmmo.optimizer.strategies import initial_design

    space, own = method_space(methods), method_space(methods[:1])
    X = space.project(initial_design(n, space.dim, 0, standard_recipes(space)))
    cols = {m: [space.names.index(k) for k in method_space([m]).names] for m in methods}
    Y = torch.stack([surrogates(space.method_of(x), x[cols[space.method_of(x)]].unsqueeze(0))[0] for x in X])
    X1 = initial_design(n, own.dim, 0, standard_recipes(own))
    Y1 = surrogates(methods[0], X1)
    for label, kernel, args in [("single method", None, (X1, Y1)), ("product", "product", (X, Y)),
                                ("sum+product (MixedSingleTaskGP)", "sum+product", (X, Y))]:
        seconds = []
        for _ in range(repeats):
            if kernel is not None:
                gp.MIXED_KERNEL = kernel  # type: ignore[assignment]
            t0 = time.perf_counter()
            gp.fit_models(*args, **({"cat_dims": [space.method_dim]} if kernel else {}))
            seconds.append(time.perf_counter() - t0)
        print(f"{label}: {statistics.median(seconds):.2f} s to fit 4 GPs on {n} points", flush=True)
    gp.MIXED_KERNEL = "product"


def report(runs: list[StrategyRun], key: dict[str, Any], strategies: Sequence[str]) -> str:
    ref = key["ref_point"]
    task_cols = [DEMO_OBJECTIVES.index(n) for n in DEMO_TASKS]
    curves = {(r.strategy, r.seed): hv_curve(r.y, ref) for r in runs}
    best_hv = max(c[-1] for c in curves.values())
    lines = [f"Methods {', '.join(key['methods'])}; budget {BUDGET.total} evaluations ({BUDGET.initial} initial + "
             f"{BUDGET.batches} x {BUDGET.batch_size}); reference point {[round(v, 4) for v in ref]} (union of the "
             "tables); median [quartiles] over seeds.", "",
             "| strategy | seeds | final HV, % of best seen | final HV (raw) | best mean task score | methods evaluated "
             "| s / run |", "|---|---|---|---|---|---|---|"]
    for s, rs, hv, bt in final_scores(runs, curves, task_cols, strategies):
        counts: dict[str, int] = {}
        for r in rs:
            for m in r.methods or []:
                counts[m] = counts.get(m, 0) + 1
        mix = ", ".join(f"{m} {c / len(rs):.1f}" for m, c in counts.items())
        lines.append(f"| {s} | {len(rs)} | {fmt(hv, 1, 100 / best_hv)} | {statistics.median(hv):.4g} | {fmt(bt, 3)} "
                     f"| {mix} | {statistics.median(r.seconds for r in rs):.0f} |")
    alone = [s for s in strategies if s.endswith(" alone") and any(r.strategy == s for r in runs)]
    if alone:  # what a user who picks one of the methods without knowing which is best gets, on average
        hv = [statistics.fmean(curves[(s, r.seed)][-1] for r in runs if r.strategy == s) for s in alone]
        bt = [statistics.fmean(best_mean_task(r.y, task_cols) for r in runs if r.strategy == s) for s in alone]
        lines.append(f"| one method alone, picked at random (mean of the rows above) | – | "
                     f"{100 * statistics.fmean(hv) / best_hv:.1f} | {statistics.fmean(hv):.4g} | {statistics.fmean(bt):.3f} "
                     "| – | – |")
    lines += ["", "Each method's table (256 Sobol merges of its own space) for scale:", ""]
    for m in key["methods"]:
        data = json.loads(table_path(m).read_text())
        Y = [r["y"] for r in data["rows"]]
        lines.append(f"- {m}: best mean task score {best_mean_task(Y, task_cols):.3f}, hypervolume of the whole table "
                     f"{100 * hv_curve(Y, ref)[-1] / best_hv:.1f}% of the best run's")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_environment()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--strategies", default=None, help="comma-separated: mixed, '<method> alone' (default: all)")
    p.add_argument("--build-tables", type=int, metavar="N", help="score N Sobol points per method, then exit")
    p.add_argument("--demo-dir", type=Path, default=DEFAULT_DEMO_DIR)
    p.add_argument("--out", type=Path, default=DATA / "method_search.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--time-kernels", action="store_true", help="time the mixed GP kernels' fits, then exit")
    p.add_argument("--include", type=Path, nargs="*", default=[],
                   help="other results files of the same methods and tables (another process's) joining the table")
    a = p.parse_args(argv)
    quiet_benchmark(a.threads)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if a.build_tables:
        for m in methods:
            if not table_path(m).is_file():
                build_table(m, a.build_tables, a.demo_dir)
        return
    strategies = ["mixed", *(f"{m} alone" for m in methods)]
    if a.strategies:
        strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    stored_key, stored = read_results(a.out, StrategyRun.from_json)
    if a.report_only:
        if stored_key is None:
            sys.exit(f"no results at {a.out}")
        print(report(merge_runs(stored, stored_key, a.include), stored_key, strategies))
        return
    surrogates = Surrogates(methods)
    if a.time_kernels:
        time_kernels(methods, surrogates)
        return
    key = {"methods": methods, "budget": vars(BUDGET), "ref_point": surrogates.ref_point,
           "tables": [json.loads(table_path(m).read_text())["seconds"] for m in methods]}
    key = json.loads(json.dumps(key))
    runs = stored if stored_key == key else []
    for seed in range(a.seeds):
        for s in strategies:
            if any(r.strategy == s and r.seed == seed for r in runs):
                continue
            r = run(s, methods, surrogates, seed)
            runs.append(r)
            save_runs(a.out, key, runs)
            print(f"seed {seed} {s:24s} HV {hv_curve(r.y, key['ref_point'])[-1]:.4g} ({r.seconds:.0f} s)", flush=True)
    print(report(runs, key, strategies))


if __name__ == "__main__":
    main()
