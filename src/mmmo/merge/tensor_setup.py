"""The per-tensor half of a fast merge: what is decided for a whole tensor before any entry is written.

Which models take part, each one's TIES cut or DARE draws and rescale factor. Everything after these is
elementwise (`mmmo.merge.chunked`, or the compiled kernel of `mmmo.merge.fused`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.merge.plan import MergePlan
from mmmo.merge.selection import MagnitudeCut, magnitude_cuts
from mmmo.merge.sparsify import rescale_factor
from mmmo.merge.tables import Precomputed, masked_l1, rescale_l1
from mmmo.merge.workspace import Workspace

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


def _weights_list(weights: Tensor | Sequence[float], dtype: torch.dtype, n: int) -> list[float]:
    """Weights as Python floats, rounded to the compute dtype first (mergekit keeps them in that dtype)."""
    w = torch.as_tensor(weights).detach().to(device="cpu", dtype=dtype).reshape(-1)
    if w.numel() != n:
        raise ValueError(f"expected {n} weights, got {w.numel()}")
    return [float(v) for v in w.double().tolist()]


def _as_densities(densities: Tensor | Sequence[float] | None, n: int) -> list[float]:
    if densities is None:
        return [1.0] * n  # mergekit's default density
    values = torch.as_tensor(densities).detach().to("cpu", torch.float64).reshape(-1).tolist()
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
) -> TensorSetup:
    """The decisions for the task vectors `flat` ([n, numel]); `weights`, `densities`: [n] (densities ignored,
    and taken as 1, by methods without density). Only the models that take part get cuts or draws."""
    n = flat.shape[0]
    w = _weights_list(weights, flat.dtype, n)
    dens = _as_densities(densities, n) if plan.method.uses_density else [1.0] * n
    active = [i for i in range(n) if w[i] != 0 and dens[i] > 0]
    cuts: list[MagnitudeCut | None] = []
    draws: list[Tensor | None] = []
    scales: list[float] = []
    if active and plan.method.sparsification == "magnitude":
        cuts = magnitude_cuts(flat, active, dens, tables, ws)
    elif active and plan.method.sparsification == "random":
        draws, scales = _dare_draws(plan, flat, active, dens, generators, tables, ws)
    dtype = flat.dtype
    fold_scales = bool(scales) and dtype in (torch.float32, torch.float64)
    factors = [w[i] * scales[j] for j, i in enumerate(active)] if fold_scales else [w[i] for i in active]
    fast_divisor = dtype in FAST_DIVISOR_DTYPES and all(w[i] >= MIN_FAST_DIVISOR_WEIGHT for i in active)
    return TensorSetup(dtype, active, w, dens, cuts, draws, scales, fold_scales, factors, fast_divisor)
