"""What a run has found so far, read from its journal: done and failed trials, the Pareto front, the sources,
and how many documents each candidate was scored on (no plots, no text)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch

from mmmo.optimizer.pareto import pareto_mask
from mmmo.optimizer.space import SearchSpace
from mmmo.results.take_home import TakeHomeChoice, choose_trial
from mmmo.run.documents import DocumentPlan, document_limit, shared_documents
from mmmo.run.records import ScheduleStats, Scored, SourceScore, Trial
from mmmo.run.store import RunState, RunStore
from mmmo.spec.schema import SearchSpec
from mmmo.spec.take_home import TakeHomeSpec


@dataclass
class RunSummary:
    """The done trials of a run, its Pareto front and the source models beside it."""

    objective_names: list[str]
    task_names: list[str]
    done: list[Trial]
    failed: list[Trial]
    pareto: list[Trial]
    sources: list[SourceScore]
    hypervolumes: dict[int, float]
    ref_point: list[float] | None
    budget: int
    # The task objectives grouped by the documents they score (`run.documents.shared_documents`): two metrics of
    # one task are one group, counted once and paired once.
    document_groups: list[list[str]] = field(default_factory=list)
    # Documents a candidate scored on all of them takes (from the run's document plan); None where unrecorded.
    full_documents: int | None = None
    # The spec's merge methods: one, or those a search chose among (each trial then records its own).
    methods: tuple[str, ...] = ()
    # What the merge a user takes home maximises and must meet (the spec's `take_home:`), and the unit cube's
    # categorical coordinates (a mixed run's method) for the posterior's GP.
    take_home_spec: TakeHomeSpec = field(default_factory=TakeHomeSpec)
    cat_dims: tuple[int, ...] = ()
    # How the asynchronous schedule used the evaluators, one record per session (none: the batch schedule).
    schedule: list[ScheduleStats] = field(default_factory=list)

    @property
    def is_mixed(self) -> bool:
        """True when the run chose each trial's method among two or more."""
        return len(self.methods) > 1

    def method(self, trial: Trial) -> str:
        """The method a trial merged with: its own, else the run's one method."""
        return trial.method_or(self.methods[0] if self.methods else "")

    @cached_property
    def take_home(self) -> TakeHomeChoice:
        """The merge to take home by the run's preference, among the trials scored in full (chosen once)."""
        return self.take_home_among(self.scored_in_full, cat_dims=self.cat_dims)

    def take_home_among(
        self, trials: Sequence[Trial], *, cat_dims: Sequence[int] = (), ignore_requirements: bool = False
    ) -> TakeHomeChoice:
        """The take-home choice by the run's preference among `trials` (done, scored in full)."""
        return choose_trial(
            trials, self.objective_names, self.task_names, self.sources, self.take_home_spec,
            cat_dims=cat_dims, ignore_requirements=ignore_requirements,
        )

    def rechoose(self, preference: TakeHomeSpec) -> RunSummary:
        """This summary with another take-home preference (nothing is re-run: the choice is made anew)."""
        return replace(self, take_home_spec=preference)

    def best_per_method(self) -> dict[str, Trial]:
        """Per method (in the spec's order) the take-home merge among that method's trials alone; the run's own
        take-home merge for its method. A method none of whose trials meets every requirement is left out."""
        chosen = self.take_home.trial
        out = {}
        for m in self.methods:
            if chosen is not None and self.method(chosen) == m:
                out[m] = chosen
                continue
            mine = [t for t in self.scored_in_full if self.method(t) == m]
            pick = self.take_home_among(mine).trial if mine else None
            if pick is not None:
                out[m] = pick
        return out

    def mean_task_score(self, trial: Trial) -> float:
        assert trial.objectives is not None
        return mean_task_score(trial.objectives, self.task_names)

    def source_mean_task_score(self, source: SourceScore) -> float | None:
        """A source model's mean task score; None when it failed."""
        if source.objectives is None:
            return None
        return mean_task_score(source.objectives, self.task_names)

    @property
    def sparsity_name(self) -> str | None:
        """The sparsity objective's name, if the run has one (the objective that is not a task)."""
        return next((n for n in self.objective_names if n not in self.task_names), None)

    def documents(self, candidate: Scored) -> int | None:
        """Documents a trial or source was scored on: a task shared by two objectives counts once.

        None when it recorded no counts (a failed source, or a run written before counts were kept).
        """
        return documents_scored(candidate, [group[0] for group in self.document_groups])

    @property
    def scored_in_full(self) -> list[Trial]:
        """The done trials scored on all their documents (not stopped by evaluation.stages): the ones a front,
        a "best" and an export choose from, since a partial score is a noisier one."""
        return [t for t in self.done if not t.stopped]

    def objective_matrix(self, trials: list[Trial]) -> torch.Tensor:
        """`[len(trials), n_objectives]` float64: each done trial's objectives in the run's objective order."""
        return objective_matrix(trials, self.objective_names)

    def best(self, objective: str | None = None) -> Trial | None:
        """The merge to take home (`take_home`; None when none qualifies), or with `objective` the done trial
        scored in full with the highest value of that objective.

        Ties on `objective` are broken by dominance: of the tied trials, only one that no other done trial
        dominates on all objectives can be best (the lowest id of those), so it is always on the Pareto front.
        """
        if objective is None:
            return self.take_home.trial
        candidates = self.scored_in_full
        if not candidates:
            return None

        def key(t: Trial) -> float:
            return t.objectives[objective]  # type: ignore[index]

        # Exact equality: rounding is monotone, so a trial that dominates another never averages an ulp lower.
        top = max(key(t) for t in candidates)
        tied = [t for t in candidates if key(t) == top]
        if len(tied) == 1:
            return tied[0]
        # A trial that dominates a tied one scores at least as high on the key, so it is tied too: the tied
        # trials that none of them dominates are exactly the tied trials on the whole front.
        front = [t for t, keep in zip(tied, pareto_mask(self.objective_matrix(tied)).tolist()) if keep]
        return min(front, key=lambda t: t.id)


def mean_task_score(objectives: Mapping[str, float], task_names: Sequence[str]) -> float:
    """The take-home score: the plain mean of the task objectives' values."""
    return sum(objectives[n] for n in task_names) / len(task_names)


def documents_scored(candidate: Scored, document_names: Sequence[str]) -> int | None:
    """Documents a trial or source was scored on, counting `document_names` (one per document group) only;
    None when it recorded no counts."""
    counts = [candidate.n_examples[n] for n in document_names if n in candidate.n_examples]
    return sum(counts) if counts else None


def objective_matrix(trials: list[Trial], names: list[str]) -> torch.Tensor:
    """`[len(trials), len(names)]` float64: the trials' objectives (every trial done) in `names` order."""
    return torch.tensor([[t.objectives[n] for n in names] for t in trials], dtype=torch.float64)  # type: ignore[index]


def document_groups(spec: SearchSpec, plan: DocumentPlan | None) -> list[list[str]]:
    """The task objectives grouped by the documents they score: from the run's document plan, or (a run written
    before the plan was recorded) by task and limit as the plan would choose them."""
    names = [o.name for o in spec.task_objectives]
    if plan is not None and all(n in plan for n in names):
        return shared_documents(plan, names)
    groups: dict[tuple[str | None, int | float | None], list[str]] = {}
    for o in spec.task_objectives:
        groups.setdefault((o.task, document_limit(o.limit, o.name)), []).append(o.name)
    return list(groups.values())


def _full_documents(names: list[str], state: RunState) -> int | None:
    plan = state.documents
    if plan is None or any(n not in plan for n in names):
        return None
    return sum(len(d.ids) for n in names for d in plan[n])


def summarize_run(spec: SearchSpec, state: RunState) -> RunSummary:
    """The run's done and failed trials, its Pareto front over the done ones scored in full, and its sources."""
    names = [o.name for o in spec.objectives]
    done = [t for t in state.trials if t.status == "done" and t.objectives is not None]
    full = [t for t in done if not t.stopped]
    pareto: list[Trial] = []
    if full:
        mask = pareto_mask(objective_matrix(full, names))
        pareto = [t for t, keep in zip(full, mask.tolist()) if keep]
    groups = document_groups(spec, state.documents)
    return RunSummary(
        objective_names=names,
        task_names=[o.name for o in spec.task_objectives],
        done=done,
        failed=[t for t in state.trials if t.status == "failed"],
        pareto=sorted(pareto, key=lambda t: t.id),
        sources=state.sources,
        hypervolumes=state.hypervolumes,
        ref_point=state.ref_point,
        budget=spec.optimizer.budget,
        document_groups=groups,
        full_documents=_full_documents([group[0] for group in groups], state),
        methods=spec.merge.methods,
        take_home_spec=spec.take_home,
        cat_dims=_cat_dims(spec),
        schedule=[state.schedule[k] for k in sorted(state.schedule)],
    )


def _cat_dims(spec: SearchSpec) -> tuple[int, ...]:
    """The unit cube's categorical coordinates: a mixed run's method, else none."""
    method_dim = SearchSpace.from_spec(spec).method_dim if spec.merge.is_mixed else None
    return () if method_dim is None else (method_dim,)


def load_run(run_dir: str | Path) -> tuple[SearchSpec, RunState, RunSummary]:
    """Read a run folder without touching models: its spec, journal state and summary."""
    spec, state = RunStore(Path(run_dir)).read_run()
    return spec, state, summarize_run(spec, state)
