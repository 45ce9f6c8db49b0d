"""The TIES trim on the fast path: one threshold (a `MagnitudeCut`) per task vector, then applied chunk by chunk.

The cut is found by a selection over the tensor (`cut_by_selection`, a sampled bracket around the threshold for
large tensors) or, with the search-wide sorted magnitudes (`mmmo.merge.kernels.tables`), by a lookup (`cut_from_sorted`).
Either way exactly `magnitude_keep_count` entries survive, the same ones as `sparsify.magnitude_mask`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from mmmo.merge.kernels.tables import Precomputed
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.methods.sparsify import magnitude_keep_count

SELECT_DIRECT = 1 << 17  # tensors up to this size select the threshold with one kthvalue


class MagnitudeCut(NamedTuple):
    """How TIES trims one task vector: keep |x| >= t; of the entries with |x| == t keep only the first `room` in
    flat order (None: all of them), so exactly k survive. `drop`, when known, lists the flat positions of the
    ties past the first `room` (ascending), so no chunk has to look for them."""

    t: float
    below: float  # the largest value of the dtype under t: |x| > below  <=>  |x| >= t
    room: int | None
    drop: Tensor | None = None


KEEP_NONZERO = MagnitudeCut(0.0, 0.0, None)  # threshold 0: kept zeros contribute nothing, so keep |x| > 0
KEEP_NOTHING = MagnitudeCut(math.inf, math.inf, None)


def _prev_float(t: Tensor) -> float:
    """The largest value of t's floating dtype below the positive finite 0-d `t` (its bit pattern minus one)."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return float((t.reshape(1).view(bits) - 1).view(t.dtype))


@functools.lru_cache(maxsize=128)
def bracket_sample(numel: int, device: str) -> Tensor:
    """Fixed pseudo-random positions used to bracket a magnitude threshold (deterministic per size)."""
    size = min(1 << 16, max(1 << 12, numel // 256))
    gen = torch.Generator().manual_seed(numel)
    return torch.randint(0, numel, (size,), generator=gen).to(device)


def _kth_largest(mag: Tensor, k: int, ws: Workspace) -> tuple[Tensor, int, Tensor | None]:
    """The k-th largest value `t` of flat `mag` (exact), how many entries are below it, and, when known
    without another pass, the flat positions of the entries equal to it (ascending).

    Large tensors avoid a full selection: sorted sample quantiles bracket the threshold, one pass counts what
    lies below the bracket and extracts what lies inside it, and the exact value is selected among those few.
    """
    numel = mag.numel()
    rank = numel - k  # t is the (rank + 1)-th smallest
    if numel > SELECT_DIRECT:
        sample = torch.sort(mag[bracket_sample(numel, str(mag.device))]).values
        s = sample.numel()
        p = rank / numel
        margin = int(6.0 * math.sqrt(s * p * (1.0 - p))) + 16
        lo_i, hi_i = int(p * s) - margin, int(p * s) + margin
        inside = ws.get("bracket", numel, torch.bool, mag.device)
        below = 0
        if lo_i > 0:
            torch.ge(mag, sample[lo_i], out=inside)
            below = numel - int(torch.count_nonzero(inside))
        else:
            inside.fill_(True)
        if hi_i < s - 1:
            upper = ws.get("bracket_hi", numel, torch.bool, mag.device)
            torch.le(mag, sample[hi_i], out=upper)
            inside.logical_and_(upper)
        idx = inside.nonzero().squeeze(1)
        cand = mag[idx]
        j = rank - below
        if 0 <= j < cand.numel():
            t = torch.kthvalue(cand, j + 1).values
            return t, below + int(torch.count_nonzero(cand < t)), idx[cand == t]
        # The sample missed the rank (very unlikely): fall through to the full selection.
    t = torch.kthvalue(mag, rank + 1).values
    return t, int(torch.count_nonzero(mag < t)), None


def cut_from_sorted(sorted_mag: Tensor, k: int, positions: Tensor | None = None) -> MagnitudeCut:
    """The cut keeping the k largest (0 < k < numel) of the magnitudes whose ascending copy is `sorted_mag`;
    with `positions` (see `tables.sorted_magnitudes`) it also lists the ties to drop."""
    numel = sorted_mag.numel()
    pos = numel - k  # t is the (pos + 1)-th smallest; pos >= 1
    lower, t = sorted_mag[pos - 1 : pos + 1].tolist()
    if t == 0:
        return KEEP_NONZERO
    t_tensor = sorted_mag[pos : pos + 1]
    if lower < t:  # t is unique at the cut: exactly k entries are >= t
        return MagnitudeCut(t, _prev_float(t_tensor), None)
    n_le = int(torch.searchsorted(sorted_mag, t_tensor, right=True))
    room = k - (numel - n_le)
    if positions is None:
        return MagnitudeCut(t, _prev_float(t_tensor), room)
    # The ties occupy sorted slots [n_less, n_le), in ascending position: the first `room` of them stay.
    n_less = int(torch.searchsorted(sorted_mag, t_tensor, right=False))
    drop = positions[n_less + room : n_le].to(torch.int64)
    return MagnitudeCut(t, _prev_float(t_tensor), room, drop)


def cut_by_selection(delta: Tensor, k: int, ws: Workspace) -> MagnitudeCut:
    """The cut keeping the k largest |delta| (0 < k < numel) without a sorted copy: a selection pass."""
    numel = delta.numel()
    sel_dtype = delta.dtype
    if delta.device.type == "cpu" and delta.dtype in (torch.float16, torch.bfloat16):
        sel_dtype = torch.float32  # CPU selection kernels are slow or missing for half types
    mag = ws.get("mag", numel, sel_dtype, delta.device)
    if sel_dtype == delta.dtype:
        torch.abs(delta, out=mag)
    else:
        mag.copy_(delta).abs_()
    t, n_less, ties = _kth_largest(mag, k, ws)
    tv = float(t)
    if tv == 0:
        return KEEP_NONZERO
    below = _prev_float(t.to(delta.dtype))  # t is a value of delta, so exact in its dtype
    n_keep = numel - n_less
    if n_keep == k:
        return MagnitudeCut(tv, below, None)
    n_at = ties.numel() if ties is not None else int(torch.count_nonzero(mag == t))
    return MagnitudeCut(tv, below, k - (n_keep - n_at))


def magnitude_cuts(
    flat: Tensor, active: list[int], densities: list[float], tables: Precomputed, ws: Workspace
) -> list[MagnitudeCut | None]:
    """The cut of each active model's task vector (rows of `flat`, [n, numel]); None keeps it whole."""
    numel = flat.shape[1]
    return [top_cut(flat, i, magnitude_keep_count(numel, densities[i]), tables, ws) for i in active]


def top_cut(flat: Tensor, i: int, k: int, tables: Precomputed, ws: Workspace) -> MagnitudeCut | None:
    """The cut keeping the k largest |flat[i]| (a lookup with the sorted tables, else a selection); None keeps
    the whole row."""
    numel = flat.shape[1]
    if k >= numel:
        return None
    if k <= 0:
        return KEEP_NOTHING
    if tables.sorted_mag is not None:
        positions = None if tables.sorted_pos is None else tables.sorted_pos[i]
        return cut_from_sorted(tables.sorted_mag[i], k, positions)
    return cut_by_selection(flat[i], k, ws)


def trim_chunk(
    x: Tensor, cut: MagnitudeCut, row: Tensor, ws: Workspace, seen: int = 0, drop: Tensor | None = None
) -> int:
    """row = x with the entries outside `cut` zeroed; returns the ties at t met so far.

    With `cut.drop`, `drop` holds the chunk-relative positions of the ties to zero here; without, `seen` counts
    the ties at t met in earlier chunks of the same task vector (0 for the first or only chunk).
    """
    room = cut.room
    if cut.drop is not None:
        torch.ops.aten.hardshrink.out(x, cut.below, out=row)
        if drop is not None and drop.numel():
            row[drop] = 0
        return seen
    if room is None or seen >= room:
        # No tie to keep from here on: strictly above t (or, with room None, at or above it).
        torch.ops.aten.hardshrink.out(x, cut.below if room is None else cut.t, out=row)
        return seen
    torch.ops.aten.hardshrink.out(x, cut.below, out=row)
    c = x.numel()
    mag = ws.get("tie_mag", c, x.dtype, x.device)
    at = ws.get("tie_at", c, torch.bool, x.device)
    torch.abs(x, out=mag)
    torch.eq(mag, cut.t, out=at)
    count = int(torch.count_nonzero(at))
    if seen + count > room:  # the last kept tie is in this chunk: drop the ones after it
        row[at.nonzero().squeeze(1)[room - seen :]] = 0
    return seen + count
