"""SCE on the fast path: `reference.sce_delta` in two passes over cache-sized chunks, after one selection.

Select: with the search-wide table, an entry is kept when its rank by variance across models is below the count
`select_topk` keeps (one comparison); without it, a threshold from a selection over the variances. Calculate:
one pass sums each model's squared selected task vector (in float64: mergekit's float32 mean rounds differently,
so the weights, and the merge, agree with the reference to ~1e-7 relative, not bit for bit). Erase and average:
one pass, in the reference's order of operations. `fused.sce_merge` is the same two passes compiled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmmo.merge.kernels.chunked import sum_rows
from mmmo.merge.kernels.selection import (
    KEEP_NONZERO,
    MagnitudeCut,
    cut_by_selection,
    trim_chunk,
)
from mmmo.merge.kernels.tables import Precomputed
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.methods.reference import SCE_EPS


def variance(flat: Tensor) -> Tensor:
    """The population variance across models of task vectors `flat` ([n, numel] -> [numel]), as mergekit's."""
    return torch.var(flat, dim=0, unbiased=False)


def selected_count(select_topk: float, tables: Precomputed) -> int | None:
    """How many entries the table's ranks keep (`rank < count`); None without the table."""
    if tables.var_rank is None or tables.var_nonzero is None:
        return None
    return int(tables.var_nonzero * select_topk)


def _variance_cut(flat: Tensor, select_topk: float, ws: Workspace) -> tuple[Tensor, MagnitudeCut]:
    """Without the table: the variances ([numel]) and the cut keeping the `int(select_topk * nonzero)` largest."""
    numel = flat.shape[1]
    var = variance(flat)
    k = int(int(torch.count_nonzero(var)) * select_topk)
    if k == 0:
        return var, MagnitudeCut(float("inf"), float("inf"), None)
    if k >= numel:
        return var, KEEP_NONZERO
    return var, cut_by_selection(var, k, ws)


def sce_merge_chunks(
    out_flat: Tensor, base_flat: Tensor, flat: Tensor, select_topk: float, tables: Precomputed, ws: Workspace,
    chunk: int, *, add_base: bool,
) -> Tensor:
    """Write `base + sce_delta` (or the delta alone without `add_base`) into `out_flat` ([numel]) from the task
    vectors `flat` ([n, numel]); returns |delta|_1 as a 0-d float64 tensor."""
    n, numel = flat.shape
    dtype, device = flat.dtype, flat.device
    step = numel if device.type != "cpu" else chunk
    c_max = min(step, numel)
    rows = ws.get("rows", n * c_max, dtype, device)
    starts = list(range(0, numel, step))
    select = select_topk < 1
    count = selected_count(select_topk, tables) if select else None
    var, cut = _variance_cut(flat, select_topk, ws) if select and count is None else (None, None)
    drop_edges = None
    if cut is not None and cut.drop is not None:
        drop_edges = torch.searchsorted(cut.drop, torch.tensor([*starts, numel], device=device)).tolist()
    keep = ws.get("sce_keep", c_max, dtype, device)
    seen = [0, 0]  # ties at the cut met so far, in each pass

    def selected(a: int, c: int, pass_: int) -> Tensor:
        r = rows[: n * c].view(n, c)
        if count is not None and tables.var_rank is not None:
            k = keep[:c]
            k.copy_(tables.var_rank[a : a + c] < count)
            torch.mul(flat[:, a : a + c], k, out=r)
            return r
        if var is None or cut is None:
            r.copy_(flat[:, a : a + c])
            return r
        drop = None
        if drop_edges is not None and cut.drop is not None:
            ci = a // step
            drop = cut.drop[drop_edges[ci] : drop_edges[ci + 1]] - a
        k = keep[:c]
        seen[pass_] = trim_chunk(var[a : a + c], cut, k, ws, seen[pass_], drop)
        k.sign_()  # kept variances are > 0: 1 where selected, else 0
        torch.mul(flat[:, a : a + c], k, out=r)
        return r

    squares = torch.zeros(n, dtype=torch.float64, device=device)
    for a in starts:  # calculate
        c = min(numel, a + step) - a
        r = selected(a, c, 0)
        squares += torch.sum(r.double().square_(), dim=1)
    weights = weights_from_squares(squares, numel, n, dtype, device)
    erased = ws.get("sce_erased", n * c_max, dtype, device)
    sign = ws.get("sign", c_max, dtype, device)
    mixed = ws.get("mixed_chunk", c_max, dtype, device)
    divisor = ws.get("divisor", c_max, dtype, device)
    chain = dtype in (torch.float32, torch.float64)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for a in starts:  # erase and average
        c = min(numel, a + step) - a
        r = selected(a, c, 1)
        e = erased[: n * c].view(n, c)
        s = sign[:c]
        sum_rows(r, s, chain)
        # agree where a row's sign is the elected one (sum >= 0: +; copysign makes -0 a -, but a sum is -0 only
        # when every row is, and then nothing agrees either way); zeros never agree
        torch.copysign(torch.ones((), dtype=dtype, device=device), s, out=s)
        torch.mul(r, s, out=e)
        e.gt_(0)
        e.mul_(weights.view(n, 1))
        r.mul_(e)
        m, d = mixed[:c], divisor[:c]
        sum_rows(r, m, chain)
        sum_rows(e, d, chain)
        d.clamp_(min=SCE_EPS)
        m.div_(d)
        total.add_(torch.linalg.vector_norm(m, 1, dtype=torch.float64))
        if add_base:
            torch.add(base_flat[a : a + c], m, out=out_flat[a : a + c])
        else:
            out_flat[a : a + c].copy_(m)
    return total


def weights_from_squares(squares: Tensor, numel: int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`reference.sce_weights` ([n] in `dtype`) from each model's float64 sum of selected squares ([n])."""
    weights = (squares / max(1, numel)).to(dtype)
    total = torch.sum(weights).item()
    if abs(total) < SCE_EPS:
        return torch.ones(n, dtype=dtype, device=device) / n
    return weights / total
