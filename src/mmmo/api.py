"""The Python API the CLI calls: `search`, `resume`, `repair`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmmo.evaluation.pool import EvaluatorPool, make_pool
from mmmo.optimizer.acquisition import budget_for
from mmmo.optimizer.async_loop import run_async_loop
from mmmo.optimizer.loop import BatchSummary, run_loop
from mmmo.optimizer.options import LoopOptions
from mmmo.optimizer.space import SearchSpace, standard_recipes
from mmmo.results.export import export_trials, select_trials
from mmmo.results.report import write_summaries
from mmmo.results.summary import RunSummary
from mmmo.results.take_home import resolve_target
from mmmo.run.documents import plan_differences, plan_to_json
from mmmo.run.lock import run_lock
from mmmo.run.records import Trial
from mmmo.run.store import (
    JOURNAL,
    EventKind,
    Journal,
    RepairReport,
    RunState,
    RunStore,
    SourceScore,
    repair_journal,
)
from mmmo.runtime.diskspace import DiskFull, disk_full_as_error
from mmmo.runtime.environment import use_project_cache
from mmmo.runtime.errors import MmmoError
from mmmo.runtime.progress import ProgressDisplay, search_progress
from mmmo.runtime.quiet import quiet_libraries
from mmmo.spec.schema import SearchSpec, load_spec
from mmmo.spec.validate import check_memory


@dataclass
class SearchResult:
    """What a finished (or resumed-to-completion) search left behind."""

    run_dir: Path
    spec: SearchSpec
    trials: list[Trial]
    summary: RunSummary
    exported: list[Path] = field(default_factory=list)

    @property
    def pareto(self) -> list[Trial]:
        return self.summary.pareto

    @property
    def sources(self) -> list[SourceScore]:
        return self.summary.sources


def _spec_to_run(
    spec_or_path: SearchSpec | str | Path, workers: int | None, device: str | None
) -> SearchSpec:
    """The spec this search runs: a copy (the caller's spec is never changed) with the overrides applied."""
    spec = spec_or_path.model_copy(deep=True) if isinstance(spec_or_path, SearchSpec) else load_spec(spec_or_path)
    if workers is not None:
        spec.evaluation.workers = workers
    if device is not None:
        spec.evaluation.device = device
    return spec


def _is_complete(spec: SearchSpec, state: RunState) -> bool:
    finished = [t for t in state.trials if t.status in ("done", "failed")]
    pending = [t for t in state.trials if t.status in ("proposed", "partial")]
    last_batch_done = spec.optimizer.batches in state.hypervolumes or spec.optimizer.batches == 0
    return not pending and len(finished) >= spec.optimizer.budget and last_batch_done


class SearchRecorder:
    """Journals what the search does, before anything else sees it, and shows it on the progress display.

    A `LoopObserver` for the loop; `on_attempt_failed` is the Ray pool's hook for a worker that died under a trial.
    """

    def __init__(self, journal: Journal, progress: ProgressDisplay):
        self.journal = journal
        self.progress = progress

    def on_proposed(self, trials: list[Trial]) -> None:
        for t in trials:
            self.journal.record_trial(t)

    def on_finished(self, trial: Trial) -> None:
        self.journal.record_trial(trial)
        self.progress.finished(trial)

    def on_partial(self, trial: Trial) -> None:
        self.journal.record_trial(trial)

    def on_ref_point(self, ref_point: list[float]) -> None:
        self.journal.append(EventKind.REF_POINT, ref_point=list(ref_point))

    def on_batch_end(self, summary: BatchSummary) -> None:
        timing = {} if summary.propose_seconds is None else {"propose_seconds": round(summary.propose_seconds, 3)}
        if summary.schedule is not None:  # the asynchronous schedule's use of its evaluators, so far in this session
            timing["schedule"] = summary.schedule.to_json()
        self.journal.append(EventKind.BATCH_END, batch=summary.batch, hypervolume=summary.hypervolume, **timing)
        self.progress.batch_end(summary)

    def on_attempt_failed(self, trial: Trial) -> None:
        # Journaled as a failed attempt before the candidate is retried elsewhere; the trial itself stays pending
        # in the journal, so a resume after a kill retries it too.
        self.journal.append(EventKind.ATTEMPT_FAILED, trial=trial.to_json())


def search(
    spec_or_path: SearchSpec | str | Path,
    *,
    fresh: bool = False,
    workers: int | None = None,
    device: str | None = None,
    show_progress: bool = True,
    library_output: bool = True,
) -> SearchResult:
    """Run (or continue) the search a spec describes; returns the run's trials and Pareto front.

    `library_output=False` hides the libraries' progress bars (transformers, datasets, lm-eval) for the
    call's duration, as the CLI does; by default the caller's process is left as it is.
    """
    if not library_output:
        with quiet_libraries():
            return search(
                spec_or_path, fresh=fresh, workers=workers, device=device, show_progress=show_progress
            )
    spec = _spec_to_run(spec_or_path, workers, device)
    store = RunStore(spec.run_dir)
    use_project_cache(Path.cwd())
    full = (
        f"every finished evaluation is saved in {JOURNAL}: free some space, then continue with: "
        f"mmmo resume {store.dir}"
    )
    # One writer per run folder and one lock, from before --fresh moves the old run aside (the lock file stays in
    # the folder) to the last exported merge: no other process can take the folder in between.
    with run_lock(store.dir, "mmmo search --fresh" if fresh else "mmmo search"):
        if fresh and store.exists:
            store.move_aside()
        with disk_full_as_error(store.dir, full):
            return _search_locked(spec, store, show_progress)


def _search_locked(spec: SearchSpec, store: RunStore, show_progress: bool) -> SearchResult:
    journal = store.open(spec)
    state = store.load()
    exported: list[Path] = []
    if _is_complete(spec, state):
        summary = write_summaries(store.dir, spec, state)
        return SearchResult(store.dir, spec, state.trials, summary, _existing_exports(store.dir))

    space = SearchSpace.from_spec(spec)
    progress = search_progress(spec, enabled=show_progress)
    recorder = SearchRecorder(journal, progress)
    # From the tensor headers, before any weight is loaded: a run that cannot fit anywhere stops here.
    progress.note(check_memory(spec))
    pool = make_pool(spec, on_attempt_failed=recorder.on_attempt_failed)
    try:
        _record_documents(pool, journal, state, store)
        with progress:
            _score_sources(spec, pool, recorder, state)
            _run(spec, space, pool, recorder, state)
        state = store.load()
        summary = write_summaries(store.dir, spec, state)
        # None: nothing scored in full, or no merge meets every take_home requirement (report.md says so).
        if spec.output.export != "none" and summary.best() is not None:
            chosen = select_trials(summary, pareto=spec.output.export == "pareto", limit=spec.output.export_limit)
            merger = pool.local_merger()
            if merger is None:  # Ray actors hold the sources (with one GPU, on it): free them before the export
                pool.close()  # loads its own
            try:
                exported = export_trials(spec, chosen, store.dir / "models", merger)
            except DiskFull as err:
                raise DiskFull(
                    f"{err} (the search itself is complete and saved; export later with: mmmo export {store.dir} "
                    "--out DIR)"
                ) from err
    finally:
        pool.close()
    return SearchResult(store.dir, spec, state.trials, summary, exported)


def _record_documents(pool: EvaluatorPool, journal: Journal, state: RunState, store: RunStore) -> None:
    """Journal the documents candidates are scored on, once; a resume must find the same ones."""
    plan = pool.documents()
    if state.documents is None:
        journal.append(EventKind.DOCUMENTS, documents=plan_to_json(plan))
        state.documents = plan
        return
    changed = plan_differences(state.documents, plan)
    if changed:
        raise MmmoError(
            f"{store.dir}: the run's documents changed since it started ({'; '.join(changed)}); its trials cannot be "
            "compared with new scores: restore the task data, or start over with --fresh"
        )


def _score_sources(spec: SearchSpec, pool: EvaluatorPool, recorder: SearchRecorder, state: RunState) -> None:
    if not spec.evaluation.evaluate_sources:
        return
    have = {s.name for s in state.sources}
    wanted: list[int | None] = [None, *range(len(spec.models))]
    names = ["base", *spec.model_names]
    todo = [i for i, n in zip(wanted, names) if n not in have]
    if not todo:
        return
    recorder.progress.note(f"scoring {len(todo)} source model(s) on the objectives")
    for score in pool.evaluate_sources(todo):
        recorder.journal.append(EventKind.SOURCE, source=score.to_json())
        state.sources.append(score)
        recorder.progress.source(score)


def _run(
    spec: SearchSpec, space: SearchSpace, pool: EvaluatorPool, recorder: SearchRecorder, state: RunState
) -> None:
    options = LoopOptions(
        opt=spec.optimizer,
        dim=space.dim,
        objective_names=[o.name for o in spec.objectives],
        task_objective_names=[o.name for o in spec.task_objectives],
        ref_point=spec.optimizer.ref_point or state.ref_point,
        budget=budget_for(len(spec.objectives)),
        ended_batches=set(state.hypervolumes),
        initial_points=standard_recipes(space) if spec.optimizer.standard_recipes else None,
        to_params=space.named,
        space=space,
        stages=spec.evaluation.stages,
        stage_min_chance=spec.evaluation.stage_min_chance,
        stage_min_gain=spec.evaluation.stage_min_gain,
        stage_take_home=spec.evaluation.stage_take_home,
        parallel=spec.evaluation.workers,
        target=resolve_target(  # after _score_sources: a relative requirement reads its source's score
            spec.take_home, [o.name for o in spec.objectives], [o.name for o in spec.task_objectives], state.sources
        )[0],
        take_home_rule=spec.take_home.choose,
    )

    recorder.progress.resume_from(state.trials)
    if spec.schedule == "async":
        run_async_loop(state.trials, options, ShownWorkers(pool, recorder.progress), recorder)
        return

    def evaluate(trials: list[Trial]) -> Iterable[Trial]:
        for t in trials:
            recorder.progress.started(t)
        return pool.evaluate(trials)

    run_loop(state.trials, options, evaluate, recorder)


class ShownWorkers:
    """A pool's evaluators as the asynchronous schedule's `TrialWorkers`, each start shown on the progress display."""

    def __init__(self, pool: EvaluatorPool, progress: ProgressDisplay):
        self.pool, self.progress = pool, progress

    @property
    def slots(self) -> int:
        return self.pool.slots

    def start(self, trial: Trial) -> None:
        self.progress.started(trial)
        self.pool.start(trial)

    def next_finished(self, wait: bool) -> Trial | None:
        return self.pool.next_finished(wait)


def _existing_exports(run_dir: Path) -> list[Path]:
    models = run_dir / "models"
    return sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) if models.is_dir() else []


def resume(run_dir: str | Path, *, repair: bool = False, **kwargs: Any) -> SearchResult:
    """Continue a run from the spec stored in its folder, wherever the folder now is (moved or copied).

    `repair=True` first moves unreadable journal lines aside (see `repair`); their trials are evaluated again.
    """
    spec = RunStore(Path(run_dir)).stored_spec()  # before locking: the lock would create a missing folder
    spec.output.dir = str(Path(run_dir).resolve())
    with run_lock(spec.run_dir, "mmmo resume"):
        if repair:
            repair_journal(RunStore(spec.run_dir).journal_path)
        return search(spec, **kwargs)


def repair(run_dir: str | Path) -> RepairReport:
    """Move the journal's unreadable lines to a side file in the run folder, under the run's lock.

    The trials whose events were on those lines are pending (or unknown) afterwards: a resume evaluates them again.
    """
    store = RunStore(Path(run_dir))
    store.stored_spec()  # refuse a folder that is not a run before touching anything
    with run_lock(store.dir, "mmmo resume --repair"), disk_full_as_error(store.dir, "the journal is unchanged"):
        return repair_journal(store.journal_path)
