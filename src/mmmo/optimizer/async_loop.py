"""The asynchronous schedule: a freed evaluator gets the next candidate at once, proposed with every running one
pending, and the optimiser proposes while the evaluators score.

Batches stay as groups of `batch_size` proposals (the journal's `batch` of each trial, its `batch_end` events, the
report's hypervolume curve), but no batch waits for another: slot `s` of batch `b` is proposed as soon as an
evaluator is free or about to be, from every result in by then, with the trials still being scored (or waiting to
be) as BoTorch's pending points. Up to one proposal per evaluator is kept ready, so a freed one never waits for a
GP fit.
Like `optimizer.loop`, it knows nothing of files or models: its seams are `TrialWorkers` and a `LoopObserver`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import torch

from mmmo.optimizer.history import History
from mmmo.optimizer.loop import (
    LoopObserver,
    LoopResult,
    NullObserver,
    check_finished,
    ref_point_after,
    stage_decisions,
    summarize_batch,
    trial_of,
)
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.strategies import propose_batch, propose_next
from mmmo.run.records import ScheduleStats, Trial
from mmmo.runtime.errors import MmmoError


@runtime_checkable
class TrialWorkers(Protocol):
    """Evaluators that score trials concurrently, each started alone (evaluation.pool's pools are these)."""

    @property
    def slots(self) -> int:
        """How many trials can be scored at once."""
        ...

    def start(self, trial: Trial) -> None:
        """Begin scoring `trial` (proposed, or partial: its next stage) as soon as an evaluator is free."""
        ...

    def next_finished(self, wait: bool) -> Trial | None:
        """A started trial that came back (done, partial or failed); None when none has yet and `wait` is False."""
        ...


def run_async_loop(
    trials: Sequence[Trial], options: LoopOptions, workers: TrialWorkers, observer: LoopObserver | None = None
) -> LoopResult:
    """Run (or resume) a search of `opt.initial + opt.batches * opt.batch_size` trials on `workers`, asynchronously.

    The initial design is proposed whole, as by `run_loop`; every later trial alone (`strategies.propose_next`),
    while fewer proposals wait unstarted than there are evaluators, with every trial running or waiting pending.
    Trials of the history still proposed or partial (a resume) are scored first. Each trial is journaled through
    `observer.on_proposed` before it starts; a batch's end is announced once all its trials are back, in batch order,
    with the schedule's statistics so far; the reference point is inferred once the initial design is back.
    """
    return _AsyncRun(trials, options, workers, observer or NullObserver()).run()


class _AsyncRun:
    """One call of `run_async_loop`: the history, the trials ready and running, and what is announced."""

    def __init__(self, trials: Sequence[Trial], options: LoopOptions, workers: TrialWorkers, watch: LoopObserver):
        self.options, self.workers, self.watch = options, workers, watch
        self.history = sorted(trials, key=lambda t: t.id)
        self.ref = list(options.ref_point) if options.ref_point is not None else None
        self.ready: deque[Trial] = deque(t for t in self.history if t.status == "proposed")
        self.running: dict[int, Trial] = {}
        self.touched: set[int] = {t.batch for t in self.history if t.status in ("proposed", "partial")}
        self.propose_seconds: dict[int, float] = {}
        self.hypervolumes: dict[int, float] = {}
        self.next_end = 0
        self.stats = ScheduleStats(workers=workers.slots, session=time.time())
        self.started = time.perf_counter()

    def run(self) -> LoopResult:
        opt = self.options.opt
        if sum(t.batch == 0 for t in self.history) < opt.initial:  # none yet, or a kill cut its journaling short
            self._propose_initial()
        partial = [t for t in self.history if t.status == "partial"]
        if partial:
            self._decide(partial)
        self._end_batches()  # a resume: the reference point of a complete initial design before any proposal
        while True:
            self._start_ready()
            if self.running:
                back = self.workers.next_finished(wait=False)
                if back is not None:
                    self._finished(back)
                    continue
            slot = self._next_slot()
            # the initial design all started first: a proposal needs its results more than a head start
            if slot is not None and len(self.ready) < self.workers.slots and all(t.batch for t in self.ready):
                try:
                    self._propose_one(*slot)
                except Exception:
                    self._drain()  # the evaluations under way are kept (journaled) before the error stops the run
                    raise
                continue
            if self.running:
                back = self.workers.next_finished(wait=True)
                if back is None:
                    raise MmmoError(f"the evaluators returned nothing for trial(s) {sorted(self.running)}")
                self._finished(back)
                continue
            if self.ready or slot is not None:  # e.g. the last Ray actor died: the budget is not spent
                raise MmmoError("no evaluator is left to score the pending trials; resume to continue")
            break
        self._end_batches()
        last = max([opt.batches] + [t.batch for t in self.history])
        final = summarize_batch(self.history, last, self.options.objective_names, self.options.dim, self.ref)
        return LoopResult(
            trials=self.history,
            hypervolumes=[self.hypervolumes[b] for b in sorted(self.hypervolumes)],
            ref_point=self.ref,
            pareto_ids=final.pareto_ids,
        )

    def _batch_size(self, batch: int) -> int:
        return self.options.opt.initial if batch == 0 else self.options.opt.batch_size

    def _next_slot(self) -> tuple[int, int] | None:
        """(batch, slot) of the next trial to propose; None when every batch is full."""
        counts: dict[int, int] = {}
        for t in self.history:
            counts[t.batch] = counts.get(t.batch, 0) + 1
        for b in range(1, self.options.opt.batches + 1):
            if counts.get(b, 0) < self._batch_size(b):
                return b, counts.get(b, 0)
        return None

    def _add(self, new: list[Trial], batch: int, seconds: float) -> None:
        self.history.extend(new)
        self.touched.add(batch)
        self.propose_seconds[batch] = self.propose_seconds.get(batch, 0.0) + seconds
        self.stats.propose_seconds += seconds
        self.watch.on_proposed(list(new))
        self.ready.extend(new)

    def _propose_initial(self) -> None:
        """The initial design, or the part of it missing (its points already in the history are not proposed)."""
        began = time.perf_counter()
        names, dim = self.options.objective_names, self.options.dim
        missing = self.options.opt.initial - sum(t.batch == 0 for t in self.history)
        proposals = propose_batch(self.options, History.of(self.history, names, dim), batch_index=0, ref_point=self.ref)
        first = max((t.id for t in self.history), default=-1) + 1
        new = [trial_of(p, first + i, 0, self.options) for i, p in enumerate(proposals[:missing])]
        self._add(new, 0, time.perf_counter() - began)

    def _drain(self) -> None:
        """Wait for every running trial and journal it (partial ones as partial), starting nothing new."""
        while self.running:
            back = self.workers.next_finished(wait=True)
            if back is None:
                return
            check_finished(back, set(self.running), self.options.objective_names)
            del self.running[back.id]
            self._replace(back)
            (self.watch.on_partial if back.status == "partial" else self.watch.on_finished)(back)

    def _propose_one(self, batch: int, slot: int) -> None:
        began = time.perf_counter()
        names, dim = self.options.objective_names, self.options.dim
        in_flight = [*self.running.values(), *self.ready]  # scored or about to be: both pending
        pending = torch.tensor([t.x for t in in_flight], dtype=torch.float64).reshape(-1, dim)
        p = propose_next(
            self.options, History.of(self.history, names, dim), batch_index=batch, slot=slot, X_pending=pending,
            ref_point=self.ref,
        )
        trial = trial_of(p, max(t.id for t in self.history) + 1, batch, self.options)
        self.stats.proposals += 1
        self._add([trial], batch, time.perf_counter() - began)

    def _start_ready(self) -> None:
        while self.ready and len(self.running) < self.workers.slots:
            t = self.ready.popleft()
            self.running[t.id] = t
            self.workers.start(t)

    def _replace(self, t: Trial) -> None:
        self.history = [t if h.id == t.id else h for h in self.history]

    def _finished(self, t: Trial) -> None:
        check_finished(t, set(self.running), self.options.objective_names)
        before = self.running.pop(t.id)
        self._replace(t)
        self.touched.add(t.batch)
        # A trial's times add up over its stages: this return's share is what they grew by.
        self.stats.busy_seconds += sum(
            max(0.0, (new or 0.0) - (old or 0.0))
            for new, old in ((t.merge_seconds, before.merge_seconds), (t.eval_seconds, before.eval_seconds))
        )
        if t.status == "partial":
            self.watch.on_partial(t)
            self._decide([t])
        else:
            self.watch.on_finished(t)
        self._end_batches()

    def _decide(self, partial: list[Trial]) -> None:
        """Send partly scored trials on to their next stage (first in line), or finish them as they are."""
        go_on = stage_decisions(self.history, partial, self.options, self.ref)
        for t, keep in zip(partial, go_on):
            if keep:
                self.ready.appendleft(t)
            else:
                stopped = replace(t, status="done", stopped=True)
                self._replace(stopped)
                self.watch.on_finished(stopped)

    def _end_batches(self) -> None:
        """Announce, in order, every batch whose trials are all back (see `run_loop` for which are announced)."""
        opt, names, dim = self.options.opt, self.options.objective_names, self.options.dim
        ended = self.options.ended_batches
        while self.next_end <= opt.batches:
            b = self.next_end
            own = [t for t in self.history if t.batch == b]
            if len(own) < self._batch_size(b) or any(t.status in ("proposed", "partial") for t in own):
                return
            self.ref = ref_point_after(self.history, b, self.options, self.ref, self.watch)
            summary = summarize_batch(self.history, b, names, dim, self.ref)
            summary.propose_seconds = self.propose_seconds.get(b)
            self.stats.wall_seconds = time.perf_counter() - self.started
            summary.schedule = replace(self.stats)
            self.hypervolumes[b] = summary.hypervolume
            if b in self.touched or (ended is not None and b not in ended):
                self.watch.on_batch_end(summary)
            self.next_end += 1
