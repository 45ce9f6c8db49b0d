"""Small hand-built objectives and a cheap acquisition budget shared by the search tests."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch

from mmmo.optimizer.acquisition import AcqBudget
from mmmo.optimizer.loop import BatchSummary, NullObserver
from mmmo.optimizer.options import LoopOptions
from mmmo.run.records import Trial
from mmmo.spec.schema import OptimizerSpec

CHEAP = AcqBudget(num_restarts=2, raw_samples=32, mc_samples=16, maxiter=20)


def objectives(X: torch.Tensor) -> torch.Tensor:
    """`[n, 3]` for `X [n, 2]`: two conflicting bumps plus a 'sparsity' column that only depends on x1."""
    a = -((X[:, 0] - 0.3) ** 2) - (X[:, 1] - 0.7) ** 2
    b = -((X[:, 0] - 0.7) ** 2) - (X[:, 1] - 0.3) ** 2
    return torch.stack([a, b, X[:, 1]], -1)


def search_options(opt: OptimizerSpec, dim: int, n_objectives: int, n_tasks: int, **more: Any) -> LoopOptions:
    """Options for `dim` coordinates and objectives y0..y{n_objectives-1}, the first `n_tasks` of them tasks."""
    names = [f"y{i}" for i in range(n_objectives)]
    return LoopOptions(opt=opt, dim=dim, objective_names=names, task_objective_names=names[:n_tasks], **more)


class Journal(NullObserver):
    """What a caller would persist: trials by id (JSON round trip), the ref point, summaries, events."""

    def __init__(self) -> None:
        self.trials: dict[int, dict] = {}
        self.ref_point: list[float] | None = None
        self.summaries: list[BatchSummary] = []
        self.events: list[tuple[str, int]] = []

    def on_proposed(self, trials: list[Trial]) -> None:
        for t in trials:
            self.trials[t.id] = t.to_json()
            self.events.append(("proposed", t.id))

    def on_finished(self, t: Trial) -> None:
        self.trials[t.id] = t.to_json()
        self.events.append(("finished", t.id))

    def on_ref_point(self, ref: list[float]) -> None:
        assert self.ref_point is None, "the reference point is inferred once"
        self.ref_point = ref

    def on_batch_end(self, summary: BatchSummary) -> None:
        self.summaries.append(summary)

    @property
    def finished(self) -> Counter[int]:
        """How many times each trial id was finished."""
        return Counter(i for kind, i in self.events if kind == "finished")

    def history(self) -> list[Trial]:
        return [Trial.from_json(copy.deepcopy(d)) for d in self.trials.values()]
