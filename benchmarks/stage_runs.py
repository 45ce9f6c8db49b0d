"""One run of the staged-evaluation benchmark (benchmarks/stages.py): `run_loop` on Bernoulli documents, or a
real `mmmo.search` of the demo; each summarised by `run_record` (hypervolume, the pick's true score, documents)."""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bernoulli_docs import BernoulliDocs, documents_scored, score_next_stage
from benchmarks.demo_tables import DEMO_OBJECTIVES, DEMO_TASKS, demo_search_spec
from benchmarks.metrics import hv_curve
from benchmarks.problems import Budget, Problem
from benchmarks.results import known_fields, without_none
from mmmo.run.records import Trial


@dataclass(frozen=True)
class StageRun:
    """One run of a staged-scoring variant: the final hypervolume of its fully scored trials' TRUE values (`hv`),
    the TRUE mean task score of the trial with the highest observed one (`best_task`) and of the take-home merge
    the library chooses by the posterior (`take_home`; None in runs stored before it), documents scored, trials
    stopped early and failed, seconds, and per trial (`trials`: id, batch, x, y_obs, y, stopped, stages_scored,
    docs)."""

    variant: str
    seed: int
    hv: float
    best_task: float
    docs: int
    stopped: int
    failed: int
    seconds: float
    trials: list[dict[str, Any]]
    take_home: float | None = None

    @property
    def label(self) -> str:
        return self.variant

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRun:
        return cls(**known_fields(cls, data))

    def to_json(self) -> dict[str, Any]:
        return without_none(self)

def opt_spec(budget: Budget, seed: int) -> Any:
    from mmmo.spec.schema import OptimizerSpec

    return OptimizerSpec(
        initial=budget.initial,
        batches=budget.batches,
        batch_size=budget.batch_size,
        candidates=budget.candidates,
        seed=seed,
    )


def run_bernoulli(
    problem: Problem, budget: Budget, seed: int, n_docs: int, rho: float, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """One run_loop run on per-document outcomes; `kwargs` are extra LoopOptions fields (stages among them)."""
    from mmmo.optimizer.acquisition import budget_for
    from mmmo.optimizer.loop import run_loop
    from mmmo.optimizer.options import LoopOptions

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
    budget: Budget,
    seed: int,
    out_dir: Path,
    kwargs: Mapping[str, Any],
    ref_point: Sequence[float] | None,
) -> Any:
    """The demo's search spec with the benchmark's optimizer sizes, seed, reference point (None: the search
    infers its own) and evaluation fields (`kwargs`)."""
    from mmmo.spec.schema import EvaluationSpec, SearchSpec

    data = demo_search_spec(demo_dir, limit).model_dump(mode="json")
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
    budget: Budget,
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
    return run_record(result.trials, DEMO_OBJECTIVES, DEMO_TASKS, ref_point, seconds, None)


def warm_demo_real(demo_dir: Path, limit: int, ref_point: Sequence[float]) -> None:
    """One tiny untimed search first, so no timed run pays for the first imports and task building."""
    import mmmo

    with tempfile.TemporaryDirectory(prefix="mmmo-stages-warm-") as tmp:
        spec = demo_real_spec(
            demo_dir,
            limit,
            Budget(initial=2, batches=0, batch_size=1, candidates=1),
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


def take_home_choice(full: Sequence[Trial], names: Sequence[str], task_cols: Sequence[int]) -> Trial | None:
    """The trial of `full` (done, scored in full) the library takes home under the default preference (the mean
    task score, chosen by the posterior with the trials' known variances), as report.md and `export: best` do."""
    # Imported here, as run_bernoulli imports the optimizer: its modules load only when a run needs them.

    from mmmo.optimizer.history import done_arrays, done_variances
    from mmmo.optimizer.target import Target, choose_take_home

    if not full:
        return None
    X, Y, usable = done_arrays(full, names, len(full[0].x))
    chosen = choose_take_home(X, Y, Target.mean_of(len(names), task_cols), done_variances(usable, names))
    return usable[chosen.row] if chosen is not None else None


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
    hv = hv_curve([truth[t.id] for t in full], ref)[-1] if full else 0.0
    mean_task = lambda y: statistics.fmean(y[c] for c in task_cols)  # noqa: E731
    pick = max(full, key=lambda t: mean_task(obs[t.id]), default=None)
    chosen = take_home_choice(full, names, task_cols)
    return {
        "hv": hv,
        "best_task": mean_task(truth[pick.id]) if pick is not None else math.nan,
        "take_home": mean_task(truth[chosen.id]) if chosen is not None else math.nan,
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

