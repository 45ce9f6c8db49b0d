"""The record of one evaluated (or to-be-evaluated) merge configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TrialStatus = Literal["proposed", "done", "failed"]


@dataclass
class Trial:
    """One candidate: where it sits in the unit cube, who proposed it, and what it scored."""

    id: int
    batch: int  # 0 is the initial design
    x: list[float]  # point in the unit cube, the GP's input space
    step: str  # which strategy step proposed it: sobol, acquisition, weak_to_strong, random, nsga2, ...
    status: TrialStatus = "proposed"
    params: dict[str, float] = field(default_factory=dict)  # named merge parameters in real units
    objectives: dict[str, float] | None = None  # every objective, maximised
    metrics: dict[str, Any] = field(default_factory=dict)  # raw lm-eval metrics per task
    n_examples: dict[str, int] = field(default_factory=dict)
    # Standard error of each objective's value (lm-eval's stderr; 0.0 for exact ones such as sparsity);
    # an objective left out has unknown noise, which the GPs then infer.
    stderr: dict[str, float] = field(default_factory=dict)
    merge_seconds: float | None = None
    eval_seconds: float | None = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)
