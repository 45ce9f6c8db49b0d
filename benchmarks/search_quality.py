"""Search quality: mm-mo against qnehvi, random, nsga2, CMA-ES, the standard recipe and the authors' code.

Plus mm-mo ablations, each at the same budget per problem.

    .venv/bin/python -m benchmarks.search_quality --problem demo                  # every strategy, default seeds
    .venv/bin/python -m benchmarks.search_quality --problem dtlz2-noisy --strategies "mm-mo,qnehvi"
    .venv/bin/python -m benchmarks.search_quality --problem all --report-only     # every stored problem's table
    .venv/bin/python -m benchmarks.search_quality --problem demo --build-table 512          # (re)build a table
    .venv/bin/python -m benchmarks.search_quality --problem demo-layers3 --build-table 512
    .venv/bin/python -m benchmarks.search_quality --problem demo-layers6 --build-table 512  # builds a 6-layer demo
    .venv/bin/python -m benchmarks.search_quality --problem demo --smoke          # tiny budget, results in /tmp

Problems (issue 14), each with its own budget, results file `benchmarks/data/search_quality_<problem>.json`
and plot `.png`:

- `demo`: a cached table of evaluated demo merges (benchmarks/data/demo_table.json: Sobol points of the demo's
  6-D space, scored by `CandidateEvaluator`), interpolated by a GP posterior mean fitted once, so every
  strategy sees the same deterministic, smooth objective (3 task scores + sparsity).
- `demo-noisy`: the same surrogate, but each task score the optimizer sees is Binomial(50, p) / 50 with p the
  surrogate's value, with lm-eval's standard error sqrt(p^(1 - p^) / (n - 1)); sparsity stays exact.
- `demo-layers3`: the demo with `granularity: layers:3` (18-D), from its own table demo_table_layers3.json.
- `demo-layers6`: a 6-layer demo (the default calibration with `layers=6`, built in .cache/demo-layers6) with
  `granularity: layers:6` (36-D), from demo_table_layers6.json.
- `demo-constrained`: the `demo` surrogate, with the take-home constraint "every task at least the base
  model's score" (the base scored once on the same documents: benchmarks/data/demo_base_scores.json); a
  library strategy is told that target (`LoopOptions.target`) where the loop takes one.
- `demo-real`: the real demo, every point merged and scored (slow).
- `branincurrin`, `dtlz2` (BoTorch's test functions, negated so they are maximised) and their `-noisy`
  variants (Gaussian noise, its standard deviation told to the optimizer as the standard error).

On noisy problems the optimizer sees noisy values; every score here (hypervolume, best mean task score) uses
the TRUE noise-free values of the points it evaluated. Both are stored in the results JSON.
All runs of a problem are scored against ONE fixed reference point (a table's nadir minus 10% of its range;
a test function's own `ref_point`), so hypervolumes are comparable across strategies and seeds.

The problems, strategies, metrics and report are the library modules beside this script (problems.py,
strategies.py, metrics.py, report.py); this script parses the command line and runs what is missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.demo_tables import DEFAULT_DEMO_DIR, DEMO_EXAMPLES, build_table, demo_dir_for, table_path
from benchmarks.environment import SMOKE_OUT, benchmark_environment, quiet_benchmark
from benchmarks.metrics import hv_curve
from benchmarks.problems import PROBLEM_BUDGETS, PROBLEMS, SMOKE_BUDGET, Budget, make_problem, results_key
from benchmarks.report import key_minimums, report
from benchmarks.results import (
    StrategyRun,
    merge_runs,
    parts,
    read_results,
    results_path,
    save_runs,
    stored_runs,
)
from benchmarks.strategies import (
    ALL_STRATEGIES,
    BO_SEEDS,
    DEFAULT_STRATEGIES,
    DEMO_ONLY,
    SEEDS,
    is_bo,
    run_one,
    spec_id,
    warm_imports,
)
from benchmarks.suite_problems import SUITE_BUDGET, SUITE_PROBLEMS, suite_problem

ALL_PROBLEMS = [*PROBLEMS, *SUITE_PROBLEMS]  # the wide suite's problems: benchmarks/suite_problems.py


def default_out(problem: str, smoke: bool) -> Path:
    return results_path("search_quality", problem, smoke)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=[*ALL_PROBLEMS, "all"], default="demo",
                   help="'all' only with --report-only: every stored problem's table")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds 0..S-1 for random, nsga2, cma-es, standard recipe, authors' code (default {SEEDS})")
    p.add_argument("--bo-seeds", type=int, default=None, help=f"seeds for qnehvi and every mm-mo variant (default {BO_SEEDS})")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help=f"comma-separated subset of: {', '.join(ALL_STRATEGIES)}")
    p.add_argument("--initial", type=int, default=None, help="budget override (default: the problem's own)")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--candidates", type=int, default=None)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny budget ({SMOKE_BUDGET.total} = {SMOKE_BUDGET.initial} + {SMOKE_BUDGET.batches} x "
                        f"{SMOKE_BUDGET.batch_size}), 1 seed each, results under {SMOKE_OUT}")
    p.add_argument("--demo-dir", type=Path, default=None,
                   help=f"the demo build (default {DEFAULT_DEMO_DIR}; .cache/demo-layers6 for demo-layers6)")
    p.add_argument("--limit", type=int, default=DEMO_EXAMPLES, help="examples per task (demo-real and the tables)")
    p.add_argument("--build-table", type=int, metavar="N",
                   help="evaluate N Sobol demo points into the table of --problem (demo or demo-layers3), then exit")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (resumable; default benchmarks/data/search_quality_<problem>.json)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="only print the table and plot of stored runs")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in the results file")
    p.add_argument("--include", type=Path, nargs="*", default=[],
                   help="other results files (same problem, budget and reference point) whose runs join the table")
    return p.parse_args(argv)


def build_command(a: argparse.Namespace) -> None:
    """--build-table: evaluate Sobol demo points into the table of --problem."""
    groups = {"demo": 1, "demo-layers3": 3, "demo-layers6": 6}.get(a.problem)
    if groups is None:
        sys.exit("--build-table builds the table of --problem demo, demo-layers3 or demo-layers6")
    build_table(demo_dir_for(groups, a.demo_dir), a.build_table, a.limit, table_path(groups), layer_groups=groups)


def report_all(a: argparse.Namespace, strategies: Sequence[str]) -> None:
    """--problem all --report-only: every stored problem's table and plot."""
    if not a.report_only or a.out or a.include:
        sys.exit("--problem all only prints stored tables: use it with --report-only (and no --out/--include)")
    for name in ALL_PROBLEMS:
        path = default_out(name, a.smoke)
        if path.is_file():
            key, runs = read_results(path, StrategyRun.from_json)
            assert key is not None
            report(merge_runs(runs, key, [], parts(path)), key, strategies, path.with_suffix(".png"))


def run_missing(a: argparse.Namespace, out: Path, strategies: list[str], seeds: int, bo_seeds: int,
                n_seeds: Callable[[str], int]) -> tuple[dict[str, Any], list[StrategyRun], list[str]]:
    """Run every (strategy, seed) not stored yet, saving after each: the results key, the runs and the strategies
    this problem has (demo-only ones left out of a test function)."""
    suite = a.problem in SUITE_PROBLEMS
    base = SMOKE_BUDGET if a.smoke else SUITE_BUDGET if suite else PROBLEM_BUDGETS[a.problem]
    budget = Budget(*(v if v is not None else d for v, d in
                      zip((a.initial, a.batches, a.batch_size, a.candidates), vars(base).values())))
    problem = (suite_problem(a.problem, budget) if suite
               else make_problem(a.problem, budget, demo_dir_for(1, a.demo_dir), a.limit))
    skipped = [s for s in strategies if s in DEMO_ONLY and problem.layer_groups is None]
    if skipped:
        print(f"skipping {skipped}: demo problems only", file=sys.stderr)
    strategies = [s for s in strategies if s not in skipped]
    key = results_key(problem, budget)
    runs = stored_runs(out, key, a.fresh)
    # runs another process already stored (--include, part files) are not run again here either
    others = merge_runs([], key, a.include, parts(out) if a.out is None else [])
    done = {(r.strategy, r.seed) for r in runs + others}
    warm_imports(strategies)
    for seed in range(max(seeds, bo_seeds)):  # seed-major, so a cut-short run still has every strategy per seed
        for s in strategies:
            if (s, seed) in done or seed >= n_seeds(s):
                continue
            sid = spec_id(s, problem, budget, seed)
            same = next((r for r in runs + others
                         if sid is not None and r.seed == seed and r.spec == sid), None)
            if same is not None:  # the same OptimizerSpec already ran at this seed: the same run
                r = replace(same, strategy=s, copied_from=same.copied_from or same.strategy)
                print(f"seed {seed} {s:20s} same OptimizerSpec as {r.copied_from!r}: copied", flush=True)
            else:
                r = run_one(s, problem, budget, seed)
            runs.append(r)
            save_runs(out, key, runs)
            hv = hv_curve(r.y, problem.ref_point, key_minimums(key))[-1]
            print(f"seed {seed} {s:20s} final HV {hv:.4g} "
                  f"({r.seconds:.1f} s, {r.step_seconds:.2f} s/batch proposing)", flush=True)
    return key, runs, strategies


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_environment()
    a = parse_args(argv)
    quiet_benchmark(a.threads)

    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in ALL_STRATEGIES]
    if unknown:
        sys.exit(f"unknown strategies: {unknown}; choose from {ALL_STRATEGIES}")
    seeds = a.seeds if a.seeds is not None else (1 if a.smoke else SEEDS)
    bo_seeds = a.bo_seeds if a.bo_seeds is not None else (1 if a.smoke else BO_SEEDS)
    n_seeds = lambda s: bo_seeds if is_bo(s) else seeds  # noqa: E731

    if a.build_table:
        build_command(a)
        return
    if a.problem == "all":
        report_all(a, strategies)
        return
    out = a.out or default_out(a.problem, a.smoke)
    if a.report_only:  # the table and plot from the stored runs, with their stored key
        if not out.is_file():
            sys.exit(f"no results at {out}")
        stored_key, runs = read_results(out, StrategyRun.from_json)
        assert stored_key is not None
        key = stored_key
    else:
        key, runs, strategies = run_missing(a, out, strategies, seeds, bo_seeds, n_seeds)
    runs = merge_runs(runs, key, a.include, parts(out) if a.out is None else [])
    runs = [r for r in runs if r.strategy in strategies and (a.report_only or r.seed < n_seeds(r.strategy))]
    report(runs, key, strategies, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
