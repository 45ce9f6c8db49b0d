"""The optimisation loop, independent of how trials are stored or evaluated, and resumable from any history.

Its seams: `LoopOptions` (`optimizer.options`: what to optimise and how hard, validated once), the `evaluate` function (trials in,
finished trials out) and a `LoopObserver` that hears of each step (to journal it, show progress, time it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from mmmo.optimizer.history import History, done_arrays, done_variances
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.pareto import hypervolume, infer_ref_point, pareto_mask
from mmmo.optimizer.stages import PartialScores, continue_chances, take_home_stake
from mmmo.optimizer.strategies import Proposal, propose_batch, propose_next
from mmmo.run.records import ScheduleStats, Trial
from mmmo.runtime.errors import MmmoError

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
    schedule: ScheduleStats | None = None  # the asynchronous schedule's use of its workers so far in this call


@dataclass
class LoopResult:
    trials: list[Trial]
    hypervolumes: list[float]  # one per batch, 0 = initial design
    ref_point: list[float] | None
    pareto_ids: list[int] = field(default_factory=list)


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


def check_finished(t: Trial, pending: set[int], objective_names: Sequence[str]) -> None:
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
    history = sorted(trials, key=lambda t: t.id)
    ref = list(options.ref_point) if options.ref_point is not None else None
    hypervolumes: list[float] = []

    for b in range(opt.batches + 1):
        batch_trials = [t for t in history if t.batch == b]
        worked = False
        propose_seconds = None
        size = opt.initial if b == 0 else opt.batch_size
        if len(batch_trials) < size:  # none yet; or a kill cut its journaling short, or an async run left it part-full
            started = time.perf_counter()
            new = _propose(history, b, options, ref, have=batch_trials)
            propose_seconds = time.perf_counter() - started
            history.extend(new)
            batch_trials = batch_trials + new
            watch.on_proposed(list(new))
            worked = True

        pending = [t for t in batch_trials if t.status in ("proposed", "partial")]
        if pending:
            worked = True
            _evaluate_pending(history, pending, evaluate, options, watch, ref)

        ref = ref_point_after(history, b, options, ref, watch)
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
    history: list[Trial], batch: int, options: LoopOptions, ref: list[float] | None, have: Sequence[Trial] = ()
) -> list[Trial]:
    """Batch `batch`'s new trials, numbered after the history's last id; with `have` (the batch's trials already
    proposed) only the rest of it: the initial design's missing points; a batch whose journaling a kill cut short,
    as it was proposed; else (an asynchronous run left it part-full) its missing slots, each proposed with the
    batch's unfinished trials pending."""
    names, dim = options.objective_names, options.dim
    next_id = max((t.id for t in history), default=-1) + 1
    if not have or batch == 0:
        proposals = propose_batch(options, History.of(history, names, dim), batch_index=batch, ref_point=ref)
        missing = (options.opt.initial if batch == 0 else options.opt.batch_size) - len(have)
        return [trial_of(p, next_id + i, batch, options) for i, p in enumerate(proposals[:missing])]
    if all(t.status == "proposed" for t in have):  # a kill while journaling the batch: propose it again, as it was
        before = [t for t in history if t.id not in {h.id for h in have}]
        again = propose_batch(options, History.of(before, names, dim), batch_index=batch, ref_point=ref)
        if [p.x for p in again[: len(have)]] == [t.x for t in have]:
            return [trial_of(p, next_id + i, batch, options) for i, p in enumerate(again[len(have):])]
    new: list[Trial] = []
    for slot in range(len(have), options.opt.batch_size):
        known = [*history, *new]
        pending = torch.tensor([t.x for t in known if t.status in ("proposed", "partial")], dtype=torch.float64)
        p = propose_next(options, History.of(known, names, dim), batch_index=batch, slot=slot,
                         X_pending=pending.reshape(-1, dim), ref_point=ref)
        new.append(trial_of(p, next_id + len(new), batch, options))
    return new


def trial_of(p: Proposal, trial_id: int, batch: int, options: LoopOptions) -> Trial:
    """The new trial for proposal `p`: its point, step and prior, its merge parameters named in real units."""
    mixed = options.space if options.space is not None and options.space.is_mixed else None
    return Trial(
        id=trial_id,
        batch=batch,
        x=[float(v) for v in p.x],
        step=p.step,
        prior=p.prior,
        params=options.to_params(p.x) if options.to_params is not None else {},
        method=mixed.method_of(p.x) if mixed is not None else None,
    )


def ref_point_after(
    history: list[Trial], batch: int, options: LoopOptions, ref: list[float] | None, watch: LoopObserver
) -> list[float] | None:
    """`ref`; while it is None, the point inferred from the trials of batches up to `batch` scored in full, told to
    `watch` once (None while no such trial is done)."""
    if ref is not None:
        return ref
    names, dim = options.objective_names, options.dim
    _, Y_first, _ = done_arrays([t for t in history if t.batch <= batch], names, dim, scored_in_full=True)
    if not Y_first.shape[0]:
        return None
    inferred = infer_ref_point(Y_first).tolist()
    watch.on_ref_point(list(inferred))
    return inferred


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
            go_on = stage_decisions(history, partial, options, ref)
            for t, keep in zip(partial, go_on):
                if not keep:
                    stopped = replace(t, status="done", stopped=True)
                    history[position[t.id]] = stopped
                    watch.on_finished(stopped)
            todo += [t for t, keep in zip(partial, go_on) if keep]
            partial = []
        left = {t.id for t in todo}
        for finished in evaluate(todo):
            check_finished(finished, left, names)
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


def stage_decisions(
    history: list[Trial], partial: list[Trial], options: LoopOptions, ref: list[float] | None
) -> list[bool]:
    """Whether each partially scored trial goes on to its next stage (see optimizer.stages)."""
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
    cat_dims = [options.space.method_dim] if options.space is not None and options.space.method_dim is not None else []
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
        cat_dims=cat_dims,
        batches=None if done.done_batches is None else [*done.done_batches, *(t.batch for t in partial)],
        stake=take_home_stake(done, options.resolved_target, cat_dims, options.take_home_rule)
        if options.stage_take_home else None,
    )
    return [bool(c >= options.stage_min_chance) for c in chances.tolist()]
