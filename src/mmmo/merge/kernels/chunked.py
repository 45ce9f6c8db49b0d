"""The eager fast path: a tensor's elementwise merge work (sparsify, weight, consensus, normalise, lambda) over
cache-sized chunks, with reusable buffers, after its per-tensor decisions (`mmmo.merge.kernels.tensor_setup`).

It computes what `mmmo.merge.methods.reference` writes step by step, in fewer passes: rows are sparsified and weighted
in one product, the sign election and the agreeing sum work on `relu(row * sign)`, and on CPU every pass runs
over a chunk that stays in cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.merge.kernels.selection import MagnitudeCut, trim_chunk
from mmmo.merge.kernels.tensor_setup import DIVISOR_START, TensorSetup, band_keep, della_keep
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.reference import NORM_EPS
from mmmo.merge.methods.sparsify import accumulate_dtype


@dataclass(frozen=True)
class _Buffers:
    """Per-chunk scratch, sized for the largest chunk (`rows` holds one row per active model)."""

    rows: Tensor
    mask: Tensor
    sign: Tensor
    divisor: Tensor
    mixed: Tensor | None  # None: mixed is written straight into the output (no base to add)
    one: Tensor
    start: Tensor  # 2^-100, the fast divisor's start

    @classmethod
    def get(cls, ws: Workspace, m: int, c_max: int, dtype: torch.dtype, device: torch.device,
            add_base: bool) -> _Buffers:
        return cls(
            rows=ws.get("rows", m * c_max, dtype, device),
            mask=ws.get("chunk_mask", c_max, dtype, device),
            sign=ws.get("sign", c_max, dtype, device),
            divisor=ws.get("divisor", c_max, dtype, device),
            mixed=ws.get("mixed_chunk", c_max, dtype, device) if add_base else None,
            one=torch.ones((), dtype=dtype, device=device),
            start=torch.full((), DIVISOR_START, dtype=dtype, device=device),
        )


def sum_rows(rows: Tensor, out: Tensor, chain: bool) -> None:
    """out = the sum over models (dim 0). With `chain` (float32/64): chained adds, the same left-to-right
    rounding as torch.sum(dim=0) without its output fill and slow outer-dim reduction; half types keep
    torch.sum's float32 accumulation."""
    if not chain:
        torch.sum(rows, dim=0, out=out)
        return
    if rows.shape[0] == 1:
        out.copy_(rows[0])  # torch.sum would turn -0 into +0; the chain (and the fused kernel) keep it
        return
    torch.add(rows[0], rows[1], out=out)
    for r in range(2, rows.shape[0]):
        out.add_(rows[r])


def _drop_edges(cuts: list[MagnitudeCut | None], starts: list[int], numel: int,
                device: torch.device) -> list[list[int] | None]:
    """Where each chunk's ties to drop begin in the (ascending) drop lists: one search per tensor, not per chunk."""
    return [
        None if cut is None or cut.drop is None
        else torch.searchsorted(cut.drop, torch.tensor([*starts, numel], device=device)).tolist()
        for cut in cuts
    ]


def _trim(x: Tensor, cut: MagnitudeCut, row: Tensor, a: int, ci: int, seen: int, edges: list[int] | None,
          ws: Workspace) -> int:
    """row = the chunk `x` (starting at `a`, chunk index `ci`) trimmed by `cut`; returns the ties met so far."""
    drop = None
    if edges is not None and cut.drop is not None and edges[ci + 1] > edges[ci]:
        drop = cut.drop[edges[ci] : edges[ci + 1]] - a
    return trim_chunk(x, cut, row, ws, seen, drop)


def _sparsified_rows(
    rows: Tensor, flat: Tensor, a: int, ci: int, plan: MergePlan, setup: TensorSetup, seen: list[list[int]],
    drop_edges: list[list[list[int] | None]], mask: Tensor, ws: Workspace,
) -> None:
    """rows[j] = the active model j's task vector on the chunk starting at `a` (chunk index `ci`), sparsified;
    `seen`, `drop_edges`: per cut list (outer, inner), per model; `mask`: scratch of at least the chunk's length."""
    c = rows.shape[1]
    kind = plan.method.sparsification
    for j, i in enumerate(setup.active):
        x = flat[i, a : a + c]
        band = setup.bands[j] if setup.bands else None
        cut = setup.cuts[j] if kind in ("magnitude", "magnitude_outliers") and not setup.bands else None
        u = setup.draws[j] if kind in ("random", "della_magprune") else None
        inner = setup.inner_cuts[j] if setup.inner_cuts else None
        if band is not None:  # Breadcrumbs by the magnitude-rank table: x * (its band of ranks)
            between = ws.get("band_between", c, torch.bool, flat.device)
            torch.mul(x, band_keep(band[0][a : a + c], band[1], band[2], mask[:c], between), out=rows[j])
        elif cut is not None or inner is not None:
            if cut is None:  # Breadcrumbs dropping none of the smallest: only the largest go
                rows[j].copy_(x)
            else:
                seen[0][j] = _trim(x, cut, rows[j], a, ci, seen[0][j], drop_edges[0][j], ws)
            if inner is not None:  # Breadcrumbs: less the largest (nested cuts, so the difference is exact)
                out = mask[:c]
                seen[1][j] = _trim(x, inner, out, a, ci, seen[1][j], drop_edges[1][j], ws)
                rows[j].sub_(out)
        elif u is not None:
            keep = mask[:c]
            if kind == "random":
                torch.lt(u[a : a + c], setup.densities[i], out=keep)
            else:
                rank = setup.ranks[j]
                assert rank is not None  # drawn, so density < 1
                della_keep(u[a : a + c], rank[a : a + c], setup.spreads[j], keep, ws)
            torch.mul(x, keep, out=rows[j])
        else:
            rows[j].copy_(x)
        if setup.scales and not setup.fold_scales and setup.scales[j] != 1.0:
            rows[j].mul_(setup.scales[j])  # rounded separately from the weight, as mergekit does


def _consensus_sum(rows: Tensor, mixed: Tensor, plan: MergePlan, setup: TensorSetup, bufs: _Buffers,
                   chain: bool) -> Tensor:
    """mixed = the agreeing magnitudes summed (over the agreeing weights with normalize); returns the elected
    sign s (+-1 per entry). `rows` (weighted) is consumed."""
    c = rows.shape[1]
    # Elected sign s = +1 where the weighted sum is >= 0 (copysign: -0 only when every term is -0, and then
    # nothing agrees either way). An entry agrees when row * s > 0, so relu(row * s) keeps exactly the agreeing
    # magnitudes and sum_j relu(row_j * s) * s is mergekit's masked sum, bit for bit.
    sign = bufs.sign[:c]
    sum_rows(rows, sign, chain)
    torch.copysign(bufs.one, sign, out=sign)
    rows.mul_(sign).relu_()
    sum_rows(rows, mixed, chain)
    if plan.normalize:
        w, active = setup.weights, setup.active
        rows.sign_()  # 1 where model j agrees, else 0
        divisor = bufs.divisor[:c]
        if setup.fast_divisor:
            # Start from 2^-100 instead of 0: it vanishes when added to any weight >= 2^-60 (below half an ulp),
            # and where nothing agrees the divisor stays 2^-100 over a sum of exactly 0, giving mergekit's 0 / 1
            # without another pass.
            torch.add(bufs.start, rows[0], alpha=w[active[0]], out=divisor)
            for j in range(1, len(active)):
                divisor.add_(rows[j], alpha=w[active[j]])
        else:
            torch.mul(rows[0], w[active[0]], out=divisor)
            for j in range(1, len(active)):
                divisor.add_(rows[j], alpha=w[active[j]])
            divisor.copy_(torch.where(divisor == 0, torch.ones_like(divisor), divisor))
        mixed.div_(divisor)
    return sign


def _plain_sum(rows: Tensor, mixed: Tensor, base: Tensor, plan: MergePlan, total_w: float, chain: bool) -> None:
    """mixed = the weighted sum of the rows, normalised by the sum of the weights `total_w` with normalize
    (linear: the models' weighted average minus `base`, the chunk of the base)."""
    sum_rows(rows, mixed, chain)
    if plan.method.name == "linear":
        if plan.normalize:
            # Weights summing to ~0 have no average: keep the base (mergekit divides by zero here).
            if abs(total_w) < NORM_EPS:
                mixed.zero_()
            else:
                mixed.div_(total_w)
        else:
            mixed.add_(base, alpha=total_w - 1.0)  # sum_i w_i (base + delta_i) - base
    elif plan.normalize:
        mixed.div_(total_w if abs(total_w) >= NORM_EPS else 1.0)


def merge_chunks(
    out_flat: Tensor, base_flat: Tensor, flat: Tensor, plan: MergePlan, setup: TensorSetup, ws: Workspace,
    *, add_base: bool,
) -> Tensor:
    """Write `base + mixed` (or `mixed` without `add_base`) into `out_flat` ([numel]) from the task vectors
    `flat` ([n, numel]); returns |mixed|_1 as a 0-d float64 tensor. CPU works in `plan.chunk` slices."""
    dtype, device, numel = flat.dtype, flat.device, flat.shape[1]
    m, lambda_, consensus = len(setup.active), plan.lambda_, plan.method.consensus
    # With consensus the magnitudes are summed before the elected sign is applied; they are >= 0 (and so is the
    # divisor on the fast path), so |mixed|_1 is their plain sum: cheaper than an abs pass.
    stat_unsigned = consensus and (not plan.normalize or setup.fast_divisor)
    total_w = float(torch.tensor(setup.weights, dtype=dtype).sum())
    step = numel if device.type != "cpu" else plan.chunk
    bufs = _Buffers.get(ws, m, min(step, numel), dtype, device, add_base)
    # w * (delta * mask): the mask product is exact, so this rounds once, like mergekit.
    wcol = torch.tensor(setup.factors, dtype=dtype, device=device).view(m, 1)
    chain = dtype in (torch.float32, torch.float64)
    seen = [[0] * m, [0] * m]  # per cut (outer, Breadcrumbs' inner), per model
    total = torch.zeros((), dtype=torch.float64, device=device)
    starts = list(range(0, numel, step))
    drop_edges = [_drop_edges(setup.cuts, starts, numel, device), _drop_edges(setup.inner_cuts, starts, numel, device)]
    for ci, a in enumerate(starts):
        b = min(numel, a + step)
        c = b - a
        rows = bufs.rows[: m * c].view(m, c)
        _sparsified_rows(rows, flat, a, ci, plan, setup, seen, drop_edges, bufs.mask, ws)
        rows.mul_(wcol)
        mixed = out_flat[a:b] if bufs.mixed is None else bufs.mixed[:c]
        if consensus:
            sign = _consensus_sum(rows, mixed, plan, setup, bufs, chain)
            if stat_unsigned:
                total.add_(torch.sum(mixed, dtype=accumulate_dtype(dtype)))
            if bufs.mixed is not None and lambda_ == 1 and stat_unsigned:
                # base + mixed * s in one pass (the product by +-1 is exact, so the rounding is the add's alone)
                torch.addcmul(base_flat[a:b], mixed, sign, out=out_flat[a:b])
                continue
            mixed.mul_(sign)
        else:
            _plain_sum(rows, mixed, base_flat[a:b], plan, total_w, chain)
        if lambda_ != 1 and plan.method.name != "linear":
            mixed.mul_(lambda_)
        if not stat_unsigned:
            # in float64: a float32 vector_norm(·, 1) drifts by ~1e-5 on large tensors, so chunking would show
            total.add_(torch.linalg.vector_norm(mixed, 1, dtype=torch.float64))
        if bufs.mixed is not None:
            torch.add(base_flat[a:b], mixed, out=out_flat[a:b])
    if stat_unsigned and lambda_ != 1:
        total.mul_(abs(lambda_))
    return total
