"""Weak-to-strong step (step 3 of the MM-MO batch): DE/rand/1 offspring of the best configurations.

Two uses: `de_offspring` (the default) builds children of the configurations that rank best on every
objective, to join the acquisition's pool; `weak_to_strong` is the paper's crossover of such mutants into the
acquisition's proposals, kept for the faithful ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmmo.optimizer.pareto import hypervolume_contributions, pareto_mask


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


def nondominated_ranks(Y: Tensor) -> Tensor:
    """`[n]` front number of each row of `Y [n, m]` (0: non-dominated; 1: non-dominated once front 0 is gone; ...)."""
    rank = torch.full((Y.shape[0],), -1, dtype=torch.long, device=Y.device)
    left = torch.arange(Y.shape[0], device=Y.device)
    front = 0
    while left.numel():
        on_front = pareto_mask(Y[left])
        rank[left[on_front]] = front
        left = left[~on_front]
        front += 1
    return rank


def rank_configs(Y: Tensor, ref_point: Tensor | Sequence[float], limit: int | None = None) -> Tensor:
    """Indices of the rows of `Y [n, m]` best first: by front, then by hypervolume contribution within it.

    Every objective counts (a sparse merge on the front ranks with an accurate one); within a front, the
    rows that add most hypervolume against `ref_point` come first, ties broken by lower index. With `limit`,
    only the first `limit` indices (the fronts after them cost no hypervolume computation).
    """
    ranks = nondominated_ranks(Y)
    order: list[int] = []
    for front in range(int(ranks.max()) + 1 if ranks.numel() else 0):
        if limit is not None and len(order) >= limit:
            break
        idx = (ranks == front).nonzero().flatten().tolist()
        contribution = hypervolume_contributions(Y[idx], ref_point)
        order += [i for _, i in sorted(zip((-c for c in contribution), idx))]
    return torch.tensor(order[:limit], dtype=torch.long, device=Y.device)


def de_offspring(
    X_done: Tensor,
    Y_done: Tensor,
    ref_point: Tensor | Sequence[float],
    *,
    n: int,
    top_k: int,
    f: float,
    generator: torch.Generator,
) -> Tensor:
    """`[n, d]` DE/rand/1 children of three distinct configurations among the `top_k` best by `rank_configs`.

    Empty (`[0, d]`) with fewer than 3 evaluated configurations.
    """
    if X_done.shape[0] < 3 or n == 0:
        return X_done.new_zeros(0, X_done.shape[-1])
    best = X_done[rank_configs(Y_done, ref_point, limit=max(top_k, 3))]
    idx = distinct_triples(best.shape[0], n, generator).to(best.device)
    return de_rand_1(best[idx[:, 0]], best[idx[:, 1]], best[idx[:, 2]], f)
