"""The record of one evaluated (or to-be-evaluated) merge configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mmmo.run.documents import EncodedOutcomes

# "partial": scored on some stages of evaluation.stages, its next stage (or stop) not yet decided.
TrialStatus = Literal["proposed", "partial", "done", "failed"]


@dataclass
class Trial:
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
    objectives: dict[str, float] | None = None  # every objective, maximised
    metrics: dict[str, Any] = field(default_factory=dict)  # raw lm-eval metrics per task
    n_examples: dict[str, int] = field(default_factory=dict)
    # Standard error of each objective's value (lm-eval's stderr; 0.0 for exact ones such as sparsity);
    # an objective left out has unknown noise, which the GPs then infer.
    stderr: dict[str, float] = field(default_factory=dict)
    # Per-document values of each task objective's metric, per leaf task, in the run's document order (see
    # mmmo.run.documents: encoded, "0110..." for 0/1 metrics); a prefix of that order when stages stopped it early.
    outcomes: dict[str, dict[str, EncodedOutcomes]] = field(default_factory=dict)
    stages_scored: int = 0  # how many stages of evaluation.stages it has been scored on (1 when stages are off)
    stopped: bool = False  # done on part of its documents: the stage criterion gave it no real chance
    merge_seconds: float | None = None
    eval_seconds: float | None = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if data["method"] is None:  # a single method's journal reads as it did before methods could be listed
            del data["method"]
        return data

    def method_or(self, default: str) -> str:
        """The method this trial merges with: its own, else the spec's single `default`."""
        return self.method if self.method is not None else default

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)
