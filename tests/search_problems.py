"""Small hand-built objectives and a cheap acquisition budget shared by the search tests."""

from __future__ import annotations

from typing import Any

import torch

from mmmo.optimizer.acquisition import AcqBudget
from mmmo.optimizer.options import LoopOptions
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
