"""A search's progress on stderr: a rich bar on a terminal (current trial, best value per objective,
hypervolume, ETA), plain time-stamped lines elsewhere (a log file, a pipe: see `progress_lines`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mmmo.run.records import SourceScore, Trial
from mmmo.runtime.progress_lines import LogProgress
from mmmo.spec.schema import SearchSpec

if TYPE_CHECKING:
    from mmmo.optimizer.loop import BatchSummary


class ProgressDisplay(Protocol):
    """What a search tells its user, as it happens (a context manager around the evaluations)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> None: ...

    def resume_from(self, trials: list[Trial]) -> None:
        """The run's trials so far, before the loop starts (a resume's finished ones count)."""

    def note(self, text: str) -> None: ...

    def source(self, score: SourceScore) -> None: ...

    def started(self, trial: Trial) -> None: ...

    def finished(self, trial: Trial) -> None:
        """A trial is done (scored in full or stopped) or failed."""

    def batch_end(self, summary: BatchSummary) -> None: ...


def search_progress(
    spec: SearchSpec, *, enabled: bool = True, console: Console | None = None
) -> ProgressDisplay:
    """The display for a search: none when disabled (--quiet, --json), the rich bar when stderr is an
    interactive terminal, else plain lines (a log file or pipe, where a live bar shows nothing until the end)."""
    console = console if console is not None else Console(stderr=True)
    if enabled and not console.is_interactive:
        return LogProgress(spec)
    return SearchProgress(spec, enabled=enabled, console=console)


class SearchProgress:
    """The rich progress bar; every method is a no-op when disabled (--quiet, --json)."""

    def __init__(self, spec: SearchSpec, *, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.names = [o.name for o in spec.objectives]
        self.budget = spec.optimizer.budget
        self.best: dict[str, float] = {}
        self.hypervolume: float | None = None
        self.console = console if console is not None else Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self._finished = 0
        # Under the asynchronous schedule each start is a trial given to a free evaluator; under the batch schedule a
        # whole batch is announced before its trials queue for the evaluators, so only the latest is shown.
        self.workers = spec.evaluation.workers if spec.schedule == "async" else 1
        self._running: dict[int, Trial] = {}  # started and not back, by id

    def __enter__(self) -> SearchProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("search", total=self.budget, completed=self._finished, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def _stats(self) -> str:
        best = " ".join(f"{n}={self.best[n]:.3g}" for n in self.names if n in self.best)
        hv = f" HV={self.hypervolume:.4g}" if self.hypervolume is not None else ""
        return f"best: {best}{hv}" if best else hv

    def _refresh(self, description: str | None = None) -> None:
        if self._progress is None:
            return
        kwargs: dict[str, Any] = {"completed": self._finished, "stats": self._stats()}
        if description:
            kwargs["description"] = description
        self._progress.update(self._task, **kwargs)

    def _absorb(self, trial: Trial) -> None:
        if trial.status == "done" and trial.objectives and not trial.stopped:
            for n, v in trial.objectives.items():
                self.best[n] = max(v, self.best.get(n, v))

    def resume_from(self, trials: list[Trial]) -> None:
        for t in trials:
            self._absorb(t)
        self._finished = sum(t.status in ("done", "failed") for t in trials)
        self._refresh()

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]{text}[/dim]")

    def source(self, score: SourceScore) -> None:
        if not self.enabled:
            return
        if score.objectives is None:
            self.console.print(f"  source {score.name}: [red]failed[/red] {score.error}")
        else:
            vals = " ".join(f"{k}={v:.3g}" for k, v in score.objectives.items())
            self.console.print(f"  source {score.name}: {vals}")

    def started(self, trial: Trial) -> None:
        self._running.pop(trial.id, None)  # a partly scored trial started again is the latest
        self._running[trial.id] = trial
        self._refresh(self.busy_text())

    def busy_text(self) -> str:
        """What is being scored: one trial, or with several evaluators each one's trial and how many are idle."""
        if self.workers == 1:
            if not self._running:
                return "search"
            trial = list(self._running.values())[-1]
            stage = f", stage {trial.stages_scored + 1}" if trial.stages_scored else ""
            return f"trial {trial.id} (batch {trial.batch}, {trial.step}{stage})"
        idle = max(0, self.workers - len(self._running))
        return f"trials {', '.join(map(str, self._running))} running, {idle} of {self.workers} evaluators idle"

    def finished(self, trial: Trial) -> None:
        self._running.pop(trial.id, None)
        self._finished += 1
        self._absorb(trial)
        if trial.status == "failed" and self.enabled:
            self.console.print(f"  trial {trial.id} [red]failed[/red]: {trial.error}")
        self._refresh(self.busy_text() if self.workers > 1 else None)

    def batch_end(self, summary: BatchSummary) -> None:
        self.hypervolume = summary.hypervolume
        self._refresh()
