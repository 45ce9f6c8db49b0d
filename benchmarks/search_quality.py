"""Search quality: mm-mo against qnehvi, random, nsga2 and CMA-ES, plus mm-mo ablations, at the same budget.

    .venv/bin/python benchmarks/search_quality.py --seeds 5                 # surrogate problem (minutes, CPU)
    .venv/bin/python benchmarks/search_quality.py --problem demo --seeds 1  # the real demo problem (slow)
    .venv/bin/python benchmarks/search_quality.py --build-table 256         # (re)build the surrogate's table

The surrogate problem replays a cached table of evaluated demo merges (benchmarks/data/demo_table.json:
Sobol points of the demo's 6-D space, scored by `CandidateEvaluator`), interpolated by a GP posterior mean
fitted once to the table, so every strategy sees the same deterministic, smooth objective.
All runs are scored against ONE fixed reference point (the table's nadir minus 10% of its range), so
hypervolumes are comparable across strategies and seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HOME", str(REPO / ".cache" / "hf_home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402  (after the environment is set)

DATA = Path(__file__).resolve().parent / "data"
TABLE = DATA / "demo_table.json"
DEFAULT_DEMO_DIR = REPO / ".cache" / "demo-test"  # the test suite's demo build
OBJECTIVES = ["arith", "reverse", "sort", "sparsity"]
TASKS = ["arith", "reverse", "sort"]
REACH_FRACTION = 0.95


# ------------------------------------------------------------------------------------------ the demo problem


def demo_search_spec(demo_dir: Path, limit: int, layer_groups: int = 1) -> Any:
    """The demo's search spec (3 experts, dare_ties weight + density, 3 tasks + sparsity) on CPU."""
    from mmmo.config import spec_from_dict
    from mmmo.demo import ensure_demo, search_spec_for

    demo = ensure_demo(demo_dir)
    merge = {"granularity": f"layers:{layer_groups}"} if layer_groups > 1 else {}
    data = search_spec_for(
        demo,
        limit=limit,
        merge=merge,
        evaluation={"device": "cpu", "batch_size": 64, "evaluate_sources": False},
        output={"dir": "/tmp/mmmo-bench-unused", "export": "none"},
    )
    return spec_from_dict(data, demo.root)


def _demo_digest() -> str:
    """The digest of the demo calibration the table is built from (`ensure_demo` builds the default one)."""
    from mmmo.demo import DEFAULT_PARAMS

    return DEFAULT_PARAMS.digest()


def build_table(demo_dir: Path, n: int, limit: int, out: Path, seed: int = 1234) -> None:
    """Evaluate `n` scrambled Sobol points of the demo space and write them (incrementally) as JSON."""
    from mmmo.evaluate import CandidateEvaluator
    from mmmo.search.strategies import sobol_points
    from mmmo.trial import Trial

    spec = demo_search_spec(demo_dir, limit)
    ev = CandidateEvaluator(spec, device="cpu")
    X = sobol_points(n, ev.space.dim, seed)
    rows: list[dict[str, Any]] = []
    if out.is_file():
        old = json.loads(out.read_text())
        if old.get("seed") == seed and old.get("limit") == limit and old.get("demo") == _demo_digest():
            rows = old["rows"]
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(len(rows), n):
        t = ev.evaluate(Trial(id=i, batch=0, x=X[i].tolist(), step="sobol"))
        if t.status != "done":
            print(f"point {i} failed: {t.error}", file=sys.stderr)
            continue
        rows.append({"x": [round(v, 6) for v in t.x], "y": [round(t.objectives[k], 6) for k in OBJECTIVES]})
        if len(rows) % 8 == 0 or i == n - 1:
            meta = {"objectives": OBJECTIVES, "limit": limit, "seed": seed, "demo": _demo_digest(), "dim": ev.space.dim,
                    "names": ev.space.names, "rows": rows}
            out.write_text(json.dumps(meta, separators=(",", ":")))
            print(f"{len(rows)}/{n} points, {(time.perf_counter() - t0) / max(len(rows), 1):.1f} s/point",
                  flush=True)


# ------------------------------------------------------------------------------------------------ problems


@dataclass
class Problem:
    """A 4-objective (maximised) black box on the unit cube, with the fixed reference point for scoring."""

    dim: int
    evaluate: Callable[[torch.Tensor], torch.Tensor]  # [n, dim] -> [n, 4] in OBJECTIVES order
    ref_point: list[float]


def load_table(path: Path = TABLE) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached table as `X [n, 6]`, `Y [n, 4]` (float64)."""
    if not path.is_file():
        sys.exit(f"no surrogate table at {path}: build it with --build-table 512")
    data = json.loads(path.read_text())
    if data.get("demo") != _demo_digest():
        print(f"warning: {path} was built from another demo calibration; rebuild it with --build-table",
              file=sys.stderr)
    X = torch.tensor([r["x"] for r in data["rows"]], dtype=torch.float64)
    Y = torch.tensor([r["y"] for r in data["rows"]], dtype=torch.float64)
    return X, Y


def fixed_ref_point(Y_table: torch.Tensor) -> list[float]:
    """One reference point for every strategy and seed: the table's nadir minus 10% of its range."""
    from mmmo.search.pareto import infer_ref_point

    return infer_ref_point(Y_table).tolist()


def surrogate_problem(path: Path = TABLE) -> Problem:
    """The table interpolated by a GP posterior mean (fitted once), clamped to the table's range per objective."""
    from mmmo.search.gp import fit_models

    X_t, Y_t = load_table(path)
    torch.manual_seed(0)
    model = fit_models(X_t, Y_t)
    lo, hi = Y_t.min(0).values, Y_t.max(0).values

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean = model.posterior(X.to(torch.float64).reshape(-1, X_t.shape[1])).mean
        return torch.maximum(torch.minimum(mean, hi), lo)

    return Problem(dim=X_t.shape[1], evaluate=evaluate, ref_point=fixed_ref_point(Y_t))


def demo_problem(demo_dir: Path, limit: int) -> Problem:
    """The real demo: every point is merged and scored by `CandidateEvaluator` (slow)."""
    from mmmo.evaluate import CandidateEvaluator
    from mmmo.trial import Trial

    ev = CandidateEvaluator(demo_search_spec(demo_dir, limit), device="cpu")
    _, Y_t = load_table()

    def evaluate(X: torch.Tensor) -> torch.Tensor:
        rows = []
        for x in X.tolist():
            t = ev.evaluate(Trial(id=0, batch=0, x=x, step="bench"))
            rows.append([t.objectives[k] for k in OBJECTIVES] if t.status == "done" else [math.nan] * 4)
        return torch.tensor(rows, dtype=torch.float64)

    return Problem(dim=ev.space.dim, evaluate=evaluate, ref_point=fixed_ref_point(Y_t))


# ------------------------------------------------------------------------------------------------ strategies

LOOP_STRATEGIES: dict[str, dict[str, Any]] = {
    "mm-mo": {"strategy": "mm-mo"},
    "qnehvi": {"strategy": "qnehvi"},
    "random": {"strategy": "random"},
    "nsga2": {"strategy": "nsga2"},
    "mm-mo -w2s": {"strategy": "mm-mo", "weak_to_strong": {"enabled": False}},
    "mm-mo -fisher": {"strategy": "mm-mo", "fisher_screening": False},
    "mm-mo -sparsity": {"strategy": "mm-mo", "_objectives": TASKS},
}
ALL_STRATEGIES = ["mm-mo", "qnehvi", "random", "nsga2", "cma-es", "mm-mo -w2s", "mm-mo -fisher", "mm-mo -sparsity"]


@dataclass
class Budget:
    initial: int = 10
    batches: int = 4
    batch_size: int = 5
    candidates: int = 10

    @property
    def total(self) -> int:
        return self.initial + self.batches * self.batch_size


def run_loop_strategy(name: str, problem: Problem, budget: Budget, seed: int) -> tuple[list[list[float]], list[list[float]]]:
    """One run of a `run_loop` strategy; every evaluated point and its 4 objectives, in evaluation order."""
    from mmmo.config import OptimizerSpec
    from mmmo.search.loop import run_loop
    from mmmo.search.strategies import budget_for

    cfg = dict(LOOP_STRATEGIES[name])
    objective_names = cfg.pop("_objectives", OBJECTIVES)
    opt = OptimizerSpec(initial=budget.initial, batches=budget.batches, candidates=budget.candidates,
                        batch_size=budget.batch_size, seed=seed, **cfg)
    cols = [OBJECTIVES.index(n) for n in objective_names]
    xs: list[list[float]] = []
    ys: list[list[float]] = []

    def evaluate(trials: list[Any]) -> list[Any]:
        from dataclasses import replace

        Y = problem.evaluate(torch.tensor([t.x for t in trials], dtype=torch.float64))
        out = []
        for t, y in zip(trials, Y.tolist()):
            xs.append(list(t.x))
            ys.append(y)
            if any(math.isnan(v) for v in y):
                out.append(replace(t, status="failed", error="evaluation failed"))
            else:
                out.append(replace(t, status="done", objectives={n: y[c] for n, c in zip(objective_names, cols)}))
        return out

    run_loop([], dim=problem.dim, objective_names=list(objective_names),
             task_objective_names=[n for n in objective_names if n in TASKS], opt=opt, evaluate=evaluate,
             ref_point=[problem.ref_point[c] for c in cols], budget=budget_for(len(objective_names)))
    return xs, ys


def run_cma(problem: Problem, budget: Budget, seed: int) -> tuple[list[list[float]], list[list[float]]]:
    """CMA-ES on the sum of task scores (the mergekit-evolve approach), started from the same Sobol design.

    The initial design is evaluated first; its best point (by summed task score) is CMA-ES's starting
    mean, and each later batch is one generation of `batch_size` children.
    """
    import cma

    from mmmo.search.strategies import initial_design

    task_cols = [OBJECTIVES.index(n) for n in TASKS]
    X0 = initial_design(budget.initial, problem.dim, seed)
    Y0 = problem.evaluate(X0)
    xs, ys = X0.tolist(), Y0.tolist()
    score = lambda y: sum(y[c] for c in task_cols) if not any(math.isnan(v) for v in y) else -1e9  # noqa: E731
    best = max(range(len(ys)), key=lambda i: score(ys[i]))
    es = cma.CMAEvolutionStrategy(xs[best], 0.3, {"bounds": [0.0, 1.0], "popsize": budget.batch_size,
                                                  "seed": seed + 1, "verbose": -9})
    for _ in range(budget.batches):
        cand = es.ask()
        Y = problem.evaluate(torch.tensor(cand, dtype=torch.float64)).tolist()
        es.tell(cand, [-score(y) for y in Y])
        xs += [list(map(float, c)) for c in cand]
        ys += Y
    return xs, ys


def run_one(name: str, problem: Problem, budget: Budget, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    xs, ys = run_cma(problem, budget, seed) if name == "cma-es" else run_loop_strategy(name, problem, budget, seed)
    return {"strategy": name, "seed": seed, "x": xs, "y": ys, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------- metrics


def hv_curve(ys: Sequence[Sequence[float]], ref: Sequence[float]) -> list[float]:
    """Hypervolume of the first k evaluated points against `ref`, for k = 1..len(ys) (NaN rows skipped)."""
    from mmmo.search.pareto import hypervolume

    Y = torch.tensor(ys, dtype=torch.float64)
    out = []
    for k in range(1, Y.shape[0] + 1):
        Yk = Y[:k][~torch.isnan(Y[:k]).any(-1)]
        out.append(hypervolume(Yk, list(ref)) if Yk.shape[0] else 0.0)
    return out


def best_mean_task(ys: Sequence[Sequence[float]]) -> float:
    cols = [OBJECTIVES.index(n) for n in TASKS]
    vals = [statistics.fmean(y[c] for c in cols) for y in ys if not any(math.isnan(v) for v in y)]
    return max(vals) if vals else math.nan


def evals_to_reach(curve: Sequence[float], target: float) -> float:
    """1-based number of evaluations after which the curve reaches `target` (inf if never)."""
    return next((k + 1 for k, v in enumerate(curve) if v >= target), math.inf)


def quartiles(v: Sequence[float]) -> tuple[float, float, float]:
    big = 1e18  # "never" (inf) would turn the interpolated quartiles into NaN
    s = sorted(min(x, big) for x in v)
    if len(s) == 1:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[1], q[0], q[2]


def fmt(v: Sequence[float], digits: int, scale: float = 1.0) -> str:
    med, q1, q3 = (q * scale for q in quartiles(v))
    f = lambda a: "never" if a >= 1e17 else f"{a:.{digits}f}"  # noqa: E731
    return f"{f(med)} [{f(q1)}–{f(q3)}]"


def make_table(runs: list[dict[str, Any]], ref: list[float], strategies: Sequence[str]) -> tuple[str, dict[str, Any]]:
    curves = {(r["strategy"], r["seed"]): hv_curve(r["y"], ref) for r in runs}
    best_hv = max(c[-1] for c in curves.values())
    target = REACH_FRACTION * best_hv
    lines = [
        f"| strategy | seeds | final HV, % of best seen | final HV (raw) | best mean task score | evals to {REACH_FRACTION:.0%} of best HV "
        "| seeds reaching it | s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"best_hv": best_hv, "target": target, "ref_point": ref}
    for s in strategies:
        rs = [r for r in runs if r["strategy"] == s]
        if not rs:
            continue
        hv = [curves[(s, r["seed"])][-1] for r in rs]
        bt = [best_mean_task(r["y"]) for r in rs]
        reach = [evals_to_reach(curves[(s, r["seed"])], target) for r in rs]
        secs = [r["seconds"] for r in rs]
        summary[s] = {"hv": hv, "best_task": bt, "reach": reach}
        lines.append(f"| {s} | {len(rs)} | {fmt(hv, 1, 100 / best_hv)} | {statistics.median(hv):.3e} | {fmt(bt, 3)} | {fmt(reach, 0)} "
                     f"| {sum(not math.isinf(x) for x in reach)}/{len(rs)} | {statistics.median(secs):.0f} |")
    return "\n".join(lines), summary


def plot(runs: list[dict[str, Any]], ref: list[float], strategies: Sequence[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in strategies:
        cs = [hv_curve(r["y"], ref) for r in runs if r["strategy"] == s]
        if not cs:
            continue
        a = np.array(cs)
        k = np.arange(1, a.shape[1] + 1)
        med = np.median(a, 0)
        style = "--" if s.startswith("mm-mo ") else "-"
        (line,) = ax.plot(k, med, style, label=s, lw=2 if s == "mm-mo" else 1.2)
        ax.fill_between(k, np.percentile(a, 25, 0), np.percentile(a, 75, 0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume (fixed reference point)")
    ax.set_title("Hypervolume vs evaluations (median, IQR shaded)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


# ---------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=["surrogate", "demo"], default="surrogate")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1")
    p.add_argument("--strategies", default=",".join(ALL_STRATEGIES), help="comma-separated subset")
    p.add_argument("--initial", type=int, default=10)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--demo-dir", type=Path, default=DEFAULT_DEMO_DIR)
    p.add_argument("--limit", type=int, default=50, help="examples per task (demo problem and table)")
    p.add_argument("--build-table", type=int, metavar="N", help="evaluate N Sobol demo points into the table, then exit")
    p.add_argument("--out", type=Path, default=None, help="results JSON (resumable; default under benchmarks/data)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="only print the table and plot of stored runs")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in the results file")
    p.add_argument("--include", type=Path, nargs="*", default=[],
                   help="other results files (same budget and reference point) whose runs join the table")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import logging
    import warnings

    logging.getLogger("mmmo").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    if a.build_table:
        build_table(a.demo_dir, a.build_table, a.limit, TABLE)
        return
    budget = Budget(a.initial, a.batches, a.batch_size, a.candidates)
    out = a.out or DATA / f"search_quality_{a.problem}.json"
    if a.report_only:  # the table and plot from the stored runs, with their stored reference point
        stored = json.loads(out.read_text())
        problem = Problem(dim=0, evaluate=lambda X: X, ref_point=stored["key"]["ref_point"])
        budget = Budget(**stored["key"]["budget"])
        a.seeds = 0
    else:
        problem = surrogate_problem() if a.problem == "surrogate" else demo_problem(a.demo_dir, a.limit)
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in ALL_STRATEGIES]
    if unknown:
        sys.exit(f"unknown strategies: {unknown}; choose from {ALL_STRATEGIES}")
    key = {"budget": vars(budget), "ref_point": problem.ref_point}
    runs: list[dict[str, Any]] = []
    if out.is_file() and not a.fresh:
        old = json.loads(out.read_text())
        if old.get("key") == json.loads(json.dumps(key)):
            runs = old["runs"]
    done = {(r["strategy"], r["seed"]) for r in runs}
    for seed in range(a.seeds):  # seed-major, so a cut-short run still has every strategy at each seed
        for s in strategies:
            if (s, seed) in done:
                continue
            r = run_one(s, problem, budget, seed)
            runs.append(r)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"key": key, "runs": runs}, separators=(",", ":")))
            print(f"seed {seed} {s:16s} final HV {hv_curve(r['y'], problem.ref_point)[-1]:.4f} "
                  f"({r['seconds']:.0f} s)", flush=True)
    for extra in a.include:
        other = json.loads(extra.read_text())
        if other.get("key") != json.loads(json.dumps(key)):
            sys.exit(f"{extra}: different budget or reference point, not comparable")
        have = {(r["strategy"], r["seed"]) for r in runs}
        runs += [r for r in other["runs"] if (r["strategy"], r["seed"]) not in have]
    runs = [r for r in runs if (a.report_only or r["seed"] < a.seeds) and r["strategy"] in strategies]
    table, _ = make_table(runs, problem.ref_point, strategies)
    png = out.with_suffix(".png")
    plot(runs, problem.ref_point, strategies, png)
    print(f"\nproblem {a.problem}, budget {budget.total} evaluations ({budget.initial} initial + "
          f"{budget.batches} x {budget.batch_size}, {budget.candidates} candidates), reference point "
          f"{[round(v, 4) for v in problem.ref_point]}\n")
    print(table)
    print(f"\nplot: {png}")


if __name__ == "__main__":
    main()
