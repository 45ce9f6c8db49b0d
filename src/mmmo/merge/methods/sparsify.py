"""Sparsification, step 1 of task arithmetic, as mergekit does it: the TIES trim and the DARE drop of one task vector.

TIES keeps the `k = max(1, int(density * numel))` largest magnitudes (equal magnitudes at the threshold: lowest
flat index first, so exactly k survive; mergekit breaks them arbitrarily). DARE keeps each entry with probability
`density`, then (with `rescale`) scales the survivors so the task vector's L1 norm is unchanged (mergekit's
`RescaleNorm.l1`, not the paper's `1 / density`). A density <= 0 removes the task vector, >= 1 keeps it whole.

A DARE mask is `uniform < density` with the uniforms drawn from a generator seeded by (seed, model index, tensor
name) (`dare_generator`): reproducible, independent of tensor order, nested as density grows.

Model Breadcrumbs (`outlier_mask`) drops the smallest magnitudes and `gamma` of the largest; DELLA
(`della_prune`) keeps each entry with a probability from density - epsilon to density + epsilon by its magnitude's
rank in its row, with draws as DARE's.

These are the reference: the fast path (`mmmo.merge.kernels.selection`, `mmmo.merge.kernels.tables`) gives the same masks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

RESCALE_EPS = 1e-7  # mergekit's threshold below which an L1 norm is treated as zero (no rescale)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over `dtype` accumulate in: float32 for half types, else `dtype` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ---- TIES: keep the largest magnitudes


def magnitude_keep_count(numel: int, density: float) -> int:
    """How many entries TIES keeps: mergekit's `max(1, int(density * numel))` for 0 < density < 1."""
    if numel == 0 or density <= 0:
        return 0
    if density >= 1:
        return numel
    # The 1e-6 absorbs float32-rounded densities (0.7 stored as 0.69999999) so k matches the float64 value.
    return max(1, int(density * numel + 1e-6))


def magnitude_mask(delta: Tensor, density: float) -> Tensor | None:
    """Boolean mask of the `k` largest |delta| (ties at the threshold: lowest flat index first); None keeps all."""
    if density >= 1:
        return None
    return top_mask(delta, magnitude_keep_count(delta.numel(), density))


def top_mask(delta: Tensor, k: int) -> Tensor:
    """Boolean mask of the `k` largest |delta| (0 <= k <= numel; ties at the threshold: lowest flat index first)."""
    numel = delta.numel()
    if k >= numel:
        return torch.ones_like(delta, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    mag = delta.detach().reshape(-1).abs()
    if mag.device.type == "cpu" and mag.dtype in (torch.float16, torch.bfloat16):
        mag = mag.float()  # CPU selection kernels are slow or missing for half types
    # k-th largest = (numel - k + 1)-th smallest: a selection, not a sort.
    threshold = torch.kthvalue(mag, numel - k + 1).values
    keep = mag >= threshold
    n_keep = int(keep.sum())
    if n_keep > k:  # equal magnitudes at the threshold: keep exactly k, as mergekit does
        above = mag > threshold
        at = mag == threshold
        room = k - int(above.sum())
        at &= torch.cumsum(at, 0) <= room
        keep = above | at
    return keep.view(delta.shape)


def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """TIES trim: zero all but the `max(1, int(density * numel))` largest-magnitude entries."""
    keep = magnitude_mask(delta, density)
    return delta if keep is None else delta * keep


# ---- Model Breadcrumbs: drop the largest and the smallest magnitudes


def outlier_band(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """Which magnitudes Breadcrumbs keeps, as (k_inner, k_outer): the `k_outer` largest less the `k_inner` largest.

    mergekit keeps `int(density * numel)` entries after dropping `int(gamma * numel)` largest ones, dropping
    fewer of the largest where the smallest run out.
    """
    target = int(density * numel)
    n_top = int(gamma * numel)
    n_bottom = max(0, numel - target - n_top)
    # mergekit keeps ascending ranks [n_bottom, n_bottom + target), cut off at numel
    hi = min(numel, n_bottom + target)
    lo = min(n_bottom, hi)
    return numel - hi, numel - lo


def outlier_mask(delta: Tensor, density: float, gamma: float) -> Tensor | None:
    """Breadcrumbs' mask (descending magnitude, ties at either edge: lowest flat index first); None keeps all."""
    if density >= 1:
        return None
    k_inner, k_outer = outlier_band(delta.numel(), density, gamma)
    return top_mask(delta, k_outer) & ~top_mask(delta, k_inner)


# ---- DELLA: keep with a probability that rises with the magnitude's rank


def della_epsilon(density: float, epsilon: float) -> float:
    """DELLA's spread of keep probabilities, `density` +- epsilon. mergekit refuses an epsilon with density +-
    epsilon outside (0, 1); mmmo narrows it to fit (min(epsilon, density, 1 - density)), so a search can reach
    every density: the same masks wherever mergekit accepts the values."""
    return max(0.0, min(epsilon, density, 1.0 - density))


def della_work_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """mergekit's dtype for DELLA's ranks and probabilities: the tensor's own, but float32 for CPU float16/32."""
    return dtype if device.type != "cpu" or dtype == torch.bfloat16 else torch.float32


def della_rank_norm(delta: Tensor) -> Tensor:
    """Each entry's magnitude rank within its row (dim 1 of a 2-d+ tensor; a 1-d tensor is one row), scaled to
    [0, 1] as mergekit does, in `della_work_dtype` (shape of `delta`; equal magnitudes: lower index ranks lower).
    A row of one entry gets 1/2."""
    work = della_work_dtype(delta.dtype, delta.device)
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    order = torch.sort(rows.abs(), dim=1, stable=True).indices
    ranks = order.argsort(dim=1).to(work) + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    return torch.nan_to_num(norm, nan=0.5).reshape(delta.shape)


def della_probabilities(rank_norm: Tensor, density: float, epsilon: float) -> Tensor:
    """Keep probabilities `(density - eps) + rank_norm * 2 * eps` in mergekit's order of operations."""
    eps = della_epsilon(density, epsilon)
    return (density - eps) + rank_norm * 2 * eps


def della_prune(
    delta: Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator | None = None,
    *,
    rescale: bool = True,
) -> Tensor:
    """DELLA's MagPrune: keep each entry with its rank's probability (`uniform < p`, draws as DARE's), then with
    `rescale` restore the L1 norm (mergekit's rescale, not the paper's 1 / p)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    p = della_probabilities(della_rank_norm(delta), density, epsilon)
    keep = torch.empty(delta.shape, dtype=torch.float32, device=delta.device).uniform_(generator=generator) < p
    return l1_rescaled(delta, keep) if rescale else delta * keep


# ---- DARE: random drop, L1 rescale


def dare_seed(seed: int, model_index: int, tensor_name: str) -> int:
    """A stable 63-bit seed for one model's DARE mask on one tensor (independent of tensor order)."""
    digest = hashlib.blake2b(f"{seed}\x00{model_index}\x00{tensor_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dare_generator(
    seed: int, model_index: int, tensor_name: str, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A generator seeded from (seed, model index, tensor name); the draws differ between CPU and CUDA."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(dare_seed(seed, model_index, tensor_name))
    return gen


def bernoulli_mask(
    shape: Sequence[int] | torch.Size,
    density: float,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Keep each entry with probability `density`: `uniform < density`, so masks nest as density grows."""
    u = torch.empty(tuple(shape), dtype=torch.float32, device=device).uniform_(generator=generator)
    return u < density


def dare_prune(
    delta: Tensor,
    density: float,
    generator: torch.Generator | None = None,
    *,
    rescale: bool = True,
    l1_norm: Tensor | None = None,
) -> Tensor:
    """DARE drop: random keep with probability `density`; with `rescale`, restore the L1 norm (mergekit)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    keep = bernoulli_mask(delta.shape, density, generator, delta.device)
    if not rescale:
        return delta * keep
    return l1_rescaled(delta, keep, l1_norm)


def l1_rescaled(delta: Tensor, keep: Tensor, l1_norm: Tensor | None = None) -> Tensor:
    """`delta * keep`, scaled so its L1 norm equals that of `delta` (unscaled when either norm is < 1e-7)."""
    masked = delta * keep
    return masked * _l1_rescale_factor(delta, masked, l1_norm)


def _l1_rescale_factor(delta: Tensor, masked: Tensor, l1_norm: Tensor | None = None) -> Tensor:
    """`|delta|_1 / |masked|_1`, or 1 when either norm is below mergekit's 1e-7 (kept on device: no sync).

    The norms are `abs().sum()` as in mergekit (a cascaded sum; `linalg.vector_norm(t, 1)` is ~1e-5 off in
    float32 on large CPU tensors), accumulated in float32 for half types.
    """
    acc = accumulate_dtype(delta.dtype)
    before = torch.sum(delta.abs(), dtype=acc) if l1_norm is None else l1_norm.to(acc)
    after = torch.sum(masked.abs(), dtype=acc)
    small = (before < RESCALE_EPS) | (after < RESCALE_EPS)
    return torch.where(small, torch.ones_like(before), before / torch.where(small, torch.ones_like(after), after))


def rescale_factor(before: float, after: float) -> float:
    """mergekit's L1 rescale `before / after` from two norms, or 1 when either is below its 1e-7."""
    return 1.0 if before < RESCALE_EPS or after < RESCALE_EPS else before / after
