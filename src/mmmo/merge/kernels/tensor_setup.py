"""The per-tensor half of a fast merge: what is decided for a whole tensor before any entry is written.

Which models take part, each one's TIES cut or DARE draws and rescale factor. Everything after these is
elementwise (`mmmo.merge.kernels.chunked`, or the compiled kernel of `mmmo.merge.kernels.fused`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmmo.merge.kernels.selection import MagnitudeCut, magnitude_cuts, top_cut, trim_chunk
from mmmo.merge.kernels.tables import Precomputed, masked_l1, rescale_l1
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.sparsify import della_epsilon, della_rank_norm, outlier_band, rescale_factor

# Under normalize, a divisor started at 2^-100 vanishes when any weight >= 2^-60 is added (below half an ulp), so
# it needs no pass turning 0 into 1 (see `chunked`); float16's range is too small for 2^-100.
FAST_DIVISOR_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
MIN_FAST_DIVISOR_WEIGHT = 2.0**-60
DIVISOR_START = 2.0**-100


@dataclass(frozen=True)
class TensorSetup:
    """One tensor's per-model decisions. `weights` and `densities` list all n models; `cuts` (TIES), `draws`,
    `scales` (DARE) and `factors` list the `active` ones (weight != 0 and density > 0); cuts, draws and scales
    are empty for methods that do not use them."""

    dtype: torch.dtype  # the compute dtype (the task vectors')
    active: list[int]
    weights: list[float]  # rounded to `dtype` first, as mergekit keeps them
    densities: list[float]
    cuts: list[MagnitudeCut | None]  # None: keep the task vector whole
    draws: list[Tensor | None]  # [numel] float32 uniforms; None: density >= 1, keep whole
    scales: list[float]  # DARE's L1 rescale factor (1 without rescale)
    # DARE's rescale rides in the weight's product: in float32/64 at most an ulp from mergekit's two roundings; in
    # half types that ulp is too coarse, so they keep both.
    fold_scales: bool
    factors: list[float]  # what each active model's sparsified row is multiplied by
    fast_divisor: bool  # normalize may start its divisor at 2^-100 (see FAST_DIVISOR_DTYPES)
    # Breadcrumbs: the row is its `cuts` entry less this cut (None: nothing more to drop)
    inner_cuts: list[MagnitudeCut | None] = field(default_factory=list)
    # DELLA: each active model's flat rank_norm (None: density >= 1) and (density - eps, eps) of its probabilities
    ranks: list[Tensor | None] = field(default_factory=list)
    spreads: list[tuple[float, float]] = field(default_factory=list)
    # Breadcrumbs with the magnitude-rank table: each active model's (ranks, k_inner, k_outer), the band kept being
    # k_inner <= rank < k_outer (None: density >= 1, keep whole); it then has no cuts
    bands: list[tuple[Tensor, int, int] | None] = field(default_factory=list)


def _weights_list(weights: Tensor | Sequence[float], dtype: torch.dtype, n: int) -> list[float]:
    """Weights as Python floats, rounded to the compute dtype first (mergekit keeps them in that dtype)."""
    w = torch.as_tensor(weights).detach().to(device="cpu", dtype=dtype).reshape(-1)
    if w.numel() != n:
        raise ValueError(f"expected {n} weights, got {w.numel()}")
    return [float(v) for v in w.double().tolist()]


def _as_densities(densities: Tensor | Sequence[float] | None, n: int) -> list[float]:
    if densities is None:
        return [1.0] * n  # mergekit's default density
    # float64 from the start: a list of Python floats would otherwise round to float32 (0.02 -> 0.01999...)
    values = torch.as_tensor(densities, dtype=torch.float64).detach().to("cpu").reshape(-1).tolist()
    if len(values) != n:
        raise ValueError(f"expected {n} densities, got {len(values)}")
    return [float(v) for v in values]


def _dare_draws(
    plan: MergePlan,
    flat: Tensor,
    active: list[int],
    dens: list[float],
    generators: Sequence[torch.Generator | None] | None,
    tables: Precomputed,
    ws: Workspace,
) -> tuple[list[Tensor | None], list[float]]:
    """Each active model's DARE draws (from `tables`, else from its generator) and L1 rescale factor."""
    n, numel = flat.shape
    gens = list(generators) if generators is not None else [None] * n
    if len(gens) != n:
        raise ValueError(f"expected {n} generators, got {len(gens)}")
    draws: list[Tensor | None] = []
    scales: list[float] = []
    for j, i in enumerate(active):
        if dens[i] >= 1:
            draws.append(None)
            scales.append(1.0)
            continue
        if tables.uniforms is not None:
            u = tables.uniforms[i]
        else:
            u = ws.get(f"uniform{j}", numel, torch.float32, flat.device)
            u.uniform_(generator=gens[i])
        draws.append(u)
        if plan.method.sparsification != "random":
            continue  # DELLA: its scales need the ranks (`_masked_scales`)
        if not plan.rescale:
            scales.append(1.0)
        elif tables.u_sorted is not None and tables.l1_prefix is not None:
            before = float(tables.l1_prefix[i, -1])
            scales.append(rescale_factor(before, masked_l1(tables.u_sorted[i], tables.l1_prefix[i], dens[i])))
        else:
            fmask = ws.get("fmask", numel, flat.dtype, flat.device)
            torch.lt(u, dens[i], out=fmask)
            masked = ws.get("masked", numel, flat.dtype, flat.device)
            torch.mul(flat[i], fmask, out=masked)
            before = rescale_l1(flat[i]) if tables.l1_norms is None else tables.l1_norms[i]
            scales.append(rescale_factor(float(before), float(rescale_l1(masked))))
    return draws, scales


def tensor_setup(
    plan: MergePlan,
    flat: Tensor,
    weights: Tensor | Sequence[float],
    densities: Tensor | Sequence[float] | None,
    generators: Sequence[torch.Generator | None] | None,
    tables: Precomputed,
    ws: Workspace,
    shape: Sequence[int] | None = None,
    kept_l1: KeptL1 | None = None,
) -> TensorSetup:
    """The decisions for the task vectors `flat` ([n, numel]); `weights`, `densities`: [n] (densities ignored,
    and taken as 1, by methods without density); `shape`: the tensor's (DELLA ranks within its rows); `kept_l1`:
    DELLA's rescale norms in one pass where it can. Only the models that take part get cuts or draws."""
    n = flat.shape[0]
    w = _weights_list(weights, flat.dtype, n)
    dens = _as_densities(densities, n) if plan.method.uses_density else [1.0] * n
    active = [i for i in range(n) if w[i] != 0 and dens[i] > 0]
    cuts: list[MagnitudeCut | None] = []
    inner: list[MagnitudeCut | None] = []
    draws: list[Tensor | None] = []
    scales: list[float] = []
    ranks: list[Tensor | None] = []
    spreads: list[tuple[float, float]] = []
    bands: list[tuple[Tensor, int, int] | None] = []
    kind = plan.method.sparsification
    if active and kind == "magnitude":
        cuts = magnitude_cuts(flat, active, dens, tables, ws)
    elif active and kind == "magnitude_outliers" and tables.mag_rank is not None:
        bands = _bands(plan, tables.mag_rank, active, dens)
    elif active and kind == "magnitude_outliers":
        cuts, inner = _outlier_cuts(plan, flat, active, dens, tables, ws)
    elif active and kind == "random":
        draws, scales = _dare_draws(plan, flat, active, dens, generators, tables, ws)
    elif active and kind == "della_magprune":
        draws, _ = _dare_draws(plan, flat, active, dens, generators, tables, ws)
        ranks, spreads = _della(plan, flat, shape, active, dens, draws, tables)
    if active and plan.rescale and kind in ("magnitude", "magnitude_outliers", "della_magprune"):
        scales = _masked_scales(flat, active, dens, _Masks(cuts, inner, draws, ranks, spreads, bands), tables, ws,
                                kept_l1)
    dtype = flat.dtype
    fold_scales = bool(scales) and dtype in (torch.float32, torch.float64)
    factors = [w[i] * scales[j] for j, i in enumerate(active)] if fold_scales else [w[i] for i in active]
    fast_divisor = dtype in FAST_DIVISOR_DTYPES and all(w[i] >= MIN_FAST_DIVISOR_WEIGHT for i in active)
    return TensorSetup(dtype, active, w, dens, cuts, draws, scales, fold_scales, factors, fast_divisor, inner, ranks,
                       spreads, bands)


def _bands(
    plan: MergePlan, mag_rank: Tensor, active: list[int], dens: list[float]
) -> list[tuple[Tensor, int, int] | None]:
    """Breadcrumbs' band per active model as a range of magnitude ranks (None: density >= 1, keep whole)."""
    numel, gamma = mag_rank.shape[1], plan.value("gamma")
    return [None if dens[i] >= 1 else (mag_rank[i], *outlier_band(numel, dens[i], gamma)) for i in active]


def band_keep(rank: Tensor, k_inner: int, k_outer: int, out: Tensor, scratch: Tensor) -> Tensor:
    """out = 1 where k_inner <= rank < k_outer, else 0 (in out's dtype); `scratch`: a bool buffer of rank's length."""
    torch.ge(rank, k_inner, out=scratch)
    torch.lt(rank, k_outer, out=out)
    return out.mul_(scratch)


def _outlier_cuts(
    plan: MergePlan, flat: Tensor, active: list[int], dens: list[float], tables: Precomputed, ws: Workspace
) -> tuple[list[MagnitudeCut | None], list[MagnitudeCut | None]]:
    """Breadcrumbs' band per active model: the cut keeping its k_outer largest, and the one of its k_inner."""
    numel, gamma = flat.shape[1], plan.value("gamma")
    outer: list[MagnitudeCut | None] = []
    inner: list[MagnitudeCut | None] = []
    for i in active:
        if dens[i] >= 1:
            outer.append(None)
            inner.append(None)
            continue
        k_inner, k_outer = outlier_band(numel, dens[i], gamma)
        outer.append(top_cut(flat, i, k_outer, tables, ws))
        inner.append(None if k_inner <= 0 else top_cut(flat, i, k_inner, tables, ws))
    return outer, inner


def _della(
    plan: MergePlan, flat: Tensor, shape: Sequence[int] | None, active: list[int], dens: list[float],
    draws: list[Tensor | None], tables: Precomputed,
) -> tuple[list[Tensor | None], list[tuple[float, float]]]:
    """Each active model's flat rank_norm (from `tables`, else ranked now over `shape`) and probability spread."""
    epsilon = plan.value("epsilon")
    ranks: list[Tensor | None] = []
    spreads: list[tuple[float, float]] = []
    for j, i in enumerate(active):
        eps = della_epsilon(dens[i], epsilon)
        spreads.append((dens[i] - eps, eps))
        if draws[j] is None:
            ranks.append(None)
        elif tables.ranks is not None:
            ranks.append(tables.ranks[i])
        else:
            row = flat[i] if shape is None else flat[i].view(tuple(shape))
            ranks.append(della_rank_norm(row).reshape(-1))
    return ranks, spreads


def della_keep(u: Tensor, rank: Tensor, spread: tuple[float, float], out: Tensor, ws: Workspace) -> Tensor:
    """out = DELLA's keep mask (1/0 in out's dtype) from draws `u` and `rank` (flat, the length of `out`):
    `u < (density - eps) + rank * 2 * eps`, the probabilities in rank's dtype (in a buffer of `ws`) and mergekit's
    order of operations."""
    low, eps = spread
    p = torch.mul(rank, 2, out=ws.get("della_p", rank.numel(), rank.dtype, rank.device))
    p.mul_(eps).add_(low)
    return torch.lt(u, p, out=out)


@dataclass(frozen=True)
class _Masks:
    """How each active model is sparsified (the lists of `TensorSetup`), for its rescale factor."""

    cuts: list[MagnitudeCut | None]
    inner: list[MagnitudeCut | None]
    draws: list[Tensor | None]
    ranks: list[Tensor | None]
    spreads: list[tuple[float, float]]
    bands: list[tuple[Tensor, int, int] | None]


# DELLA's kept |delta_i|_1 of every model in one pass (`mmmo.merge.kernels.fused.della_kept_l1`): (rows, draws, ranks,
# spreads) -> one float64 sum per row, or None where it cannot run (then each is summed eagerly)
KeptL1 = Callable[[list[Tensor], list[Tensor], list[Tensor], list[tuple[float, float]]], "list[float] | None"]


def _masked_scales(
    flat: Tensor, active: list[int], dens: list[float], masks: _Masks, tables: Precomputed, ws: Workspace,
    kept_l1: KeptL1 | None,
) -> list[float]:
    """The L1 rescale factor of each active model's sparsified row: a pass over the tensor per model, or DELLA's
    kept norms of all models in one compiled pass (`kept_l1`, where it runs)."""
    numel = flat.shape[1]
    row = ws.get("rescale_row", numel, flat.dtype, flat.device)
    scratch = ws.get("rescale_scratch", numel, flat.dtype, flat.device)
    after = _della_kept_l1(flat, active, masks, kept_l1, ws) if masks.ranks and kept_l1 is not None else None
    scales: list[float] = []
    for j, i in enumerate(active):
        x = flat[i]
        if dens[i] >= 1:
            scales.append(1.0)
            continue
        before = rescale_l1(x) if tables.l1_norms is None else tables.l1_norms[i]
        if after is not None:
            scales.append(rescale_factor(float(before), float(torch.tensor(after[i], dtype=torch.float64).float())))
            continue
        if masks.ranks:
            u, r = masks.draws[j], masks.ranks[j]
            assert u is not None and r is not None  # density < 1
            torch.mul(x, della_keep(u, r, masks.spreads[j], scratch, ws), out=row)
        elif masks.bands:
            band = masks.bands[j]
            assert band is not None  # density < 1
            keep = ws.get("rescale_band", numel, torch.bool, flat.device)
            torch.mul(x, band_keep(band[0], band[1], band[2], scratch, keep), out=row)
        else:
            _trimmed(x, masks.cuts[j], row, ws)
            if masks.inner and masks.inner[j] is not None:
                _trimmed(x, masks.inner[j], scratch, ws)
                row.sub_(scratch)
        scales.append(rescale_factor(float(before), float(rescale_l1(row))))
    return scales


def _della_kept_l1(flat: Tensor, active: list[int], masks: _Masks, kept_l1: KeptL1, ws: Workspace) -> list[float] | None:
    """DELLA's kept |delta_i|_1 of every model (n of them: one compiled variant whichever models are drawn; the
    others keep nothing, their sums unused), or None where `kept_l1` cannot run."""
    n, numel = flat.shape
    rank_dtype = next((r.dtype for r in masks.ranks if r is not None), torch.float32)
    no_draws = ws.zeros("l1_draws", numel, torch.float32, flat.device)
    no_ranks = ws.zeros("l1_ranks", numel, rank_dtype, flat.device)
    draws, ranks, spreads = [no_draws] * n, [no_ranks] * n, [(0.0, 0.0)] * n  # u < 0: keeps nothing
    for j, i in enumerate(active):
        u, r = masks.draws[j], masks.ranks[j]
        if u is not None and r is not None:
            draws[i], ranks[i], spreads[i] = u, r, masks.spreads[j]
    return kept_l1(list(flat), draws, ranks, spreads)


def _trimmed(x: Tensor, cut: MagnitudeCut | None, out: Tensor, ws: Workspace) -> None:
    """out = the whole task vector `x` trimmed by `cut` (None keeps it whole)."""
    if cut is None:
        out.copy_(x)
        return
    trim_chunk(x, cut, out, ws)
    if cut.drop is not None and cut.drop.numel():
        out[cut.drop] = 0
