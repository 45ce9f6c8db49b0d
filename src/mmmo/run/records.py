"""The records of a scored model, one type for both kinds: `Scored` (what scoring gave), `Trial` (a candidate merge,
proposed or scored) and `SourceScore` (a source model scored for reference); each read from the journal one way.
Beside them, `ScheduleStats`: how a search used its evaluators, as its `batch_end` events carry it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

from mmmo.run.documents import EncodedOutcomes

# "partial": scored on some stages of evaluation.stages, its next stage (or stop) not yet decided.
TrialStatus = Literal["proposed", "partial", "done", "failed"]

S = TypeVar("S", bound="Scored")


@dataclass(kw_only=True)
class Scored:
    """What scoring one model on the run's objectives gave (a merge or a source model alike); keyword-only."""

    objectives: dict[str, float] | None = None  # every objective, maximised; None: not scored (yet), or failed
    metrics: dict[str, Any] = field(default_factory=dict)  # raw lm-eval metrics per task
    n_examples: dict[str, int] = field(default_factory=dict)  # documents scored per objective
    # Standard error of each objective's value (lm-eval's stderr; 0.0 for exact ones such as sparsity);
    # an objective left out has unknown noise, which the GPs then infer.
    stderr: dict[str, float] = field(default_factory=dict)
    # Per-document values of each task objective's metric, per leaf task, in the run's document order (see
    # mmmo.run.documents: encoded, "0110..." for 0/1 metrics); a prefix of that order when stages stopped it early.
    outcomes: dict[str, dict[str, EncodedOutcomes]] = field(default_factory=dict)
    error: str | None = None  # why scoring failed, in one line

    def scores(self) -> dict[str, Any]:
        """Only the fields `Scored` holds, by name: for `replace(trial, **s.scores())`, `SourceScore(name, **...)`."""
        return {f.name: getattr(self, f.name) for f in fields(Scored)}

    def to_json(self) -> dict[str, Any]:
        """Its fields as a journal line holds them: what the record is first (id, name, ...), then its scores."""
        data = asdict(self)
        scores = [f.name for f in fields(Scored)]
        return {**{k: v for k, v in data.items() if k not in scores}, **{k: data[k] for k in scores}}

    @classmethod
    def from_json(cls: type[S], data: dict[str, Any]) -> S:
        """The record a journal line holds; fields a newer mmmo added are left out (the journal's check has already
        refused a known field of the wrong type)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Trial(Scored):
    """One candidate: where it sits in the unit cube, who proposed it, and what it scored."""

    id: int
    batch: int  # 0 is the initial design
    x: list[float]  # point in the unit cube, the GP's input space
    step: str  # which strategy step proposed it: sobol, acquisition, weak_to_strong, random, nsga2, ...
    status: TrialStatus = "proposed"
    params: dict[str, float] = field(default_factory=dict)  # named merge parameters in real units
    # The merge method, in a search that chooses it (merge.method a list); None: the spec's one method, which is
    # also what a trial journaled without this field merged with.
    method: str | None = None
    # The GPs' prior mean it was proposed under (optimizer.gp.PriorChoice.describe); None: not proposed by a GP
    # (and every trial journaled before this field).
    prior: str | None = None
    stages_scored: int = 0  # how many stages of evaluation.stages it has been scored on (1 when stages are off)
    stopped: bool = False  # done on part of its documents: the stage criterion gave it no real chance
    merge_seconds: float | None = None
    eval_seconds: float | None = None
    attempts: int = 0
    worker: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        if data["method"] is None:  # a single method's journal reads as it did before methods could be listed
            del data["method"]
        if data["prior"] is None:
            del data["prior"]
        return data

    def method_or(self, default: str) -> str:
        """The method this trial merges with: its own, else the spec's single `default`."""
        return self.method if self.method is not None else default


@dataclass
class SourceScore(Scored):
    """A source model (the base or one fine-tuned model) scored on the run's objectives."""

    name: str


@dataclass
class ScheduleStats:
    """How one loop call used its evaluators, in seconds: its wall time, the evaluators' busy time (merging and
    scoring, summed over them) and the optimiser's time proposing."""

    workers: int
    wall_seconds: float = 0.0
    busy_seconds: float = 0.0
    propose_seconds: float = 0.0
    proposals: int = 0  # trials proposed one by one (the initial design, proposed whole, is not counted)
    session: float = 0.0  # when the loop call began, in epoch seconds: a run's search and each resume are apart

    @property
    def utilisation(self) -> float:
        """The share of the evaluators' time spent merging or scoring (0..1; 0 before any time passed)."""
        capacity = self.workers * self.wall_seconds
        return min(1.0, self.busy_seconds / capacity) if capacity > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """As a `batch_end` event carries it (milliseconds kept)."""
        return {f.name: round(v, 3) if isinstance(v, float) else v for f in fields(self) for v in [getattr(self, f.name)]}
