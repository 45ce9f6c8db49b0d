"""Weak-to-strong step (step 3 of the MM-MO batch): DE/rand/1 mutants of the best configurations, crossed
into the acquisition's proposals so that strong evaluated merges pull weak proposals towards them."""

from __future__ import annotations

import torch
from torch import Tensor


def standardised_score(Y: Tensor) -> Tensor:
    """Sum over columns of the z-scored `Y [n, m]` (sample std; a constant column contributes 0)."""
    mean = Y.mean(0)
    std = Y.std(0) if Y.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((Y - mean) / std).sum(-1)


def top_k_configs(X: Tensor, Y_task: Tensor, k: int) -> Tensor:
    """The (at most) `k` rows of `X` with the highest standardised task score, best first (ties: lower index)."""
    score = standardised_score(Y_task)
    order = torch.sort(-score, stable=True).indices
    return X[order[: min(k, X.shape[0])]]


def distinct_triples(n_pool: int, q: int, generator: torch.Generator) -> Tensor:
    """`[q, 3]` indices into a pool of `n_pool`, distinct within each row."""
    if n_pool < 3:
        raise ValueError(f"DE/rand/1 needs at least 3 configurations, got {n_pool}")
    return torch.stack([torch.randperm(n_pool, generator=generator)[:3] for _ in range(q)])


def de_rand_1(a: Tensor, b: Tensor, c: Tensor, f: float) -> Tensor:
    """DE/rand/1 mutant `a + f (b - c)`, clipped to the unit cube."""
    return (a + f * (b - c)).clamp(0.0, 1.0)


def crossover_mask(q: int, d: int, cr: float, generator: torch.Generator) -> Tensor:
    """`[q, d]` binomial crossover mask: each coordinate from the mutant with probability `cr`, one forced."""
    mask = torch.rand(q, d, generator=generator, dtype=torch.float64) < cr
    j_rand = torch.randint(d, (q,), generator=generator)
    mask[torch.arange(q), j_rand] = True
    return mask


def binomial_crossover(target: Tensor, mutant: Tensor, mask: Tensor) -> Tensor:
    """Take the mutant's coordinate where `mask`, the target's elsewhere."""
    return torch.where(mask.to(target.device), mutant, target)


def weak_to_strong(
    proposals: Tensor,
    X_done: Tensor,
    Y_task_done: Tensor,
    *,
    top_k: int,
    f: float,
    cr: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Cross each proposal `[q, d]` with a DE/rand/1 mutant of three distinct top-`top_k` configurations.

    `Y_task_done` holds only the task objectives (the caller leaves sparsity out of the ranking).
    Returns the new points and a `[q]` mask of those that took any coordinate value from their mutant.
    With fewer than 3 evaluated configurations the proposals come back unchanged.
    """
    q, d = proposals.shape
    unchanged = torch.zeros(q, dtype=torch.bool, device=proposals.device)
    if X_done.shape[0] < 3 or q == 0:
        return proposals.clone(), unchanged
    pool = top_k_configs(X_done.to(proposals), Y_task_done.to(proposals), max(top_k, 3))
    idx = distinct_triples(pool.shape[0], q, generator).to(pool.device)
    mutant = de_rand_1(pool[idx[:, 0]], pool[idx[:, 1]], pool[idx[:, 2]], f)
    mask = crossover_mask(q, d, cr, generator).to(proposals.device)
    out = binomial_crossover(proposals, mutant, mask)
    from_mutant = (mask & (mutant != proposals)).any(-1)
    return out, from_mutant
