"""Generalized task arithmetic (mergekit's `GeneralizedTaskArithmeticMerge`) written step by step, in paper order.

Per tensor, with task vectors `deltas[i] = model_i - base` stacked along dim 0:

1. sparsify each task vector (`mmmo.merge.methods.sparsify`: TIES trim, DARE drop, Breadcrumbs' band or DELLA's
   rank-weighted drop), and with `rescale` restore its L1 norm;
2. multiply by the model weights;
3. with sign consensus (ties, dare_ties): elect each entry's sign from the sign of the weighted sum, keep only
   the contributions that agree (zeros never agree), and sum them; the normalizer is the sum of the weights of
   the agreeing models, 1 where none agrees. Without consensus: plain sum; the normalizer is the sum of the
   weights, 1 where it is below 1e-8 in magnitude;
4. divide by the normalizer when `normalize` (default on for ties, off for task_arithmetic and DARE);
5. multiply by `lambda_`; add to the base.

`linear` is the weighted average of the models themselves (normalize on by default); where mergekit would divide
by weights summing to ~0 it returns the base. `sce` has its own recipe (`mmmo.merge.kernels.sce`). This is the readable reference: the fast path
(`mmmo.merge.kernels.fast_merge`) computes the same tensors with fewer passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.sparsify import (
    dare_prune,
    della_prune,
    l1_rescaled,
    magnitude_mask,
    outlier_mask,
    top_mask,
)

NORM_EPS = 1e-8  # mergekit's guard on the sum of weights without consensus
SCE_EPS = 1e-6  # SCE's floor on the sum of the erased weights, and on the sum of the raw weights


def sign_consensus_mask(weighted: Tensor) -> Tensor:
    """TIES sign election: True where an entry's sign equals the sign of the sum over models (>= 0 is +)."""
    majority_positive = weighted.sum(dim=0) >= 0
    return torch.where(majority_positive, weighted > 0, weighted < 0)


def sparsified(plan: MergePlan, delta: Tensor, density: float, generator: torch.Generator | None) -> Tensor:
    """Step 1 for one task vector: the method's sparsification, then (with `rescale`) mergekit's L1 rescale."""
    kind = plan.method.sparsification
    if kind is None or density >= 1:  # mergekit returns a task vector whole at density >= 1, rescale or not
        return delta
    if kind == "random":
        return dare_prune(delta, density, generator, rescale=plan.rescale)
    if kind == "della_magprune":
        return della_prune(delta, density, plan.value("epsilon"), generator, rescale=plan.rescale)
    if kind == "magnitude":
        keep = magnitude_mask(delta, density)
    else:
        keep = outlier_mask(delta, density, plan.value("gamma"))
    assert keep is not None  # density < 1
    return l1_rescaled(delta, keep) if plan.rescale else delta * keep


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
    if info.sce:
        return sce_delta(deltas, plan.value("select_topk"))
    rows = [sparsified(plan, deltas[i], dens[i], gens[i]) for i in range(n)]  # 1. sparsify
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


# ---- SCE (mergekit's sce.py): select, calculate, erase


def sce_mask(deltas: Tensor, select_topk: float) -> Tensor:
    """Select: True on the `int(select_topk * nonzero)` entries whose variance across the models ([n, *shape],
    population variance) is largest, `nonzero` counting entries of nonzero variance ([*shape] bool; equal
    variances: lowest flat index first)."""
    if select_topk <= 0:
        return torch.zeros(deltas.shape[1:], dtype=torch.bool, device=deltas.device)
    if select_topk >= 1:
        return torch.ones(deltas.shape[1:], dtype=torch.bool, device=deltas.device)
    var = torch.var(deltas, dim=0, unbiased=False)
    return top_mask(var, int(int(torch.count_nonzero(var)) * select_topk))


def sce_weights(selected: Tensor) -> Tensor:
    """Calculate: each model's mean squared (selected) task vector over the sum of them ([n], in its dtype);
    equal weights when that sum is below 1e-6."""
    n = selected.shape[0]
    weights = selected.square().reshape(n, -1).mean(dim=1)
    total = torch.sum(weights).item()
    if abs(total) < SCE_EPS:
        return torch.ones_like(weights) / n
    return weights / total


def sce_delta(deltas: Tensor, select_topk: float) -> Tensor:
    """SCE's merged tensor minus the base ([*shape], in `deltas.dtype`): the selected task vectors, erased where
    their sign disagrees with the elected one (sign of their plain sum), averaged with the `sce_weights` of the
    models that agree (over a sum floored at 1e-6). It takes no per-model weight or density."""
    tv = deltas
    if select_topk < 1:
        tv = tv * sce_mask(tv, select_topk).unsqueeze(0)
    agree = sign_consensus_mask(tv)
    w = sce_weights(tv).reshape(-1, *([1] * (tv.dim() - 1)))
    erased = w * agree
    return (tv * erased).sum(dim=0) / torch.sum(erased, dim=0).clamp(min=SCE_EPS)
