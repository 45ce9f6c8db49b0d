"""Fisher-information screening (step 4 of the MM-MO batch): keep the candidates the GPs know least about."""

from __future__ import annotations

import torch
from botorch.models import ModelListGP
from botorch.models.model import Model
from botorch.models.transforms.outcome import Standardize
from torch import Tensor

VARIANCE_FLOOR = 1e-12
DEDUPE_TOL = 1e-6


def _submodels(model: Model) -> list[Model]:
    return list(model.models) if isinstance(model, ModelListGP) else [model]


def fisher_scores(model: Model, X: Tensor, *, standardized: bool = True) -> Tensor:
    """Per candidate `[q]`: sum over objectives of 1 / posterior variance of the latent function.

    With `standardized` (default) each variance is divided by its outcome transform's variance, so
    objectives on different raw scales weigh equally (otherwise the smallest-scale objective, often
    sparsity, would decide alone).
    """
    X = X.to(torch.float64)
    total = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
    with torch.no_grad():
        for sub in _submodels(model):
            var = sub.posterior(X).variance  # [q, m_sub], raw units
            tf = getattr(sub, "outcome_transform", None)
            if standardized and isinstance(tf, Standardize):
                var = var / tf.stdvs.reshape(-1).to(var) ** 2
            total = total + (1.0 / var.clamp_min(VARIANCE_FLOOR)).sum(-1)
    return total


def far_from(X: Tensor, avoid: Tensor, tol: float = DEDUPE_TOL) -> Tensor:
    """`[p]` mask of the rows of `X [p, d]` farther than `tol` (max-norm) from every row of `avoid [a, d]`."""
    if avoid.shape[0] == 0:
        return torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
    return ((X.unsqueeze(1) - avoid.to(X).unsqueeze(0)).abs().amax(-1) > tol).all(-1)


def fisher_screen(
    model: Model, X: Tensor, k: int, X_seen: Tensor | None = None, *, tol: float = DEDUPE_TOL
) -> Tensor:
    """Indices into `X` of (at most) `k` candidates with the LOWEST Fisher score, most informative first.

    A candidate within `tol` (max-norm) of an already evaluated point or of a candidate already kept
    is skipped, so fewer than `k` come back when duplicates abound.
    """
    scores = fisher_scores(model, X)
    return screen_by_score(scores, X, k, X_seen, tol=tol)


def screen_by_score(
    scores: Tensor, X: Tensor, k: int, X_seen: Tensor | None = None, *, tol: float = DEDUPE_TOL
) -> Tensor:
    """Greedy pick in ascending `scores` order, skipping near-duplicates of `X_seen` and of earlier picks."""
    seen = X_seen.to(X) if X_seen is not None else X.new_zeros(0, X.shape[-1])
    order = torch.sort(scores, stable=True).indices
    kept: list[int] = []
    for i in order.tolist():
        if len(kept) == k:
            break
        if bool(far_from(X[i : i + 1], torch.cat([seen, X[kept]]), tol)[0]):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long, device=X.device)
