"""Sparsification, step 1 of task arithmetic, as mergekit does it: the TIES trim and the DARE drop of one task vector.

TIES keeps the `k = max(1, int(density * numel))` largest magnitudes (equal magnitudes at the threshold: lowest
flat index first, so exactly k survive; mergekit breaks them arbitrarily). DARE keeps each entry with probability
`density`, then (with `rescale`) scales the survivors so the task vector's L1 norm is unchanged (mergekit's
`RescaleNorm.l1`, not the paper's `1 / density`). A density <= 0 removes the task vector, >= 1 keeps it whole.

A DARE mask is `uniform < density` with the uniforms drawn from a generator seeded by (seed, model index, tensor
name) (`dare_generator`): reproducible, independent of tensor order, nested as density grows.

These are the reference: the fast path (`mmmo.merge.selection`, `mmmo.merge.tables`) gives the same masks.
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
    numel = delta.numel()
    if density >= 1:
        return None
    k = magnitude_keep_count(numel, density)
    if k == 0:
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
