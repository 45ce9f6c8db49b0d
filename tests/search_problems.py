"""Small hand-built objectives and a cheap acquisition budget shared by the search tests."""

from __future__ import annotations

import torch

from mmmo.search.acquisition import AcqBudget

CHEAP = AcqBudget(num_restarts=2, raw_samples=32, mc_samples=16, maxiter=20)


def objectives(X: torch.Tensor) -> torch.Tensor:
    """`[n, 3]` for `X [n, 2]`: two conflicting bumps plus a 'sparsity' column that only depends on x1."""
    a = -((X[:, 0] - 0.3) ** 2) - (X[:, 1] - 0.7) ** 2
    b = -((X[:, 0] - 0.7) ** 2) - (X[:, 1] - 0.3) ** 2
    return torch.stack([a, b, X[:, 1]], -1)
