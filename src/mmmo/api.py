"""The Python API the CLI calls: `search`, `resume`, `show`, `export`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmmo.config import SearchSpec, load_spec
from mmmo.diskspace import DiskFull, disk_full_as_error
from mmmo.errors import MmmoError
from mmmo.progress import SearchProgress
from mmmo.report import RunSummary, write_summaries
from mmmo.run_lock import run_lock
from mmmo.run_store import (
    JOURNAL,
    EventKind,
    Journal,
    RepairReport,
    RunState,
    RunStore,
    SourceScore,
    repair_journal,
)
from mmmo.search.space import SearchSpace
from mmmo.trial import Trial


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


def use_project_cache(root: Path) -> None:
    """Keep Hugging Face / datasets caches in a project folder and never reach for the hub unless asked."""
    from mmmo.demo import use_project_cache as point_hf_home

    point_hf_home(root / ".cache")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _as_spec(spec_or_path: SearchSpec | str | Path) -> SearchSpec:
    return spec_or_path if isinstance(spec_or_path, SearchSpec) else load_spec(spec_or_path)


def _is_complete(spec: SearchSpec, state: RunState) -> bool:
    finished = [t for t in state.trials if t.status in ("done", "failed")]
    pending = [t for t in state.trials if t.status == "proposed"]
    last_batch_done = spec.optimizer.batches in state.hypervolumes or spec.optimizer.batches == 0
    return not pending and len(finished) >= spec.optimizer.budget and last_batch_done


def make_pool(spec: SearchSpec, journal: Journal | None = None) -> Any:
    """One evaluator in this process, or a Ray pool when `evaluation.workers` > 1."""
    if spec.evaluation.workers > 1:
        from mmmo.parallel import RayPool

        # A worker death is journaled as a failed attempt before the candidate is retried elsewhere; the
        # trial itself stays pending in the journal, so a resume after a kill retries it too.
        def on_attempt_failed(trial: Trial) -> None:
            if journal is not None:
                journal.append(EventKind.ATTEMPT_FAILED, trial=trial.to_json())

        return RayPool(spec, on_attempt_failed=on_attempt_failed)
    from mmmo.evaluate import CandidateEvaluator

    return LocalPool(CandidateEvaluator(spec))


class LocalPool:
    """Evaluate candidates one after the other with a single resident evaluator."""

    def __init__(self, evaluator: Any):
        self.evaluator = evaluator

    def evaluate(self, trials: list[Trial]) -> Iterator[Trial]:
        for t in trials:
            yield self.evaluator.evaluate(t)

    def evaluate_sources(self, indices: Iterable[int | None]) -> list[SourceScore]:
        return [self.evaluator.evaluate_source(i) for i in indices]

    def merger(self) -> Any:
        return self.evaluator.merger

    def close(self) -> None:
        pass


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
        from mmmo.quiet import quiet_libraries

        with quiet_libraries():
            return search(
                spec_or_path, fresh=fresh, workers=workers, device=device, show_progress=show_progress
            )
    spec = _as_spec(spec_or_path)
    if workers is not None:
        spec.evaluation.workers = workers
    if device is not None:
        spec.evaluation.device = device
    store = RunStore(spec.run_dir)
    use_project_cache(Path.cwd())
    if fresh and store.exists:
        with run_lock(store.dir, "mmmo search --fresh"):  # nobody may be writing the folder that is moved aside
            store.move_aside()
    full = (
        f"every finished evaluation is saved in {JOURNAL}: free some space, then continue with: "
        f"mmmo resume {store.dir}"
    )
    # One writer per run folder, from reading the journal to the last exported merge.
    with run_lock(store.dir, "mmmo search"), disk_full_as_error(store.dir, full):
        return _search_locked(spec, store, show_progress)


def _search_locked(spec: SearchSpec, store: RunStore, show_progress: bool) -> SearchResult:
    journal = store.open(spec)
    state = store.load()
    exported: list[Path] = []
    if _is_complete(spec, state):
        summary = write_summaries(store.dir, spec, state)
        return SearchResult(store.dir, spec, state.trials, summary, _existing_exports(store.dir))

    space = SearchSpace.from_spec(spec)
    progress = SearchProgress(spec, enabled=show_progress)
    pool = make_pool(spec, journal)
    try:
        with progress:
            _score_sources(spec, pool, journal, state, progress)
            _run(spec, space, pool, journal, state, progress)
        state = store.load()
        summary = write_summaries(store.dir, spec, state)
        if spec.output.export != "none" and summary.done:
            from mmmo.export import export_trials, select_trials

            chosen = select_trials(summary, pareto=spec.output.export == "pareto", limit=spec.output.export_limit)
            try:
                exported = export_trials(spec, chosen, store.dir / "models", pool.merger())
            except DiskFull as err:
                raise DiskFull(
                    f"{err} (the search itself is complete and saved; export later with: mmmo export {store.dir} "
                    "--out DIR)"
                ) from err
    finally:
        pool.close()
    return SearchResult(store.dir, spec, state.trials, summary, exported)


def _score_sources(
    spec: SearchSpec, pool: Any, journal: Journal, state: RunState, progress: SearchProgress
) -> None:
    if not spec.evaluation.evaluate_sources:
        return
    have = {s.name for s in state.sources}
    wanted: list[int | None] = [None, *range(len(spec.models))]
    names = ["base", *spec.model_names]
    todo = [i for i, n in zip(wanted, names) if n not in have]
    if not todo:
        return
    progress.note(f"scoring {len(todo)} source model(s) on the objectives")
    for score in pool.evaluate_sources(todo):
        journal.append(EventKind.SOURCE, source=score.__dict__)
        state.sources.append(score)
        progress.source(score)


def _run(
    spec: SearchSpec, space: SearchSpace, pool: Any, journal: Journal, state: RunState, progress: SearchProgress
) -> None:
    from mmmo.search.loop import run_loop
    from mmmo.search.space import standard_recipes
    from mmmo.search.strategies import budget_for

    def to_params(x: list[float]) -> dict[str, float]:
        return space.named(torch.tensor(x, dtype=torch.float64))

    def on_proposed(trials: list[Trial]) -> None:
        for t in trials:
            if not t.params:
                t.params = to_params(t.x)
            journal.record_trial(t)

    def on_finished(trial: Trial) -> None:
        journal.record_trial(trial)
        progress.finished(trial)

    def on_batch_end(summary: Any) -> None:
        timing = {} if summary.propose_seconds is None else {"propose_seconds": round(summary.propose_seconds, 3)}
        journal.append(EventKind.BATCH_END, batch=summary.batch, hypervolume=summary.hypervolume, **timing)
        progress.batch_end(summary)

    def on_ref_point(ref: list[float]) -> None:
        journal.append(EventKind.REF_POINT, ref_point=list(ref))

    def evaluate(trials: list[Trial]) -> Iterable[Trial]:
        for t in trials:
            progress.started(t)
        return pool.evaluate(trials)

    progress.resume_from(state.trials)
    run_loop(
        state.trials,
        dim=space.dim,
        objective_names=[o.name for o in spec.objectives],
        task_objective_names=[o.name for o in spec.task_objectives],
        opt=spec.optimizer,
        evaluate=evaluate,
        on_proposed=on_proposed,
        on_finished=on_finished,
        on_batch_end=on_batch_end,
        ref_point=spec.optimizer.ref_point or state.ref_point,
        on_ref_point=on_ref_point,
        to_params=to_params,
        budget=budget_for(len(spec.objectives)),
        ended_batches=set(state.hypervolumes),
        initial_points=standard_recipes(space) if spec.optimizer.standard_recipes else None,
    )


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


def load_run(run_dir: str | Path) -> tuple[SearchSpec, RunState, RunSummary]:
    """Read a run folder without touching models: its spec, journal state and summary."""
    from mmmo.report import summarize

    store = RunStore(Path(run_dir))
    spec = store.stored_spec()
    if not store.journal_path.exists():
        raise MmmoError(f"{run_dir}: no trials.jsonl; nothing has run yet")
    state = store.load()
    return spec, state, summarize(spec, state)
