"""Multi-fidelity evaluation (evaluation.stages): documents saved against search quality lost.

    .venv/bin/python benchmarks/stages.py --problem bernoulli --variant "stages=0.25,1.0 min_chance=0.1"
    .venv/bin/python benchmarks/stages.py --problem bernoulli --seeds 5-9 --out benchmarks/data/stages_bernoulli.part2.json
    .venv/bin/python benchmarks/stages.py --problem demo-real --variant "stages=0.25,1.0" --seeds 0-4
    .venv/bin/python benchmarks/stages.py --problem bernoulli --report-only
    .venv/bin/python benchmarks/stages.py --problem bernoulli --smoke        # tiny budget, results in /tmp

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
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import search_quality as sq  # noqa: E402  (a script module beside this one; it also sets the environment)
import torch  # noqa: E402

from mmmo.run.documents import decode_outcomes, encode_outcomes, stage_sizes  # noqa: E402
from mmmo.run.records import Trial  # noqa: E402

PROBLEMS = ["bernoulli", "demo-real"]
DEFAULT_SEEDS = {"bernoulli": "0-9", "demo-real": "0-4"}
DEFAULT_VARIANTS = ["stages=0.25,1.0 min_chance=0.1"]
FULL = "full"
BUDGET = sq.Budget(initial=10, batches=4, batch_size=5, candidates=10)
SMOKE_BUDGET = sq.Budget(initial=4, batches=1, batch_size=3, candidates=6)
SMOKE_SEEDS = "0-1"
SMOKE_DOCS = 20
P_CLAMP = (0.001, 0.999)
DONE_WHEN_FEWER = 0.40  # a staged variant must score at least this share fewer documents than full
SHORT_KEYS = {"min_chance": "stage_min_chance", "min_gain": "stage_min_gain"}


# ----------------------------------------------------------------------------------------- pure parts (tested)


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


def answer_seed(seed: int, x: Sequence[float], task_index: int) -> int:
    """The seed of candidate x's per-document noise on task `task_index` (x rounded to 12 digits)."""
    key = f"{seed}|{task_index}|" + ",".join(f"{round(float(v), 12):.12f}" for v in x)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def document_answers(
    p: float, z: torch.Tensor, rho: float, seed: int, x: Sequence[float], task_index: int
) -> list[float]:
    """Candidate x's outcome (1.0 correct, 0.0 not) on each document of difficulty `z [N]` (document order):
    correct iff sqrt(rho) z_d + sqrt(1 - rho) e_d < Phi^-1(p), e ~ N(0, 1) seeded by (seed, x, task)."""
    p = min(max(float(p), P_CLAMP[0]), P_CLAMP[1])
    generator = torch.Generator().manual_seed(answer_seed(seed, x, task_index))
    e = torch.randn(z.shape, generator=generator, dtype=torch.float64)
    threshold = torch.special.ndtri(torch.tensor(p, dtype=torch.float64))
    latent = math.sqrt(rho) * z.to(torch.float64) + math.sqrt(1.0 - rho) * e
    return (latent < threshold).to(torch.float64).tolist()


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and lm-eval's standard error (sample standard deviation, ddof 1, over sqrt(n)); NaN for n < 2."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan
    return mean, statistics.stdev(values) / math.sqrt(n)


def score_next_stage(
    trial: Trial,
    answers: Mapping[str, Sequence[float]],
    exact: Mapping[str, float],
    stages: Sequence[float] | None,
    objective_names: Sequence[str],
) -> Trial:
    """`trial` scored on its next stage: `answers[task]` are its outcomes on all of the task's documents in scoring
    order, `exact` the exact objectives' values (sparsity). Each task objective is the mean of the documents
    scored so far (those of `trial.outcomes` first: they must agree with `answers`), with lm-eval's stderr and
    `n_examples`; status "partial" while stages remain, else "done"."""
    k = trial.stages_scored
    n_stages = len(stages) if stages else 1
    if k >= n_stages:
        raise ValueError(f"trial {trial.id} was already scored on all {k} stage(s)")
    objectives: dict[str, float] = {}
    stderr: dict[str, float] = {}
    n_examples: dict[str, int] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    for name in objective_names:
        if name in exact:
            objectives[name], stderr[name] = float(exact[name]), 0.0
            continue
        docs = list(answers[name])
        sizes = stage_sizes(len(docs), stages)
        lo, hi = (sizes[k - 1] if k else 0), sizes[k]
        earlier = decode_outcomes(trial.outcomes.get(name, {}).get(name, "")) if k else []
        if len(earlier) != lo or earlier != docs[:lo]:
            raise ValueError(
                f"trial {trial.id}: its stored outcomes of {name!r} are not its first {lo} answers"
            )
        values = earlier + docs[lo:hi]
        mean, se = mean_and_stderr(values)
        objectives[name] = mean
        if not math.isnan(se):  # one document: no sample stderr (the GP infers that objective's noise)
            stderr[name] = se
        n_examples[name] = len(values)
        outcomes[name] = {name: encode_outcomes(values)}
    return replace(
        trial,
        status="partial" if k + 1 < n_stages else "done",
        objectives=objectives,
        stderr=stderr,
        n_examples=n_examples,
        outcomes=outcomes,
        stages_scored=k + 1,
    )


def documents_scored(trials: Sequence[Trial], tasks: Sequence[str]) -> int:
    return sum(int(t.n_examples.get(n, 0)) for t in trials for n in tasks)


def quartile_verdict(value: float, full: Sequence[float]) -> str:
    """Where `value` sits against the full runs' interquartile range: below, within or above."""
    _, q1, q3 = sq.quartiles(full)
    return "below" if value < q1 else "above" if value > q3 else "within"


# ------------------------------------------------------------------------------------------- bernoulli problem


class BernoulliDocs:
    """Per-document outcomes of the demo surrogate at one benchmark seed (see the module docstring)."""

    def __init__(self, problem: sq.Problem, n_docs: int, rho: float, seed: int) -> None:
        self.problem, self.n_docs, self.rho, self.seed = problem, n_docs, rho, seed
        self.task_cols = [problem.objectives.index(t) for t in problem.tasks]
        generator = torch.Generator().manual_seed(7_919 * (seed + 1))
        self.z = torch.randn((len(problem.tasks), n_docs), generator=generator, dtype=torch.float64)
        self.order = [torch.randperm(n_docs, generator=generator).tolist() for _ in problem.tasks]
        self._cache: dict[tuple[float, ...], tuple[list[float], dict[str, list[float]]]] = {}

    def score(self, xs: Sequence[Sequence[float]]) -> list[tuple[list[float], dict[str, list[float]]]]:
        """Per candidate: its true values (objectives order) and its answers per task in scoring order."""
        keys = [tuple(float(v) for v in x) for x in xs]
        new = [k for k in dict.fromkeys(keys) if k not in self._cache]
        if new:
            Y = self.problem.evaluate(torch.tensor(new, dtype=torch.float64)).tolist()
            for key, y in zip(new, Y):
                answers = {}
                for j, (task, col) in enumerate(zip(self.problem.tasks, self.task_cols)):
                    a = document_answers(y[col], self.z[j], self.rho, self.seed, key, j)
                    answers[task] = [a[d] for d in self.order[j]]
                self._cache[key] = (y, answers)
        return [self._cache[k] for k in keys]


def opt_spec(budget: sq.Budget, seed: int) -> Any:
    from mmmo.spec.schema import OptimizerSpec

    return OptimizerSpec(
        initial=budget.initial,
        batches=budget.batches,
        batch_size=budget.batch_size,
        candidates=budget.candidates,
        seed=seed,
    )


def run_bernoulli(
    problem: sq.Problem, budget: sq.Budget, seed: int, n_docs: int, rho: float, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """One run_loop run on per-document outcomes; `kwargs` are extra LoopOptions fields (stages among them)."""
    from mmmo.search.acquisition import budget_for
    from mmmo.search.loop import LoopOptions, run_loop

    docs = BernoulliDocs(problem, n_docs, rho, seed)
    names = list(problem.objectives)
    stages = kwargs.get("stages")
    exact_cols = {n: problem.objectives.index(n) for n in problem.exact}
    true_y: dict[int, list[float]] = {}

    def evaluate(trials: list[Trial]) -> list[Trial]:
        out = []
        for t, (y, answers) in zip(trials, docs.score([t.x for t in trials])):
            true_y[t.id] = y
            out.append(score_next_stage(t, answers, {n: y[c] for n, c in exact_cols.items()}, stages, names))
        return out

    options = LoopOptions(
        opt=opt_spec(budget, seed),
        dim=problem.dim,
        objective_names=names,
        task_objective_names=list(problem.tasks),
        ref_point=list(problem.ref_point),
        budget=budget_for(len(names)),
        initial_points=problem.recipes(),
        **kwargs,
    )
    t0 = time.perf_counter()
    result = run_loop([], options, evaluate)
    seconds = time.perf_counter() - t0
    return run_record(result.trials, names, problem.tasks, problem.ref_point, seconds, true_y)


# ------------------------------------------------------------------------------------------- demo-real problem


def demo_real_spec(
    demo_dir: Path,
    limit: int,
    budget: sq.Budget,
    seed: int,
    out_dir: Path,
    kwargs: Mapping[str, Any],
    ref_point: Sequence[float] | None,
) -> Any:
    """The demo's search spec with the benchmark's optimizer sizes, seed, reference point (None: the search
    infers its own) and evaluation fields (`kwargs`)."""
    from mmmo.spec.schema import EvaluationSpec, SearchSpec

    data = sq.demo_search_spec(demo_dir, limit).model_dump(mode="json")
    data["optimizer"].update(
        initial=budget.initial,
        batches=budget.batches,
        batch_size=budget.batch_size,
        candidates=budget.candidates,
        seed=seed,
        ref_point=list(ref_point) if ref_point is not None else None,
    )
    unknown = [k for k in kwargs if k not in EvaluationSpec.model_fields]
    if unknown:
        raise SystemExit(f"demo-real passes variant/--option keys to spec.evaluation, which has no {unknown}")
    data["evaluation"].update(
        {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}, evaluate_sources=False
    )
    data["output"].update(dir=str(out_dir), export="none")
    return SearchSpec.model_validate(data)


def run_demo_real(
    demo_dir: Path,
    limit: int,
    budget: sq.Budget,
    seed: int,
    ref_point: Sequence[float],
    kwargs: Mapping[str, Any],
    infer_ref: bool = False,
) -> dict[str, Any]:
    """One `mmmo.search` of the real demo; scored against `ref_point`, which the search also uses unless
    `infer_ref` (then it infers its own from the initial design, as a spec without optimizer.ref_point does)."""
    import mmmo

    with tempfile.TemporaryDirectory(prefix="mmmo-stages-") as tmp:
        spec = demo_real_spec(
            demo_dir, limit, budget, seed, Path(tmp) / "run", kwargs, None if infer_ref else ref_point
        )
        t0 = time.perf_counter()
        result = mmmo.search(spec, fresh=True, show_progress=False, library_output=False)
        seconds = time.perf_counter() - t0
    return run_record(result.trials, sq.DEMO_OBJECTIVES, sq.DEMO_TASKS, ref_point, seconds, None)


def warm_demo_real(demo_dir: Path, limit: int, ref_point: Sequence[float]) -> None:
    """One tiny untimed search first, so no timed run pays for the first imports and task building."""
    import mmmo

    with tempfile.TemporaryDirectory(prefix="mmmo-stages-warm-") as tmp:
        spec = demo_real_spec(
            demo_dir,
            limit,
            sq.Budget(initial=2, batches=0, batch_size=1, candidates=1),
            0,
            Path(tmp) / "run",
            {},
            ref_point,
        )
        mmmo.search(spec, fresh=True, show_progress=False, library_output=False)


def check_demo(demo_dir: Path) -> None:
    from mmmo.demo import DEFAULT_PARAMS, is_complete_build

    if not is_complete_build(demo_dir.resolve(), DEFAULT_PARAMS):
        sys.exit(
            f"no complete demo build in {demo_dir}: build it first (as the test suite does), e.g.\n"
            f"  .venv/bin/python -c 'from pathlib import Path; from mmmo.demo import build_demo; "
            f'build_demo(Path("{demo_dir}"))\''
        )


# ----------------------------------------------------------------------------------------------------- records


def run_record(
    trials: Sequence[Trial],
    names: Sequence[str],
    tasks: Sequence[str],
    ref: Sequence[float],
    seconds: float,
    true_y: Mapping[int, list[float]] | None,
) -> dict[str, Any]:
    """One run's summary and per-trial data; `true_y` (trial id -> true values) None: observed values are true."""
    done = [t for t in trials if t.status == "done" and t.objectives is not None]
    obs = {t.id: [float(t.objectives[n]) for n in names] for t in done}  # type: ignore[index]
    truth = {t.id: (list(true_y[t.id]) if true_y is not None else obs[t.id]) for t in done}
    full = [t for t in done if not t.stopped]
    task_cols = [list(names).index(n) for n in tasks]
    hv = sq.hv_curve([truth[t.id] for t in full], ref)[-1] if full else 0.0
    mean_task = lambda y: statistics.fmean(y[c] for c in task_cols)  # noqa: E731
    pick = max(full, key=lambda t: mean_task(obs[t.id]), default=None)
    return {
        "hv": hv,
        "best_task": mean_task(truth[pick.id]) if pick is not None else math.nan,
        "docs": documents_scored(trials, tasks),
        "stopped": sum(t.stopped for t in trials),
        "failed": sum(t.status == "failed" for t in trials),
        "seconds": seconds,
        "trials": [
            {
                "id": t.id,
                "batch": t.batch,
                "x": t.x,
                "y_obs": obs.get(t.id),
                "y": truth.get(t.id),
                "stopped": t.stopped,
                "stages_scored": t.stages_scored,
                "docs": sum(int(t.n_examples.get(n, 0)) for n in tasks),
            }
            for t in trials
        ],
    }


def fmt(v: Sequence[float], digits: int, general: bool = False) -> str:
    """Median [IQR]; `general`: `digits` significant digits (hypervolumes are small numbers)."""
    if not general:
        return sq.fmt(list(v), digits)
    v = [x for x in v if not math.isnan(x)]
    if not v:
        return "–"
    med, q1, q3 = sq.quartiles(v)
    return f"{med:.{digits}g} [{q1:.{digits}g}–{q3:.{digits}g}]"


def make_table(runs: list[dict[str, Any]], variants: Sequence[str]) -> str:
    by = {v: [r for r in runs if r["variant"] == v] for v in variants}
    full_docs = statistics.median(r["docs"] for r in by[FULL]) if by.get(FULL) else math.nan
    lines = [
        "| variant | seeds | final HV | best mean task score | documents scored | fewer than full "
        "| stopped trials | s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        rs = by.get(v) or []
        if not rs:
            continue
        docs = statistics.median(r["docs"] for r in rs)
        fewer = f"{1 - docs / full_docs:.0%}" if v != FULL and full_docs > 0 else "–"
        lines.append(
            f"| {v} | {len(rs)} | {fmt([r['hv'] for r in rs], 4, general=True)} | {fmt([r['best_task'] for r in rs], 3)} "
            f"| {fmt([r['docs'] for r in rs], 0)} | {fewer} | {fmt([r['stopped'] for r in rs], 0)} "
            f"| {statistics.median(r['seconds'] for r in rs):.1f} |"
        )
    lines.append("")
    for v in variants:
        rs = by.get(v) or []
        if v == FULL or not rs or not by.get(FULL):
            continue
        seeds = sorted({r["seed"] for r in rs} & {r["seed"] for r in by[FULL]})
        full_hv = [r["hv"] for r in by[FULL] if r["seed"] in seeds]
        hv = statistics.median(r["hv"] for r in rs if r["seed"] in seeds)
        _, q1, q3 = sq.quartiles(full_hv)
        where = quartile_verdict(hv, full_hv)
        full_d = statistics.median(r["docs"] for r in by[FULL] if r["seed"] in seeds)
        saved = 1 - statistics.median(r["docs"] for r in rs if r["seed"] in seeds) / full_d if full_d else 0.0
        ok = where != "below" and saved >= DONE_WHEN_FEWER
        lines.append(
            f"- {v}: median HV {hv:.4g} is {where} the full runs' IQR [{q1:.4g}–{q3:.4g}] and it scores "
            f"{saved:.0%} fewer documents (>= {DONE_WHEN_FEWER:.0%} needed), over {len(seeds)} common seeds: "
            f"done-when {'HOLDS' if ok else 'does NOT hold'}"
        )
    return "\n".join(lines)


def oracle_line(runs: list[dict[str, Any]], first_stage: float = 0.25) -> str:
    """What stopping could save at best without losing hypervolume: in the full runs, how many trials end off the
    final front of true values, and the documents an oracle saves by stopping exactly those after `first_stage`."""
    from mmmo.search.pareto import pareto_mask

    full = [r for r in runs if r["variant"] == FULL]
    if not full:
        return ""
    off, saved = [], []
    for r in full:
        Y = torch.tensor([t["y"] for t in r["trials"] if t["y"] is not None], dtype=torch.float64)
        docs = [t["docs"] for t in r["trials"] if t["y"] is not None]
        dominated = (~pareto_mask(Y)).tolist()
        off.append(sum(dominated))
        saved.append(sum((1 - first_stage) * d for d, dom in zip(docs, dominated) if dom) / max(1, sum(docs)))
    n = len(full[0]["trials"])
    return (
        f"- oracle bound: in the full runs {fmt(off, 0)} of {n} trials end off the final front; stopping exactly "
        f"those after {first_stage:.0%} of their documents would save {fmt([100 * s for s in saved], 0)}% of the "
        "documents (median [IQR]): any larger saving stops trials that are on the front"
    )


def parts(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.stem}.part*.json"))


def merge_runs(
    runs: list[dict[str, Any]], key: dict[str, Any], extra: Sequence[Path]
) -> list[dict[str, Any]]:
    """`runs` plus those of `extra` files with the same key (others skipped with a warning), no (variant, seed)
    twice."""
    runs = list(runs)
    for path in extra:
        other = json.loads(path.read_text())
        if other.get("key") != key:
            print(f"warning: {path} left out: another problem, budget or options", file=sys.stderr)
            continue
        have = {(r["variant"], r["seed"]) for r in runs}
        runs += [r for r in other["runs"] if (r["variant"], r["seed"]) not in have]
    return runs


def default_out(problem: str, smoke: bool) -> Path:
    return sq.SMOKE_OUT / f"stages_{problem}_smoke.json" if smoke else sq.DATA / f"stages_{problem}.json"


def report(
    runs: list[dict[str, Any]], key: dict[str, Any], out: Path, variants: Sequence[str] | None
) -> None:
    seen = list(dict.fromkeys(r["variant"] for r in runs))
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
    p.add_argument("--docs", type=int, default=None, help=f"documents per task (default {sq.DEMO_EXAMPLES})")
    p.add_argument(
        "--rho", type=float, default=0.5, help="bernoulli: correlation of documents across candidates"
    )
    p.add_argument("--demo-dir", type=Path, default=sq.DEFAULT_DEMO_DIR)
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
        f"seeds {SMOKE_SEEDS}, {SMOKE_DOCS} documents, results under {sq.SMOKE_OUT}",
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
        from mmmo.search.loop import LoopOptions

        fields = {f.name for f in dataclasses.fields(LoopOptions)}
        unknown = sorted({k for kw in [options, *variants.values()] for k in kw} - fields)
        if unknown:
            sys.exit(f"LoopOptions has no field(s) {unknown}")
        problem = sq.surrogate_problem("demo", 1, budget)
        key.update(docs=n_docs, rho=a.rho, **problem.info)
        return json.loads(json.dumps(key)), lambda seed, kw: run_bernoulli(problem, budget, seed, n_docs, a.rho, kw)
    check_demo(a.demo_dir)
    from mmmo.demo import DEFAULT_PARAMS

    key.update(limit=n_docs, demo=DEFAULT_PARAMS.digest(), search_ref="inferred" if a.infer_ref else "fixed")
    return json.loads(json.dumps(key)), lambda seed, kw: run_demo_real(
        a.demo_dir, n_docs, budget, seed, ref, kw, a.infer_ref
    )


def stored_runs(out: Path, key: dict[str, Any], fresh: bool) -> list[dict[str, Any]]:
    """The runs already in `out` for this key (none with `fresh`, or for another problem or options)."""
    if not out.is_file() or fresh:
        return []
    old = json.loads(out.read_text())
    if old.get("key") == key:
        return list(old["runs"])
    print(f"{out}: stored runs are for another problem, budget or options; starting over", file=sys.stderr)
    return []


def save_runs(out: Path, key: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "runs": runs}, separators=(",", ":")))
    tmp.replace(out)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    import logging
    import warnings

    logging.getLogger("mmmo").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script(_method)?` is deprecated", category=DeprecationWarning
    )

    out = a.out or default_out(a.problem, a.smoke)
    extra = parts(out) if a.out is None else []
    variant_args = a.variant if a.variant is not None else DEFAULT_VARIANTS
    variants = dict(parse_variant(v) for v in [FULL, *variant_args])
    if a.report_only:
        if not out.is_file():
            sys.exit(f"no results at {out}")
        stored = json.loads(out.read_text())
        report(merge_runs(stored["runs"], stored["key"], extra), stored["key"], out,
               list(variants) if a.variant is not None else None)
        return

    options = parse_assignments(a.option)
    if "stages" in options:
        sys.exit("--option stages=... would stage the full runs too: give stages in --variant")
    budget = SMOKE_BUDGET if a.smoke else BUDGET
    seeds = parse_seeds(a.seeds or (SMOKE_SEEDS if a.smoke else DEFAULT_SEEDS[a.problem]))
    n_docs = a.docs or (SMOKE_DOCS if a.smoke else sq.DEMO_EXAMPLES)
    _, Y_table, _ = sq.load_table(sq.table_path(1))
    ref = sq.fixed_ref_point(Y_table)
    key, run = make_runner(a, options, variants, budget, n_docs, ref)

    runs = stored_runs(out, key, a.fresh)
    done = {(r["variant"], r["seed"]) for r in runs + merge_runs([], key, extra)}
    if any((label, seed) not in done for seed in seeds for label in variants):  # untimed warm-up
        if a.problem == "demo-real":
            warm_demo_real(a.demo_dir, n_docs, ref)
        else:
            sq.warm_imports([])
    for seed in seeds:  # seed-major: a cut-short run still has every variant per seed
        for label, kw in variants.items():
            if (label, seed) in done:
                continue
            r = {"variant": label, "seed": seed, **run(seed, {**options, **kw})}
            runs.append(r)
            save_runs(out, key, runs)
            print(
                f"seed {seed} {label:40s} HV {r['hv']:.4g}  best task {r['best_task']:.3f}  docs {r['docs']}  "
                f"stopped {r['stopped']}  ({r['seconds']:.1f} s)",
                flush=True,
            )
    runs = merge_runs(runs, key, extra)
    runs = [r for r in runs if r["variant"] in variants]  # every stored seed: split runs join the table
    report(runs, key, out, list(variants))


if __name__ == "__main__":
    main()
