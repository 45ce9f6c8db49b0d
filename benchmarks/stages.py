"""Multi-fidelity evaluation (evaluation.stages): documents saved against search quality lost.

    .venv/bin/python -m benchmarks.stages --problem bernoulli --variant "stages=0.25,1.0 min_chance=0.1"
    .venv/bin/python -m benchmarks.stages --problem bernoulli --seeds 5-9 --out benchmarks/data/stages_bernoulli.part2.json
    .venv/bin/python -m benchmarks.stages --problem demo-real --variant "stages=0.25,1.0" --seeds 0-4
    .venv/bin/python -m benchmarks.stages --problem bernoulli --report-only
    .venv/bin/python -m benchmarks.stages --problem bernoulli --smoke        # tiny budget, results in /tmp

Problems, each against the "full" variant (no stages) at the same seeds and budget:

- `bernoulli`: the demo surrogate of search_quality.py (`demo`), scored per document. Each task j has N documents
  (`--docs`, default the demo's 50) with a fixed difficulty z_jd ~ N(0, 1) (seeded by the benchmark seed); a
  candidate x answers document d correctly iff sqrt(rho) z_jd + sqrt(1 - rho) e_xjd < Phi^-1(p_j(x)), p_j(x) the
  surrogate's accuracy (clamped to [0.001, 0.999]) and e_xjd ~ N(0, 1) seeded by (seed, x, j): the same candidate
  always gives the same answers, P(correct) = p_j(x) exactly, and documents correlate across candidates (rho) as
  real ones do. Documents are scored in a seeded order per task; stage k scores those between
  `stage_sizes(N, stages)[k-1]` and `[k]`. Hypervolume and best mean task score use the TRUE (surrogate) values.
- `demo-real`: the real demo through `mmmo.search` (every candidate merged and scored; slow). Its observed values
  stand in for true ones; hypervolume w.r.t. the demo table's fixed reference point (as search_quality.py does).

Per run: final hypervolume of the trials scored in full (not `stopped`), the true mean task score of the trial a
user would pick (the highest OBSERVED mean task score among those), the documents scored (sum over trials and
tasks of `n_examples`: a stopped trial counts only the documents it was scored on), trials stopped, wall seconds.

A variant is `key=value` words: `stages=0.25,1.0` (cumulative fractions), `min_chance=` (stage_min_chance),
`min_gain=` (stage_min_gain), or any other LoopOptions field (bernoulli) / evaluation field (demo-real) by its own
name. `--option key=value` passes such a field to every run (the full one included). Results go to
`benchmarks/data/stages_<problem>.json`; part files `stages_<problem>.part*.json` (written with `--out`) join its
table, so a problem's seeds can be split over processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.demo_tables import (
    DEFAULT_DEMO_DIR,
    DEMO_EXAMPLES,
    fixed_ref_point,
    load_table,
)
from benchmarks.demo_tables import table_path as demo_table_path
from benchmarks.environment import SMOKE_OUT, benchmark_environment, quiet_benchmark
from benchmarks.metrics import quartiles
from benchmarks.problems import Budget, surrogate_problem
from benchmarks.report import fmt
from benchmarks.results import merge_runs, parts, read_results, results_path, save_runs, stored_runs
from benchmarks.stage_runs import StageRun, check_demo, run_bernoulli, run_demo_real, warm_demo_real
from benchmarks.strategies import warm_imports

PROBLEMS = ["bernoulli", "demo-real"]
DEFAULT_SEEDS = {"bernoulli": "0-9", "demo-real": "0-4"}
DEFAULT_VARIANTS = ["stages=0.25,1.0 min_chance=0.1"]
FULL = "full"
BUDGET = Budget(initial=10, batches=4, batch_size=5, candidates=10)
SMOKE_BUDGET = Budget(initial=4, batches=1, batch_size=3, candidates=6)
SMOKE_SEEDS = "0-1"
SMOKE_DOCS = 20
DONE_WHEN_FEWER = 0.40  # a staged variant must score at least this share fewer documents than full
SHORT_KEYS = {"min_chance": "stage_min_chance", "min_gain": "stage_min_gain"}


# ------------------------------------------------------------------------------------ command-line parsing (tested)


def parse_value(text: str) -> Any:
    """A command-line value: none/true/false, an int, a float, a comma list of floats, else the text."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if "," in text:
        return tuple(float(v) for v in text.split(",") if v.strip())
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_assignments(words: Sequence[str]) -> dict[str, Any]:
    """`key=value` words as a dict (short keys such as min_chance spelled out as stage_min_chance)."""
    out: dict[str, Any] = {}
    for w in words:
        if "=" not in w:
            raise SystemExit(f"expected key=value, got {w!r}")
        k, v = w.split("=", 1)
        k = SHORT_KEYS.get(k.strip(), k.strip())
        value = parse_value(v)
        if k == "stages" and value is not None and not isinstance(value, tuple):
            value = (float(value),)
        out[k] = value
    return out


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """A variant's label (its words, normalised) and its keyword arguments; "full" is stages None."""
    words = text.split()
    if words == [FULL]:
        return FULL, {"stages": None}
    kwargs = parse_assignments(words)
    if not kwargs.get("stages"):
        raise SystemExit(f"variant {text!r} has no stages=...: every variant but 'full' is staged")
    return " ".join(words), kwargs


def parse_seeds(text: str) -> list[int]:
    """`0-4`, `3`, `0,2,5` or `0-2,7`."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            seeds += range(int(a), int(b) + 1)
        else:
            seeds.append(int(part))
    return sorted(set(seeds))


def quartile_verdict(value: float, full: Sequence[float]) -> str:
    """Where `value` sits against the full runs' interquartile range: below, within or above."""
    _, q1, q3 = quartiles(full)
    return "below" if value < q1 else "above" if value > q3 else "within"


def default_out(problem: str, smoke: bool) -> Path:
    return results_path("stages", problem, smoke)


def make_table(runs: list[StageRun], variants: Sequence[str]) -> str:
    by = {v: [r for r in runs if r.variant == v] for v in variants}
    full_docs = statistics.median(r.docs for r in by[FULL]) if by.get(FULL) else math.nan
    lines = [
        "| variant | seeds | final HV | best mean task score | take-home (posterior), true | documents scored "
        "| fewer than full | stopped trials | s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        rs = by.get(v) or []
        if not rs:
            continue
        docs = statistics.median(r.docs for r in rs)
        fewer = f"{1 - docs / full_docs:.0%}" if v != FULL and full_docs > 0 else "–"
        lines.append(
            f"| {v} | {len(rs)} | {fmt([r.hv for r in rs], 4, general=True)} | {fmt([r.best_task for r in rs], 3)} "
            f"| {take_home_cell(rs)} | {fmt([r.docs for r in rs], 0)} | {fewer} | {fmt([r.stopped for r in rs], 0)} "
            f"| {statistics.median(r.seconds for r in rs):.1f} |"
        )
    lines.append("")
    for v in variants:
        rs = by.get(v) or []
        if v == FULL or not rs or not by.get(FULL):
            continue
        seeds = sorted({r.seed for r in rs} & {r.seed for r in by[FULL]})
        full_hv = [r.hv for r in by[FULL] if r.seed in seeds]
        hv = statistics.median(r.hv for r in rs if r.seed in seeds)
        _, q1, q3 = quartiles(full_hv)
        where = quartile_verdict(hv, full_hv)
        full_d = statistics.median(r.docs for r in by[FULL] if r.seed in seeds)
        saved = 1 - statistics.median(r.docs for r in rs if r.seed in seeds) / full_d if full_d else 0.0
        ok = where != "below" and saved >= DONE_WHEN_FEWER
        lines.append(
            f"- {v}: median HV {hv:.4g} is {where} the full runs' IQR [{q1:.4g}–{q3:.4g}] and it scores "
            f"{saved:.0%} fewer documents (>= {DONE_WHEN_FEWER:.0%} needed), over {len(seeds)} common seeds: "
            f"done-when {'HOLDS' if ok else 'does NOT hold'}"
        )
    return "\n".join(lines)


def take_home_cell(runs: Sequence[StageRun]) -> str:
    """The take-home column: median [IQR] over the runs that recorded it, "–" where none did."""
    values = [r.take_home for r in runs if r.take_home is not None and not math.isnan(r.take_home)]
    return fmt(values, 3) if values else "–"


def oracle_line(runs: list[StageRun], first_stage: float = 0.25) -> str:
    """What stopping could save at best without losing hypervolume: in the full runs, how many trials end off the
    final front of true values, and the documents an oracle saves by stopping exactly those after `first_stage`."""
    from mmmo.optimizer.pareto import pareto_mask

    full = [r for r in runs if r.variant == FULL]
    if not full:
        return ""
    off, saved = [], []
    for r in full:
        Y = torch.tensor([t["y"] for t in r.trials if t["y"] is not None], dtype=torch.float64)
        docs = [t["docs"] for t in r.trials if t["y"] is not None]
        dominated = (~pareto_mask(Y)).tolist()
        off.append(sum(dominated))
        saved.append(sum((1 - first_stage) * d for d, dom in zip(docs, dominated) if dom) / max(1, sum(docs)))
    n = len(full[0].trials)
    return (
        f"- oracle bound: in the full runs {fmt(off, 0)} of {n} trials end off the final front; stopping exactly "
        f"those after {first_stage:.0%} of their documents would save {fmt([100 * s for s in saved], 0)}% of the "
        "documents (median [IQR]): any larger saving stops trials that are on the front"
    )


def report(
    runs: list[StageRun], key: dict[str, Any], out: Path, variants: Sequence[str] | None
) -> None:
    seen = list(dict.fromkeys(r.variant for r in runs))
    order = [FULL, *[v for v in (variants or seen) if v != FULL and v in seen]]
    b = key["budget"]
    text = (
        f"problem {key['problem']}: {b['initial']} initial + {b['batches']} x {b['batch_size']} candidates, "
        f"{key.get('docs', key.get('limit'))} documents per task, reference point "
        f"{[round(v, 4) for v in key['ref_point']]}, options {key['options']}\n\n{make_table(runs, order)}\n"
        f"{oracle_line(runs)}\n"
    )
    print("\n" + text)
    md = out.with_suffix(".md")
    md.write_text(text)
    print(f"table: {md}")


# -------------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=PROBLEMS, default="bernoulli")
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        help=f'a staged variant, e.g. "stages=0.25,1.0 min_chance=0.1" (repeatable; default '
        f"{DEFAULT_VARIANTS}); 'full' always runs",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LoopOptions field (bernoulli) or evaluation field (demo-real) for every run",
    )
    p.add_argument(
        "--seeds", default=None, help="e.g. 0-4, 5-9 or 0,3 (default: bernoulli 0-9, demo-real 0-4)"
    )
    p.add_argument("--docs", type=int, default=None, help=f"documents per task (default {DEMO_EXAMPLES})")
    p.add_argument(
        "--rho", type=float, default=0.5, help="bernoulli: correlation of documents across candidates"
    )
    p.add_argument("--demo-dir", type=Path, default=DEFAULT_DEMO_DIR)
    p.add_argument(
        "--infer-ref",
        action="store_true",
        help="demo-real: the search infers its reference point (the library default) instead of using "
        "the fixed one every run is scored against (as bernoulli's run_loop does)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny budget ({SMOKE_BUDGET.initial} + {SMOKE_BUDGET.batches} x {SMOKE_BUDGET.batch_size}), "
        f"seeds {SMOKE_SEEDS}, {SMOKE_DOCS} documents, results under {SMOKE_OUT}",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (resumable; default benchmarks/data/stages_<problem>.json; name a second "
        "process's file stages_<problem>.partN.json beside it to join its table)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in the results file")
    p.add_argument("--report-only", action="store_true", help="only print the table of stored runs")
    return p.parse_args(argv)


def make_runner(
    a: argparse.Namespace, options: dict[str, Any], variants: dict[str, dict[str, Any]], budget: Any, n_docs: int,
    ref: list[float],
) -> tuple[dict[str, Any], Callable[[int, dict[str, Any]], dict[str, Any]]]:
    """The results key of this problem and options, and the function that makes one run of it."""
    key: dict[str, Any] = {
        "problem": a.problem,
        "budget": vars(budget),
        "ref_point": ref,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
    }
    if a.problem == "bernoulli":
        from mmmo.optimizer.options import LoopOptions

        fields = {f.name for f in dataclasses.fields(LoopOptions)}
        unknown = sorted({k for kw in [options, *variants.values()] for k in kw} - fields)
        if unknown:
            sys.exit(f"LoopOptions has no field(s) {unknown}")
        problem = surrogate_problem("demo", 1, budget)
        key.update(docs=n_docs, rho=a.rho, **problem.info)
        return json.loads(json.dumps(key)), lambda seed, kw: run_bernoulli(problem, budget, seed, n_docs, a.rho, kw)
    check_demo(a.demo_dir)
    from mmmo.demo import DEFAULT_PARAMS

    key.update(limit=n_docs, demo=DEFAULT_PARAMS.digest(), search_ref="inferred" if a.infer_ref else "fixed")
    return json.loads(json.dumps(key)), lambda seed, kw: run_demo_real(
        a.demo_dir, n_docs, budget, seed, ref, kw, a.infer_ref
    )


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_environment()
    a = parse_args(argv)
    quiet_benchmark(a.threads)

    out = a.out or default_out(a.problem, a.smoke)
    extra = parts(out) if a.out is None else []
    variant_args = a.variant if a.variant is not None else DEFAULT_VARIANTS
    variants = dict(parse_variant(v) for v in [FULL, *variant_args])
    if a.report_only:
        if not out.is_file():
            sys.exit(f"no results at {out}")
        key, runs = read_results(out, StageRun.from_json)
        assert key is not None
        report(merge_runs(runs, key, [], extra, StageRun.from_json), key, out,
               list(variants) if a.variant is not None else None)
        return

    options = parse_assignments(a.option)
    if "stages" in options:
        sys.exit("--option stages=... would stage the full runs too: give stages in --variant")
    budget = SMOKE_BUDGET if a.smoke else BUDGET
    seeds = parse_seeds(a.seeds or (SMOKE_SEEDS if a.smoke else DEFAULT_SEEDS[a.problem]))
    n_docs = a.docs or (SMOKE_DOCS if a.smoke else DEMO_EXAMPLES)
    _, Y_table, _ = load_table(demo_table_path(1))
    ref = fixed_ref_point(Y_table)
    key, run = make_runner(a, options, variants, budget, n_docs, ref)

    runs = stored_runs(out, key, a.fresh, StageRun.from_json)
    done = {(r.variant, r.seed) for r in runs + merge_runs([], key, [], extra, StageRun.from_json)}
    if any((label, seed) not in done for seed in seeds for label in variants):  # untimed warm-up
        if a.problem == "demo-real":
            warm_demo_real(a.demo_dir, n_docs, ref)
        else:
            warm_imports([])
    for seed in seeds:  # seed-major: a cut-short run still has every variant per seed
        for label, kw in variants.items():
            if (label, seed) in done:
                continue
            r = StageRun(variant=label, seed=seed, **run(seed, {**options, **kw}))
            runs.append(r)
            save_runs(out, key, runs)
            print(
                f"seed {seed} {label:40s} HV {r.hv:.4g}  best task {r.best_task:.3f}  "
                f"take-home {r.take_home:.3f}  docs {r.docs}  "
                f"stopped {r.stopped}  ({r.seconds:.1f} s)",
                flush=True,
            )
    runs = merge_runs(runs, key, [], extra, StageRun.from_json)
    runs = [r for r in runs if r.variant in variants]  # every stored seed: split runs join the table
    report(runs, key, out, list(variants))


if __name__ == "__main__":
    main()
