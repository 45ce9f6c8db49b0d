"""Generalized task arithmetic (mergekit's `GeneralizedTaskArithmeticMerge`) written step by step, in paper order.

Per tensor, with task vectors `deltas[i] = model_i - base` stacked along dim 0:

1. sparsify each task vector (`mmmo.merge.sparsify`: TIES trim or DARE drop);
2. multiply by the model weights;
3. with sign consensus (ties, dare_ties): elect each entry's sign from the sign of the weighted sum, keep only
   the contributions that agree (zeros never agree), and sum them; the normalizer is the sum of the weights of
   the agreeing models, 1 where none agrees. Without consensus: plain sum; the normalizer is the sum of the
   weights, 1 where it is below 1e-8 in magnitude;
4. divide by the normalizer when `normalize` (default on for ties, off for task_arithmetic and DARE);
5. multiply by `lambda_`; add to the base.

`linear` is the weighted average of the models themselves (normalize on by default); where mergekit would divide
by weights summing to ~0 it returns the base. This is the readable reference: the fast path
(`mmmo.merge.fast_merge`) computes the same tensors with fewer passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmmo.merge.plan import MergePlan
from mmmo.merge.sparsify import dare_prune, magnitude_prune

NORM_EPS = 1e-8  # mergekit's guard on the sum of weights without consensus


def sign_consensus_mask(weighted: Tensor) -> Tensor:
    """TIES sign election: True where an entry's sign equals the sign of the sum over models (>= 0 is +)."""
    majority_positive = weighted.sum(dim=0) >= 0
    return torch.where(majority_positive, weighted > 0, weighted < 0)


def reference_delta(
    plan: MergePlan,
    base: Tensor,
    deltas: Tensor,
    weights: Sequence[float],
    densities: Sequence[float] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
) -> Tensor:
    """The merged tensor minus `base` ([*base.shape], in `deltas.dtype`), one step of the recipe at a time."""
    info, n = plan.method, deltas.shape[0]
    dens = [1.0] * n if densities is None else list(densities)
    gens = [None] * n if generators is None else list(generators)
    rows = []
    for i in range(n):  # 1. sparsify
        d = deltas[i]
        if info.sparsification == "magnitude":
            d = magnitude_prune(d, dens[i])
        elif info.sparsification == "random":
            d = dare_prune(d, dens[i], gens[i], rescale=plan.rescale)
        rows.append(d)
    w = torch.tensor(list(weights), dtype=deltas.dtype).reshape(-1, *([1] * base.dim()))
    weighted = torch.stack(rows) * w  # 2. weight
    if info.consensus:  # 3. sign consensus
        agree = sign_consensus_mask(weighted)
        mixed = (weighted * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0)
        divisor[divisor.abs() < NORM_EPS] = 1
    if info.name == "linear":  # the models' weighted average: sum_i w_i (base + delta_i) [/ sum_i w_i] - base
        total = float(w.sum())
        if not plan.normalize:
            return mixed + (total - 1.0) * base.to(deltas.dtype)
        return torch.zeros_like(mixed) if abs(total) < NORM_EPS else mixed / total
    if plan.normalize:  # 4. normalise
        mixed = mixed / divisor
    return mixed * plan.lambda_  # 5. lambda
