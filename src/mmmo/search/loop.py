"""The optimisation loop, independent of how trials are stored or evaluated, and resumable from any history.

Its seams: `LoopOptions` (what to optimise and how hard, validated once), the `evaluate` function (trials in,
finished trials out) and a `LoopObserver` that hears of each step (to journal it, show progress, time it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor

from mmmo.run.records import Trial
from mmmo.runtime.errors import MmmoError
from mmmo.search.acquisition import AcqBudget
from mmmo.search.history import History, done_arrays, done_variances
from mmmo.search.pareto import hypervolume, infer_ref_point, pareto_mask
from mmmo.search.space import SearchSpace
from mmmo.search.stages import PartialScores, continue_chances
from mmmo.search.strategies import propose_batch
from mmmo.search.target import Target
from mmmo.spec.schema import EvaluationSpec, OptimizerSpec

# Scores a batch's pending trials, yielding each once, done or failed, in any order.
EvaluateBatch = Callable[[list[Trial]], Iterable[Trial]]


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


@dataclass(frozen=True, eq=False)
class LoopOptions:
    """What `run_loop` optimises and how: checked when made, never changed after.

    `objective_names` are every objective, maximised, in the order of the GP's outputs; `task_objective_names`
    (a subset) are those the weak-to-strong crossover ranks by. `ref_point` (raw objective units, one value per
    objective) fixes the hypervolume reference point; None infers it once from the first done trials. `budget`
    is the acquisition effort (None: AcqBudget's defaults); `device` where the GP work runs (None: CPU).
    `ended_batches` are the batches whose end the caller already recorded (None: the caller keeps no such
    record). `initial_points [k, dim]` (unit cube, e.g. the standard recipes) open the initial design.
    `to_params` names a unit-cube point's merge parameters in real units, for each new trial's `params`.
    `stages` (cumulative fractions of each task's documents; None: one stage) makes `evaluate` return "partial"
    trials short of the last stage; each goes on while its chance of improving the front (search.stages) is at
    least `stage_min_chance` (with `stage_min_gain` > 0: its chance of adding that fraction of the hypervolume),
    else it is done as it is, `stopped`. With stages, a batch is scored `parallel` trials at a time (the
    evaluators' count), each group through all its stages before the next starts, so that later trials of a batch
    are judged against the earlier ones' full scores. `space`, when the method is one of its coordinates (a mixed
    search), projects every proposal onto its configurations and names each new trial's `method`; a single
    method's space changes nothing (None: the same). `target` is the take-home preference the BO strategies spend
    `opt.take_home_points` of each batch on (None: the plain mean of the task objectives, unconstrained).
    """

    opt: OptimizerSpec
    dim: int
    objective_names: Sequence[str]
    task_objective_names: Sequence[str]
    ref_point: Sequence[float] | None = None
    budget: AcqBudget | None = None
    device: torch.device | str | None = None
    ended_batches: Collection[int] | None = None
    initial_points: Tensor | None = None
    to_params: Callable[[list[float]], dict[str, float]] | None = None
    stages: Sequence[float] | None = None
    stage_min_chance: float = EvaluationSpec.model_fields["stage_min_chance"].default
    stage_min_gain: float = EvaluationSpec.model_fields["stage_min_gain"].default
    parallel: int = 1
    space: SearchSpace | None = None
    target: Target | None = None

    def __post_init__(self) -> None:
        # Kept as tuples and a frozenset: the caller's lists cannot change the options afterwards.
        object.__setattr__(self, "objective_names", tuple(self.objective_names))
        object.__setattr__(self, "task_objective_names", tuple(self.task_objective_names))
        if self.ref_point is not None:
            object.__setattr__(self, "ref_point", tuple(float(v) for v in self.ref_point))
        if self.ended_batches is not None:
            object.__setattr__(self, "ended_batches", frozenset(self.ended_batches))
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(float(f) for f in self.stages))
        if self.parallel < 1:
            raise MmmoError(f"parallel must be at least 1, got {self.parallel}")
        if self.dim < 1:
            raise MmmoError(f"the search space needs at least one dimension, got {self.dim}")
        unknown = [n for n in self.task_objective_names if n not in self.objective_names]
        if unknown:
            raise MmmoError(f"task objective(s) not among the objectives: {', '.join(unknown)}")
        if self.ref_point is not None and len(self.ref_point) != len(self.objective_names):
            raise MmmoError(
                f"ref_point has {len(self.ref_point)} values but there are {len(self.objective_names)} objectives"
            )
        if self.space is not None and self.space.dim != self.dim:
            raise MmmoError(f"the search space has {self.space.dim} dimensions, the options say {self.dim}")
        if self.target is not None and len(self.target.weights) != len(self.objective_names):
            raise MmmoError(
                f"the take-home target has {len(self.target.weights)} weights but there are "
                f"{len(self.objective_names)} objectives"
            )
        if self.initial_points is not None and self.initial_points.shape[-1] != self.dim:
            raise MmmoError(
                f"initial points have {self.initial_points.shape[-1]} coordinates, the search space has {self.dim}"
            )


    @property
    def resolved_target(self) -> Target:
        """`target`, or the plain mean of the task objectives (of every objective when none is a task)."""
        if self.target is not None:
            return self.target
        names = self.objective_names
        tasks = [names.index(n) for n in self.task_objective_names] or list(range(len(names)))
        return Target.mean_of(len(names), tasks)


class LoopObserver(Protocol):
    """Hears what `run_loop` does, in order: proposals, finished trials, the reference point, batch ends."""

    def on_proposed(self, trials: list[Trial]) -> None:
        """New trials of a batch, before any of them is evaluated (journal them here)."""

    def on_finished(self, trial: Trial) -> None:
        """A trial came back from evaluation, done or failed (or was stopped after part of its documents)."""

    def on_partial(self, trial: Trial) -> None:
        """A trial came back scored on a stage short of the last (journal it: a resume continues from it)."""

    def on_ref_point(self, ref_point: list[float]) -> None:
        """The reference point, inferred once from the first done trials (raw objective units)."""

    def on_batch_end(self, summary: BatchSummary) -> None:
        """A batch is complete: its summary (see `run_loop` for which batches are announced)."""


class NullObserver:
    """A `LoopObserver` that ignores everything: subclass it to hear only some events."""

    def on_proposed(self, trials: list[Trial]) -> None:
        pass

    def on_finished(self, trial: Trial) -> None:
        pass

    def on_partial(self, trial: Trial) -> None:
        pass

    def on_ref_point(self, ref_point: list[float]) -> None:
        pass

    def on_batch_end(self, summary: BatchSummary) -> None:
        pass


def summarize_batch(
    trials: Sequence[Trial],
    batch: int,
    objective_names: Sequence[str],
    dim: int,
    ref_point: Sequence[float] | None,
) -> BatchSummary:
    """Summary after `batch`: its counts, and hypervolume/front/best over every batch up to it."""
    in_batch = [t for t in trials if t.batch == batch]
    _, Y, usable = done_arrays([t for t in trials if t.batch <= batch], objective_names, dim, scored_in_full=True)
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
    if t.status not in ("done", "failed", "partial"):
        raise MmmoError(
            f"evaluation returned trial {t.id} with status {t.status!r} (expected done, partial or failed)"
        )
    if t.status in ("done", "partial"):
        missing = [n for n in objective_names if t.objectives is None or n not in t.objectives]
        if missing:
            raise MmmoError(f"trial {t.id} finished without objective(s): {', '.join(missing)}")


def run_loop(
    trials: Sequence[Trial],
    options: LoopOptions,
    evaluate: EvaluateBatch,
    observer: LoopObserver | None = None,
) -> LoopResult:
    """Run (or resume) batches 0..opt.batches over the history `trials`.

    A batch already present in the history is not proposed again: only its trials still `proposed`
    (interrupted mid-evaluation) are evaluated. New trials go to `observer.on_proposed` before evaluation so
    the caller can journal them. `observer.on_batch_end` hears of the batches this call proposed or evaluated
    and, when `options.ended_batches` is given, of every complete batch not in it.
    The reporting reference point is `options.ref_point`, else inferred once from the first done trials (batch 0
    normally) and handed to `observer.on_ref_point`; the acquisition uses that same point from batch 1 on.
    """
    watch = observer if observer is not None else NullObserver()
    opt, dim, names = options.opt, options.dim, options.objective_names
    task_columns = [names.index(n) for n in options.task_objective_names]
    history = sorted(trials, key=lambda t: t.id)
    ref = list(options.ref_point) if options.ref_point is not None else None
    hypervolumes: list[float] = []

    for b in range(opt.batches + 1):
        batch_trials = [t for t in history if t.batch == b]
        worked = False
        propose_seconds = None
        if not batch_trials:
            started = time.perf_counter()
            batch_trials = _propose(history, b, options, task_columns, ref)
            propose_seconds = time.perf_counter() - started
            history.extend(batch_trials)
            watch.on_proposed(list(batch_trials))
            worked = True

        pending = [t for t in batch_trials if t.status in ("proposed", "partial")]
        if pending:
            worked = True
            _evaluate_pending(history, pending, evaluate, options, watch, ref)

        if ref is None:
            _, Y_first, _ = done_arrays([t for t in history if t.batch <= b], names, dim, scored_in_full=True)
            if Y_first.shape[0]:
                ref = infer_ref_point(Y_first).tolist()
                watch.on_ref_point(list(ref))
        summary = summarize_batch(history, b, names, dim, ref)
        summary.propose_seconds = propose_seconds
        hypervolumes.append(summary.hypervolume)
        # A batch can be complete with its end unrecorded: killed after its last evaluation.
        if worked or (options.ended_batches is not None and b not in options.ended_batches):
            watch.on_batch_end(summary)

    last = max([opt.batches] + [t.batch for t in history])
    final = summarize_batch(history, last, names, dim, ref) if history else None
    return LoopResult(
        trials=history,
        hypervolumes=hypervolumes,
        ref_point=ref,
        pareto_ids=final.pareto_ids if final else [],
    )


def _propose(
    history: list[Trial], batch: int, options: LoopOptions, task_columns: list[int], ref: list[float] | None
) -> list[Trial]:
    """Batch `batch`'s new trials, numbered after the history's last id."""
    names, dim = options.objective_names, options.dim
    proposals = propose_batch(
        options.opt,
        History.of(history, names, dim),
        task_columns=task_columns,
        batch_index=batch,
        dim=dim,
        ref_point=ref,
        initial_points=options.initial_points,
        budget=options.budget,
        device=options.device,
        space=options.space,
        target=options.resolved_target,
    )
    next_id = max((t.id for t in history), default=-1) + 1
    to_params = options.to_params
    mixed = options.space if options.space is not None and options.space.is_mixed else None
    return [
        Trial(
            id=next_id + i,
            batch=batch,
            x=[float(v) for v in p.x],
            step=p.step,
            params=to_params(p.x) if to_params is not None else {},
            method=mixed.method_of(p.x) if mixed is not None else None,
        )
        for i, p in enumerate(proposals)
    ]


def _evaluate_pending(
    history: list[Trial],
    pending: list[Trial],
    evaluate: EvaluateBatch,
    options: LoopOptions,
    watch: LoopObserver,
    ref: list[float] | None,
) -> None:
    """Evaluate `pending` stage by stage, replacing each in `history` by its newer self as it comes back.

    Trials that come back "partial" (or were partial already: a resume) go on to their next stage, or are done
    as they are (`stopped`) when their chance of improving the front is below `options.stage_min_chance`.
    """
    if not options.stages:
        _evaluate_group(history, pending, evaluate, options, watch, ref)
        return
    fresh = [t for t in pending if t.status == "proposed"]
    k = options.parallel
    groups = [[t for t in pending if t.status == "partial"] + fresh[:k]]
    groups += [fresh[i : i + k] for i in range(k, len(fresh), k)]
    for group in groups:
        _evaluate_group(history, group, evaluate, options, watch, ref)


def _evaluate_group(
    history: list[Trial],
    pending: list[Trial],
    evaluate: EvaluateBatch,
    options: LoopOptions,
    watch: LoopObserver,
    ref: list[float] | None,
) -> None:
    """Evaluate `pending` (proposed or partial trials) through all their stages."""
    names = options.objective_names
    position = {t.id: i for i, t in enumerate(history)}
    todo = [t for t in pending if t.status == "proposed"]
    partial = [t for t in pending if t.status == "partial"]
    while todo or partial:
        if partial:
            go_on = _stage_decisions(history, partial, options, ref)
            for t, keep in zip(partial, go_on):
                if not keep:
                    stopped = replace(t, status="done", stopped=True)
                    history[position[t.id]] = stopped
                    watch.on_finished(stopped)
            todo += [t for t, keep in zip(partial, go_on) if keep]
            partial = []
        left = {t.id for t in todo}
        for finished in evaluate(todo):
            _check_finished(finished, left, names)
            history[position[finished.id]] = finished
            left.discard(finished.id)
            if finished.status == "partial":
                watch.on_partial(finished)
                partial.append(finished)
            else:
                watch.on_finished(finished)
        if left:
            raise MmmoError(f"evaluation ended without a result for trial(s) {sorted(left)}")
        todo = []


def _stage_decisions(
    history: list[Trial], partial: list[Trial], options: LoopOptions, ref: list[float] | None
) -> list[bool]:
    """Whether each partially scored trial goes on to its next stage (see search.stages)."""
    names, dim, stages = options.objective_names, options.dim, options.stages
    if not stages:
        raise MmmoError(f"trial {partial[0].id} is partly scored, but the run has no evaluation.stages")
    done = History.of(history, names, dim)
    front = done.Y_in_full
    known = options.opt.known_noise
    tasks = set(options.task_objective_names)
    scored = torch.tensor(
        [[stages[t.stages_scored - 1] if n in tasks else 1.0 for n in names] for t in partial], dtype=torch.float64
    )
    n_scored = torch.tensor([[float(t.n_examples.get(n, 0)) for n in names] for t in partial], dtype=torch.float64)
    yvar = done_variances(partial, names)
    # No stderr (a one-document stage): the largest variance a 0/1 mean on those documents can have, not zero.
    yvar = torch.where(yvar.isnan(), 0.25 / n_scored.clamp_min(1.0), yvar)
    evidence = PartialScores(
        x=torch.tensor([t.x for t in partial], dtype=torch.float64),
        y=torch.tensor([[float(t.objectives[n]) for n in names] for t in partial], dtype=torch.float64),  # type: ignore[index]
        yvar=yvar,
        scored=scored,
    )
    chances = continue_chances(
        done.X_done, done.Y_done, done.Yvar_done if known else None,
        front[pareto_mask(front)] if front.shape[0] else front,
        evidence, torch.tensor(ref, dtype=torch.float64) if ref is not None else None,
        prior_mean=options.opt.prior_mean, seed=options.opt.seed * 100003 + partial[0].id,
        min_gain=options.stage_min_gain,
        cat_dims=[options.space.method_dim] if options.space is not None and options.space.method_dim is not None else (),
    )
    return [bool(c >= options.stage_min_chance) for c in chances.tolist()]
