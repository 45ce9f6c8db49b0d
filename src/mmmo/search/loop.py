"""The optimisation loop, independent of how trials are stored or evaluated, and resumable from any history."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmmo.config import OptimizerSpec
from mmmo.errors import MmmoError
from mmmo.search.gp import observation_variance
from mmmo.search.pareto import hypervolume, infer_ref_point, pareto_mask
from mmmo.search.strategies import AcqBudget, propose_batch
from mmmo.trial import Trial


@dataclass
class BatchSummary:
    """Where the search stands after a batch; counts are for this batch, the rest for all batches so far."""

    batch: int
    n_done: int
    n_failed: int
    hypervolume: float  # w.r.t. the run's fixed reference point, over every done trial so far
    pareto_ids: list[int]
    best_per_objective: dict[str, tuple[int, float]]  # objective -> (trial id, value)
    propose_seconds: float | None = None  # time this call spent proposing the batch (None: proposed earlier)


@dataclass
class LoopResult:
    trials: list[Trial]
    hypervolumes: list[float]  # one per batch, 0 = initial design
    ref_point: list[float] | None
    pareto_ids: list[int] = field(default_factory=list)


def _noop(*_: object) -> None:
    return None


def is_usable(trial: Trial, objective_names: Sequence[str]) -> bool:
    """A done trial with a finite value for every objective (only these enter the GP and the hypervolume)."""
    if trial.status != "done" or trial.objectives is None:
        return False
    return all(n in trial.objectives and math.isfinite(float(trial.objectives[n])) for n in objective_names)


def done_arrays(
    trials: Sequence[Trial], objective_names: Sequence[str], dim: int
) -> tuple[Tensor, Tensor, list[Trial]]:
    """`X [n, dim]`, `Y [n, m]` (float64, objectives in `objective_names` order) of the usable trials, and them."""
    usable = [t for t in trials if is_usable(t, objective_names)]
    X = torch.tensor([t.x for t in usable], dtype=torch.float64).reshape(-1, dim)
    Y = torch.tensor(
        [[float(t.objectives[n]) for n in objective_names] for t in usable],  # type: ignore[index]
        dtype=torch.float64,
    ).reshape(-1, len(objective_names))
    return X, Y, usable


def done_variances(usable: Sequence[Trial], objective_names: Sequence[str]) -> Tensor:
    """Known observation variances `[n, m]` of `usable` trials from their stderrs (NaN where unknown)."""
    m = len(objective_names)
    stderr = torch.tensor(
        [[float(t.stderr.get(n, math.nan)) for n in objective_names] for t in usable], dtype=torch.float64
    ).reshape(-1, m)
    n_examples = torch.tensor(
        [[float(t.n_examples.get(n, 0)) for n in objective_names] for t in usable], dtype=torch.float64
    ).reshape(-1, m)
    return observation_variance(stderr, n_examples)


def summarize(
    trials: Sequence[Trial],
    batch: int,
    objective_names: Sequence[str],
    dim: int,
    ref_point: Sequence[float] | None,
) -> BatchSummary:
    """Summary after `batch`: its counts, and hypervolume/front/best over every batch up to it."""
    in_batch = [t for t in trials if t.batch == batch]
    _, Y, usable = done_arrays([t for t in trials if t.batch <= batch], objective_names, dim)
    hv = hypervolume(Y, ref_point) if ref_point is not None and Y.shape[0] else 0.0
    front = [t.id for t, keep in zip(usable, pareto_mask(Y).tolist()) if keep]
    best: dict[str, tuple[int, float]] = {}
    for j, name in enumerate(objective_names):
        if Y.shape[0]:
            i = int(torch.argmax(Y[:, j]))
            best[name] = (usable[i].id, float(Y[i, j]))
    return BatchSummary(
        batch=batch,
        n_done=sum(t.status == "done" for t in in_batch),
        n_failed=sum(t.status == "failed" for t in in_batch),
        hypervolume=hv,
        pareto_ids=front,
        best_per_objective=best,
    )


def _check_finished(t: Trial, pending: set[int], objective_names: Sequence[str]) -> None:
    if t.id not in pending:
        raise MmmoError(f"evaluation returned trial {t.id}, which was not pending in this batch")
    if t.status not in ("done", "failed"):
        raise MmmoError(
            f"evaluation returned trial {t.id} with status {t.status!r} (expected done or failed)"
        )
    if t.status == "done":
        missing = [n for n in objective_names if t.objectives is None or n not in t.objectives]
        if missing:
            raise MmmoError(f"trial {t.id} finished without objective(s): {', '.join(missing)}")


def run_loop(
    trials: list[Trial],
    *,
    dim: int,
    objective_names: list[str],
    task_objective_names: list[str],
    opt: OptimizerSpec,
    evaluate: Callable[[list[Trial]], Iterable[Trial]],
    on_proposed: Callable[[list[Trial]], None] = _noop,
    on_finished: Callable[[Trial], None] = _noop,
    on_batch_end: Callable[[BatchSummary], None] = _noop,
    ref_point: list[float] | None = None,
    on_ref_point: Callable[[list[float]], None] = _noop,
    to_params: Callable[[list[float]], dict[str, float]] | None = None,
    budget: AcqBudget | None = None,
    device: torch.device | str | None = None,
    ended_batches: Collection[int] | None = None,
    initial_points: Tensor | None = None,
) -> LoopResult:
    """Run (or resume) batches 0..opt.batches over the history `trials`.

    A batch already present in the history is not proposed again: only its trials still `proposed`
    (interrupted mid-evaluation) are evaluated. New trials go to `on_proposed` before evaluation so the
    caller can journal them. `on_batch_end` is called for the batches this call proposed or evaluated,
    and, when `ended_batches` (the batches whose end the caller already recorded) is given, for every
    complete batch not in it.
    The reporting reference point is `ref_point`, else inferred once from the first done trials (batch 0
    normally) and handed to `on_ref_point`. `budget` (acquisition effort) defaults to
    `mmmo.search.strategies.DEFAULT_BUDGET`; `device` is where the GP work runs (default CPU).
    The acquisition uses that same reference point from batch 1 on. `initial_points` (unit cube, e.g. the
    standard recipes) open the initial design.
    """
    unknown = [n for n in task_objective_names if n not in objective_names]
    if unknown:
        raise MmmoError(f"task objective(s) not among the objectives: {', '.join(unknown)}")
    if ref_point is not None and len(ref_point) != len(objective_names):
        raise MmmoError(
            f"ref_point has {len(ref_point)} values but there are {len(objective_names)} objectives"
        )
    task_columns = [objective_names.index(n) for n in task_objective_names]
    history = sorted(trials, key=lambda t: t.id)
    ref = list(ref_point) if ref_point is not None else None
    hypervolumes: list[float] = []

    for b in range(opt.batches + 1):
        batch_trials = [t for t in history if t.batch == b]
        worked = False
        propose_seconds = None
        if not batch_trials:
            X_done, Y_done, usable = done_arrays(history, objective_names, dim)
            X_seen = torch.tensor([t.x for t in history], dtype=torch.float64).reshape(-1, dim)
            started = time.perf_counter()
            proposals = propose_batch(
                opt,
                X_done=X_done,
                Y_done=Y_done,
                Yvar_done=done_variances(usable, objective_names),
                X_all_seen=X_seen,
                task_columns=task_columns,
                batch_index=b,
                dim=dim,
                ref_point=ref,
                done_batches=[t.batch for t in usable],
                initial_points=initial_points,
                budget=budget,
                device=device,
            )
            propose_seconds = time.perf_counter() - started
            next_id = max((t.id for t in history), default=-1) + 1
            batch_trials = [
                Trial(
                    id=next_id + i,
                    batch=b,
                    x=[float(v) for v in p.x],
                    step=p.step,
                    params=to_params(p.x) if to_params is not None else {},
                )
                for i, p in enumerate(proposals)
            ]
            history.extend(batch_trials)
            on_proposed(list(batch_trials))
            worked = True

        pending = [t for t in batch_trials if t.status == "proposed"]
        if pending:
            worked = True
            left = {t.id for t in pending}
            position = {t.id: i for i, t in enumerate(history)}
            for finished in evaluate(pending):
                _check_finished(finished, left, objective_names)
                history[position[finished.id]] = finished
                left.discard(finished.id)
                on_finished(finished)
            if left:
                raise MmmoError(f"evaluation ended without a result for trial(s) {sorted(left)}")

        if ref is None:
            _, Y_first, _ = done_arrays([t for t in history if t.batch <= b], objective_names, dim)
            if Y_first.shape[0]:
                ref = infer_ref_point(Y_first).tolist()
                on_ref_point(list(ref))
        summary = summarize(history, b, objective_names, dim, ref)
        summary.propose_seconds = propose_seconds
        hypervolumes.append(summary.hypervolume)
        # A batch can be complete with its end unrecorded: killed after its last evaluation.
        if worked or (ended_batches is not None and b not in ended_batches):
            on_batch_end(summary)

    last = max([opt.batches] + [t.batch for t in history])
    final = summarize(history, last, objective_names, dim, ref) if history else None
    return LoopResult(
        trials=history,
        hypervolumes=hypervolumes,
        ref_point=ref,
        pareto_ids=final.pareto_ids if final else [],
    )
