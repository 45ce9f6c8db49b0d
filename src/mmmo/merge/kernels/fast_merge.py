"""The fast merge of one tensor, what the Merger runs for every candidate: the reference math
(`mmmo.merge.methods.reference`, mergekit 0.1.5's) with fewer passes, reusable buffers and, for a search, table lookups.

It fixes the per-tensor quantities first (`tensor_setup`: the TIES threshold, the DARE draws and rescale factor),
then does all the elementwise work, either over cache-sized chunks (`chunked`) or, for the methods `fused.fusable`
names, with `plan.fused`, in one compiled kernel (`fused`; SCE in two, after its own selection: `sce`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

import mmmo.merge.kernels.fused as fused_kernel
from mmmo.merge.kernels.chunked import merge_chunks
from mmmo.merge.kernels.geometric import GeometricMerge
from mmmo.merge.kernels.sce import sce_merge_chunks, selected_count
from mmmo.merge.kernels.selection import MagnitudeCut
from mmmo.merge.kernels.tables import Precomputed
from mmmo.merge.kernels.tensor_setup import TensorSetup, tensor_setup
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.reference import NORM_EPS, SCE_EPS

_NO_TABLES = Precomputed()


def abs_sum(t: Tensor) -> Tensor:
    """|t|_1 as a float64 0-d tensor, accumulated in float64 (a float32 norm drifts ~1e-5 on large tensors)."""
    return torch.sum(t.abs(), dtype=torch.float64)


def merge_into(
    out: Tensor,
    plan: MergePlan,
    base: Tensor,
    deltas: Tensor,
    weights: Tensor | Sequence[float],
    densities: Tensor | Sequence[float] | None = None,
    *,
    generators: Sequence[torch.Generator | None] | None = None,
    tables: Precomputed | None = None,
    workspace: Workspace | None = None,
    add_base: bool = True,
) -> Tensor:
    """Write `base + mixed` (or `mixed` alone without `add_base`) into `out` (base's shape) and return |mixed|_1
    as a 0-d float64 tensor; `mixed` is what the method adds to the base, computed in `deltas.dtype`.

    `deltas`: [n_models, *base.shape]; `weights`, `densities`: [n_models]; `generators`: one per model for DARE
    (None draws from torch's default generator); `tables`: what is fixed for this tensor over a search, which
    replaces the TIES selection, the DARE draws and DARE's norm pass by lookups. Models with weight 0 or
    density <= 0 contribute nothing in every method, so they are skipped.

    SCE ignores `weights` and `densities` (`mmmo.merge.kernels.sce`). With `plan.fused`, the task-vector methods in
    float32/64 (with sign election normalized only with weights >= 2^-60; Breadcrumbs only with its rank table) run
    as one compiled kernel with the same result bit for bit; other cases, or no compiler, run eagerly. TIES ties at the
    threshold that must go are zeroed in `deltas` for the kernel's pass and restored after it.
    """
    n = deltas.shape[0]
    if deltas.shape[1:] != base.shape:
        raise ValueError(f"deltas shape {tuple(deltas.shape)} does not match base {tuple(base.shape)}")
    ws = workspace if workspace is not None else Workspace()
    flat = deltas.reshape(n, base.numel())
    base_flat = base.reshape(-1)
    out_flat = out.view(-1)
    tables = _NO_TABLES if tables is None else tables
    if plan.method.sce:
        return _merge_sce(out_flat, base_flat, flat, plan, tables, ws, add_base=add_base)
    della = plan.method.sparsification == "della_magprune" and deltas.dtype in fused_kernel.FUSED_DTYPES
    kept_l1 = fused_kernel.della_kept_l1 if plan.fused and della else None
    setup = tensor_setup(plan, flat, weights, densities, generators, tables, ws, base.shape, kept_l1)
    if not setup.active:
        return _merge_without_models(out_flat, base_flat, plan, add_base=add_base)
    if _fusable(plan, setup, add_base):
        stat = _merge_fused(out_flat, base_flat, flat, plan, setup, ws)
        if stat is not None:
            # the kernel's consensus statistic leaves lambda out (its linear one has it)
            return stat * abs(plan.lambda_) if plan.lambda_ != 1 and plan.method.consensus else stat
    return merge_chunks(out_flat, base_flat, flat, plan, setup, ws, add_base=add_base)


def _merge_sce(out_flat: Tensor, base_flat: Tensor, flat: Tensor, plan: MergePlan, tables: Precomputed,
               ws: Workspace, *, add_base: bool) -> Tensor:
    """SCE: compiled (`fused.sce_merge`) with `plan.fused`, where it selects by the search-wide variance ranks or
    keeps everything; otherwise, or without a compiler, the eager chunked passes."""
    topk = plan.value("select_topk")
    count = selected_count(topk, tables) if topk < 1 else None
    if plan.fused and flat.dtype in fused_kernel.FUSED_DTYPES and (topk >= 1 or count is not None):
        rank = tables.var_rank if topk < 1 else None
        stat = fused_kernel.sce_merge(out_flat, base_flat, list(flat), rank, count or 0, SCE_EPS, add_base)
        if stat is not None:
            return stat
    return sce_merge_chunks(out_flat, base_flat, flat, topk, tables, ws, plan.chunk, add_base=add_base)


def _merge_without_models(out_flat: Tensor, base_flat: Tensor, plan: MergePlan, *, add_base: bool) -> Tensor:
    """The merge when no model takes part: the base (linear without normalize: the empty weighted sum, 0)."""
    if plan.method.name == "linear" and not plan.normalize:
        if add_base:
            out_flat.zero_()  # the weighted sum of the models is 0
        else:
            torch.neg(base_flat, out=out_flat)
        return abs_sum(base_flat)
    if add_base:
        out_flat.copy_(base_flat)
    else:
        out_flat.zero_()
    return torch.zeros((), dtype=torch.float64, device=out_flat.device)


def _fusable(plan: MergePlan, setup: TensorSetup, add_base: bool) -> bool:
    """Whether the compiled kernel can take this merge (it has no general divisor and no half types)."""
    info = plan.method
    consensus = info.consensus
    return (
        plan.fused and add_base and setup.dtype in fused_kernel.FUSED_DTYPES
        and fused_kernel.fusable(info)
        and (info.sparsification != "magnitude_outliers" or bool(setup.bands))  # Breadcrumbs: by its rank table
        and (not consensus or not plan.normalize or setup.fast_divisor) and fused_kernel.available()
    )


def _merge_fused(
    out_flat: Tensor, base_flat: Tensor, flat: Tensor, plan: MergePlan, setup: TensorSetup, ws: Workspace
) -> Tensor | None:
    """The merge through the fused kernel: per-model arguments for all models, with the TIES ties past each
    cut's `room` zeroed in `flat` for the pass (restored after it). None: kernel unavailable."""
    n, numel = flat.shape
    sparsification = plan.method.sparsification
    limits: list[float] = [0.0] * n
    spans: list[float] = [0.0] * n
    row_factors, row_weights = [0.0] * n, [0.0] * n
    on = [False] * n
    row_draws: list[Tensor] | None = None
    row_ranks: list[Tensor] | None = None
    if sparsification in ("random", "della_magprune"):
        row_draws = [ws.zeros("draws", numel, torch.float32, flat.device)] * n
    if sparsification == "della_magprune":
        row_ranks = [ws.zeros("della_ranks", numel, torch.float32, flat.device)] * n
    elif sparsification == "magnitude_outliers":
        rank_dtype = next(b[0].dtype for b in setup.bands if b is not None) if any(setup.bands) else torch.int32
        row_ranks = [ws.zeros("band_ranks", numel, rank_dtype, flat.device)] * n
    factors = setup.factors
    dropped: list[tuple[int, Tensor, Tensor]] = []
    try:
        for j, i in enumerate(setup.active):
            on[i], row_factors[i], row_weights[i] = True, factors[j], setup.weights[i]
            if sparsification == "magnitude":
                limits[i] = _ties_limit(flat, i, setup.cuts[j], dropped)
            elif sparsification == "random" and row_draws is not None:
                u = setup.draws[j]
                if u is None:  # density >= 1: every draw of the zeros buffer is < 1
                    limits[i] = 1.0
                else:
                    row_draws[i], limits[i] = u, setup.densities[i]
            elif sparsification == "magnitude_outliers" and row_ranks is not None:
                band = setup.bands[j]
                if band is None:  # density >= 1: every rank of the zeros buffer is in [0, numel)
                    limits[i], spans[i] = 0, numel
                else:
                    row_ranks[i], limits[i], spans[i] = band
            elif sparsification == "della_magprune" and row_draws is not None and row_ranks is not None:
                u, rank = setup.draws[j], setup.ranks[j]
                if u is None or rank is None:  # density >= 1: 0 < 0 * 2 * 0 + 1
                    limits[i], spans[i] = 1.0, 0.0
                else:
                    row_draws[i], row_ranks[i] = u, rank
                    limits[i], spans[i] = setup.spreads[j]
        return fused_kernel.consensus_merge(
            out_flat, base_flat, [flat[i] for i in range(n)], sparsification=sparsification, limits=limits,
            factors=row_factors, weights=row_weights, active=on, normalize=plan.normalize,
            lambda_=plan.lambda_, draws=row_draws, ranks=row_ranks, spans=spans, consensus=plan.method.consensus,
            total_weight=_total_weight(setup),
        )
    finally:
        for i, drop, values in dropped:
            flat[i][drop] = values


def _ties_limit(flat: Tensor, i: int, cut: MagnitudeCut | None, dropped: list[tuple[int, Tensor, Tensor]]) -> float:
    """The kernel's limit for row i's TIES cut (-1: keep everything); the ties past the cut's `room` are zeroed in
    `flat` and listed in `dropped` (to restore after the pass)."""
    if cut is None:
        return -1.0
    if cut.room is not None:
        drop = cut.drop
        if drop is None:  # the selection path knows how many ties stay, not where they are
            drop = torch.nonzero(flat[i].abs() == cut.t).squeeze(1)[cut.room :]
        if drop.numel():
            dropped.append((i, drop, flat[i][drop].clone()))
            flat[i][drop] = 0
    return cut.below


def _total_weight(setup: TensorSetup) -> float:
    """What a merge without sign election divides by under normalize: the sum of the weights (in the compute
    dtype), or 1 where it is ~0, as `chunked` does."""
    total = float(torch.tensor(setup.weights, dtype=setup.dtype).sum())
    return total if abs(total) >= NORM_EPS else 1.0


def merge_tensor(
    method: str,
    base: Tensor,
    deltas: Tensor,
    weights: Tensor | Sequence[float],
    densities: Tensor | Sequence[float] | None = None,
    *,
    normalize: bool | None = None,
    lambda_: float = 1.0,
    rescale: bool | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    parameters: Mapping[str, float] | None = None,
) -> Tensor:
    """Merge one tensor by method name: `base` plus the method's combination of the task vectors `deltas`
    ([n_models, *base.shape]), in `base.dtype`; None takes the method's mergekit default (`registry`), and so
    does a method-level parameter missing from `parameters`."""
    plan = MergePlan.of(method, normalize=normalize, lambda_=lambda_, rescale=rescale, parameters=parameters)
    if plan.method.geometric:  # an interpolation of base + each task vector (`mmmo.merge.kernels.geometric`)
        merged = torch.empty(base.shape, dtype=deltas.dtype, device=deltas.device)
        GeometricMerge(plan.method, with_base=True).merge_into(
            merged, "", base.to(deltas.dtype), deltas, [float(w) for w in weights], plan.parameters)
        return merged.to(base.dtype)
    mixed = torch.empty(base.shape, dtype=deltas.dtype, device=deltas.device)
    merge_into(mixed, plan, base, deltas, weights, densities, generators=generators, add_base=False)
    return (base + mixed).to(base.dtype)
