"""Progress as plain, time-stamped lines on stderr, for a log file or a pipe (where a live bar draws nothing).

One line per finished trial and one per batch end, each written and flushed as it happens, so that a user
tailing a batch job's log can tell a working search from a hung one. No colours, no cursor codes, no wrapping.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from mmmo.results.summary import document_groups, documents_scored, mean_task_score
from mmmo.run.records import SourceScore, Trial
from mmmo.spec.schema import SearchSpec

if TYPE_CHECKING:
    from mmmo.optimizer.loop import BatchSummary

Clock = Callable[[], float]  # seconds since the epoch, as time.time


def log_line(text: str, *, stream: TextIO | None = None, clock: Clock = time.time) -> None:
    """Write `[HH:MM:SS] text` as one line (local time) and flush it: stderr unless `stream` is given."""
    out = stream if stream is not None else sys.stderr
    out.write(f"[{time.strftime('%H:%M:%S', time.localtime(clock()))}] {text}\n")
    out.flush()


def duration(seconds: float) -> str:
    """`45s`, `2m05s`, `1h02m03s`: whole seconds, rounded."""
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def trial_seconds(trial: Trial) -> float | None:
    """Seconds a trial took to merge and score, over all its stages; None when unrecorded."""
    if trial.merge_seconds is None and trial.eval_seconds is None:
        return None
    return (trial.merge_seconds or 0.0) + (trial.eval_seconds or 0.0)


def seconds_left(per_trial: float | None, remaining: int) -> float | None:
    """Seconds left for `remaining` trials at `per_trial` seconds each; None when nothing is known yet."""
    if remaining <= 0:
        return 0.0
    return None if per_trial is None else per_trial * remaining


class LogProgress:
    """The search's progress as plain lines: the same interface as `progress.SearchProgress`.

    Time left is the wall-clock time per trial of the batch that just ended (its proposal, stages and parallel
    workers included: the optimiser's step grows with the front, so the latest batch predicts the next best),
    or of the whole session before a batch has ended, times the trials left in the budget.
    """

    def __init__(self, spec: SearchSpec, *, stream: TextIO | None = None, clock: Clock = time.time):
        self.names = [o.name for o in spec.objectives]
        self.task_names = [o.name for o in spec.task_objectives]
        self.document_names = [group[0] for group in document_groups(spec, None)]  # the plan says the same
        self.budget = spec.optimizer.budget
        self.stream = stream  # None: sys.stderr as it is when a line is written
        self.clock = clock
        self.started_at = clock()  # "elapsed" counts from here, before the models are loaded
        self.trials_since: float | None = None  # when this session's trials began: resume_from
        self.finished_before = 0  # trials finished in earlier sessions of the run
        self.finished_now = 0
        self.last_batch: tuple[float, int] | None = None  # (when, finished_now) at the last batch end with trials
        # (trial id, mean task score) of the best trial scored in full
        self.best: tuple[int, float] | None = None

    def write(self, text: str) -> None:
        log_line(text, stream=self.stream, clock=self.clock)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _absorb(self, trial: Trial) -> None:
        if trial.status != "done" or trial.objectives is None or trial.stopped or not self.task_names:
            return
        score = mean_task_score(trial.objectives, self.task_names)
        if self.best is None or score > self.best[1]:
            self.best = (trial.id, score)

    @property
    def finished_total(self) -> int:
        return self.finished_before + self.finished_now

    def resume_from(self, trials: list[Trial]) -> None:
        for t in trials:
            self._absorb(t)
        self.finished_before = sum(t.status in ("done", "failed") for t in trials)
        self.trials_since = self.clock()
        if self.finished_before:
            self.write(f"resuming: {self.finished_before}/{self.budget} trials finished earlier")

    def note(self, text: str) -> None:
        self.write(text)

    def source(self, score: SourceScore) -> None:
        if score.objectives is None:
            self.write(f"source {score.name} failed: {score.error}")
        else:
            self.write(f"source {score.name}: {self._values(score.objectives)}")

    def started(self, trial: Trial) -> None:
        pass  # one line per finished trial is what a log needs; a start would double them

    def finished(self, trial: Trial) -> None:
        self.finished_now += 1
        self._absorb(trial)
        self.write(self.trial_line(trial))

    def batch_end(self, summary: BatchSummary) -> None:
        self.write(self.batch_line(summary))
        if self.finished_now and (self.last_batch is None or self.finished_now > self.last_batch[1]):
            self.last_batch = (self.clock(), self.finished_now)

    def _values(self, objectives: dict[str, float]) -> str:
        # + 0.0: the base model's sparsity is -0.0, which reads better as 0
        return " ".join(f"{n}={objectives[n] + 0.0:.3g}" for n in self.names if n in objectives)

    def trial_line(self, trial: Trial) -> str:
        """`trial 5 (batch 1) done: a=0.6 b=-0.0123; 30 documents; 4.2 s; 6/10 trials finished`."""
        head = f"trial {trial.id} (batch {trial.batch}{', ' + trial.method if trial.method else ''})"
        seconds = trial_seconds(trial)
        tail = [] if seconds is None else [f"{seconds:.1f} s"]
        tail.append(f"{self.finished_total}/{self.budget} trials finished")
        if trial.status == "failed":
            return f"{head} failed: {trial.error}; " + "; ".join(tail)
        state = f"stopped after stage {trial.stages_scored}" if trial.stopped else "done"
        docs = documents_scored(trial, self.document_names)
        parts = [self._values(trial.objectives or {})] + ([] if docs is None else [f"{docs} documents"])
        return f"{head} {state}: " + "; ".join(parts + tail)

    def per_trial_seconds(self) -> float | None:
        """Wall-clock seconds per trial finished since the last batch end (in this session before one);
        None before the first trial."""
        if self.last_batch is not None and self.finished_now > self.last_batch[1]:
            since, before = self.last_batch
            return (self.clock() - since) / (self.finished_now - before)
        if not self.finished_now or self.trials_since is None:
            return None
        return (self.clock() - self.trials_since) / self.finished_now

    def batch_line(self, summary: BatchSummary) -> str:
        """`batch 1 done: hypervolume 0.123; best mean task score 0.567 (trial 3); elapsed 1m05s; 6/10 trials,
        about 2m10s left`."""
        parts = [f"hypervolume {summary.hypervolume:.4g}"]
        if self.best is not None:
            parts.append(f"best mean task score {self.best[1]:.3g} (trial {self.best[0]})")
        parts.append(f"elapsed {duration(self.clock() - self.started_at)}")
        if summary.schedule is not None:  # the asynchronous schedule: how busy the evaluators have been
            parts.append(f"evaluators busy {summary.schedule.utilisation:.0%}")
        remaining = self.budget - self.finished_total
        left = seconds_left(self.per_trial_seconds(), remaining)
        count = f"{self.finished_total}/{self.budget} trials"
        if remaining > 0:
            count += ", time left unknown" if left is None else f", about {duration(left)} left"
        parts.append(count)
        return f"batch {summary.batch} done: " + "; ".join(parts)
