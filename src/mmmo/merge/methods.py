"""Merge methods as pure tensor functions, with the same math and defaults as mergekit 0.1.5.

Every method works on task vectors: `deltas[i] = model_i - base`, stacked along dim 0. The generalized task
arithmetic recipe (mergekit's `GeneralizedTaskArithmeticMerge`) is, per tensor:

1. sparsify each task vector: TIES keeps the `k = max(1, int(density * numel))` largest magnitudes; DARE keeps
   each entry with probability `density`, then (with `rescale`, on by default) scales the survivors so the L1
   norm of the task vector is unchanged (mergekit's `RescaleNorm.l1`, not the paper's `1 / density`);
2. multiply by the model weights;
3. with sign consensus (ties, dare_ties): elect each entry's sign from the sign of the weighted sum, keep only
   the contributions that agree (zeros never agree), and sum them; the normalizer is the sum of the weights of
   the agreeing models, 1 where none agrees. Without consensus: plain sum; the normalizer is the sum of the
   weights, 1 where it is below 1e-8 in magnitude;
4. divide by the normalizer when `normalize` (default on for ties, off for task_arithmetic and DARE);
5. multiply by `lambda_`; add to the base.

`linear` is the weighted average of the models themselves (normalize on by default).

Defined edge cases (where mergekit would produce NaN): `linear` with normalize and weights summing to ~0 returns
the base. A density <= 0 removes that model's task vector; a density >= 1 keeps it whole. Equal magnitudes at
the TIES threshold are broken by lowest flat index, so exactly k entries survive, as in mergekit (which breaks
them arbitrarily).

Randomness: a DARE mask is `uniform < density` with the uniforms drawn from a generator seeded by (seed, model
index, tensor name) (`dare_generator`): reproducible, independent of tensor order, nested as density grows.

The simple helpers (`magnitude_prune`, `dare_prune`, `sign_consensus_mask`) follow mergekit step by step and are
the reference; `merge_delta` computes the same thing with fewer passes and reusable buffers (`Workspace`), and is
what the Merger runs for every candidate.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mmmo.errors import MmmoError

Sparsification = Literal["magnitude", "random"]

_RESCALE_EPS = 1e-7  # mergekit's threshold below which an L1 norm is treated as zero (no rescale)
_NORM_EPS = 1e-8  # mergekit's guard on the sum of weights without consensus


@dataclass(frozen=True)
class MethodInfo:
    """How a method sparsifies and combines task vectors, and its mergekit defaults."""

    name: str
    sparsification: Sparsification | None
    consensus: bool
    default_normalize: bool
    default_rescale: bool

    @property
    def uses_density(self) -> bool:
        return self.sparsification is not None


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("linear", None, False, default_normalize=True, default_rescale=False),
        MethodInfo("task_arithmetic", None, False, default_normalize=False, default_rescale=False),
        MethodInfo("ties", "magnitude", True, default_normalize=True, default_rescale=False),
        MethodInfo("dare_ties", "random", True, default_normalize=False, default_rescale=True),
        MethodInfo("dare_linear", "random", False, default_normalize=False, default_rescale=True),
    )
}


def method_info(name: str) -> MethodInfo:
    """The method's description; raises MmmoError naming the supported methods for an unknown name."""
    try:
        return METHODS[name]
    except KeyError:
        raise MmmoError(f"unsupported merge method {name!r} (supported: {', '.join(METHODS)})") from None


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
    """`|delta|_1 / |masked|_1`, or 1 when either norm is below mergekit's 1e-7 (kept on device: no sync)."""
    before = abs_sum(delta) if l1_norm is None else l1_norm.to(_accumulate_dtype(delta.dtype))
    after = abs_sum(masked)
    small = (before < _RESCALE_EPS) | (after < _RESCALE_EPS)
    return torch.where(small, torch.ones_like(before), before / torch.where(small, torch.ones_like(after), after))


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def abs_sum(t: Tensor) -> Tensor:
    """|t|_1 as a 0-d tensor, accumulated in float32 for half types (no temporary for float32)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(t, 1, dtype=torch.float32)
    return torch.linalg.vector_norm(t, 1)


def sign_consensus_mask(weighted: Tensor) -> Tensor:
    """TIES sign election: True where an entry's sign equals the sign of the sum over models (>= 0 is +)."""
    majority_positive = weighted.sum(dim=0) >= 0
    return torch.where(majority_positive, weighted > 0, weighted < 0)


class Workspace:
    """Scratch buffers reused from tensor to tensor: large CPU allocations page-fault on every first touch."""

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, key: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A flat buffer of at least `numel` entries (contents undefined)."""
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel]


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


_SELECT_DIRECT = 1 << 17  # tensors up to this size select the threshold with one kthvalue


@functools.lru_cache(maxsize=128)
def _sample_index(numel: int, device: str) -> Tensor:
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
    if numel > _SELECT_DIRECT:
        sample = torch.sort(mag[_sample_index(numel, str(mag.device))]).values
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


def _magnitude_row(delta: Tensor, density: float, w: float, row: Tensor, ws: Workspace) -> None:
    """row = w * (delta with all but its k largest magnitudes zeroed); ties at the threshold: lowest index first."""
    numel = delta.numel()
    k = magnitude_keep_count(numel, density)
    if k >= numel:
        torch.mul(delta, w, out=row)
        return
    if k == 0:
        row.zero_()
        return
    sel_dtype = delta.dtype
    if delta.device.type == "cpu" and delta.dtype in (torch.float16, torch.bfloat16):
        sel_dtype = torch.float32  # CPU selection kernels are slow or missing for half types
    mag = ws.get("mag", numel, sel_dtype, delta.device)
    if sel_dtype == delta.dtype:
        torch.abs(delta, out=mag)
    else:
        mag.copy_(delta).abs_()
    t, n_less, ties = _kth_largest(mag, k, ws)
    fmask = ws.get("fmask", numel, delta.dtype, delta.device)
    torch.ge(mag, t, out=fmask)
    n_keep = numel - n_less
    if n_keep > k:  # equal magnitudes at the threshold: keep exactly k, as mergekit does
        if ties is None:
            at = ws.get("at", numel, torch.bool, delta.device)
            torch.eq(mag, t, out=at)
            ties = at.nonzero().squeeze(1)
        fmask[ties[k - (n_keep - ties.numel()):]] = 0
    # w * (delta * mask) in one pass; the mask product is exact, so this rounds once, like mergekit.
    torch.addcmul(torch.zeros((), dtype=delta.dtype, device=delta.device), delta, fmask, value=w, out=row)


def _dare_row(
    delta: Tensor,
    density: float,
    w: float,
    row: Tensor,
    ws: Workspace,
    generator: torch.Generator | None,
    rescale: bool,
    l1_norm: Tensor | None,
) -> None:
    """row = w * DARE(delta): keep where uniform < density, then (rescale) restore the L1 norm."""
    numel = delta.numel()
    if density >= 1:
        torch.mul(delta, w, out=row)
        return
    if density <= 0 or numel == 0:
        row.zero_()
        return
    u = ws.get("uniform", numel, torch.float32, delta.device)
    u.uniform_(generator=generator)
    fmask = ws.get("fmask", numel, delta.dtype, delta.device)
    torch.lt(u, density, out=fmask)
    torch.mul(delta, fmask, out=row)
    if rescale:
        row.mul_(_l1_rescale_factor(delta, row, l1_norm))  # rounded separately from the weight, as mergekit does
    row.mul_(w)


def merge_delta(
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
    l1_norms: Tensor | None = None,
    workspace: Workspace | None = None,
) -> Tensor:
    """The merged tensor minus the base (what `merge_tensor` adds to `base`), in `deltas.dtype`.

    `deltas`: [n_models, *base.shape]; `weights`, `densities`: [n_models]; `generators`: one per model for DARE
    (None draws from torch's default generator); `l1_norms`: optional precomputed |delta_i|_1 for DARE rescale.
    With a `workspace` the result lives in its buffers and is overwritten by the next call using it.
    Models with weight 0 contribute nothing in every method, so they are skipped.
    """
    info = method_info(method)
    n = deltas.shape[0]
    if deltas.shape[1:] != base.shape:
        raise ValueError(f"deltas shape {tuple(deltas.shape)} does not match base {tuple(base.shape)}")
    ws = workspace if workspace is not None else Workspace()
    dtype, device, numel = deltas.dtype, deltas.device, base.numel()
    w = _weights_list(weights, dtype, n)
    do_normalize = info.default_normalize if normalize is None else normalize
    flat = deltas.reshape(n, numel)
    active = [i for i in range(n) if w[i] != 0]
    mixed = ws.get("mixed", numel, dtype, device)

    if not active:
        mixed.zero_()
        if info.name == "linear" and not do_normalize:
            mixed.sub_(base.reshape(-1))  # the weighted sum of the models is 0
        return mixed.view(base.shape)

    if info.sparsification is None:
        # Weighted rows, then one sum (accumulated in float32 for half types): mergekit's rounding, exactly.
        rows = ws.get("rows", len(active) * numel, dtype, device).view(len(active), numel)
        for j, i in enumerate(active):
            torch.mul(flat[i], w[i], out=rows[j])
        torch.sum(rows, dim=0, out=mixed)
        total = float(torch.tensor(w, dtype=dtype).sum())
        if info.name == "linear":
            if do_normalize:
                # Weights summing to ~0 have no average: keep the base (mergekit divides by zero here).
                if abs(total) < _NORM_EPS:
                    mixed.zero_()
                else:
                    mixed.div_(total)
            else:
                mixed.add_(base.reshape(-1), alpha=total - 1.0)  # sum_i w_i (base + delta_i) - base
            return mixed.view(base.shape)
        if do_normalize:
            mixed.div_(total if abs(total) >= _NORM_EPS else 1.0)
        if lambda_ != 1:
            mixed.mul_(lambda_)
        return mixed.view(base.shape)

    dens = _as_densities(densities, n)
    do_rescale = info.default_rescale if rescale is None else rescale
    gens = list(generators) if generators is not None else [None] * n
    if len(gens) != n:
        raise ValueError(f"expected {n} generators, got {len(gens)}")
    rows = ws.get("rows", len(active) * numel, dtype, device).view(len(active), numel)
    for j, i in enumerate(active):
        if info.sparsification == "magnitude":
            _magnitude_row(flat[i], dens[i], w[i], rows[j], ws)
        else:
            norm = None if l1_norms is None else l1_norms[i]
            _dare_row(flat[i], dens[i], w[i], rows[j], ws, gens[i], do_rescale, norm)

    if info.consensus:
        # Elected sign s = +1 where the weighted sum is >= 0 (copysign: -0 only when every term is -0, and then
        # nothing agrees either way). An entry agrees when row * s > 0, so relu(row * s) keeps exactly the
        # agreeing magnitudes and sum_j relu(row_j * s) * s is mergekit's masked sum, bit for bit.
        sign = ws.get("sign", numel, dtype, device)
        torch.sum(rows, dim=0, out=sign)
        torch.copysign(torch.ones((), dtype=dtype, device=device), sign, out=sign)
        rows.mul_(sign).relu_()
        torch.sum(rows, dim=0, out=mixed)
        if do_normalize:
            rows.sign_()  # 1 where model j agrees, else 0
            divisor = ws.get("divisor", numel, dtype, device)
            if dtype in (torch.float32, torch.bfloat16, torch.float64) and all(w[i] >= 2.0**-60 for i in active):
                # Start from 2^-100 instead of 0: it vanishes when added to any weight >= 2^-60 (below half an
                # ulp), and where nothing agrees the divisor stays 2^-100 over a sum of exactly 0, giving
                # mergekit's 0 / 1 without another pass.
                start = torch.full((), 2.0**-100, dtype=dtype, device=device)
                torch.add(start, rows[0], alpha=w[active[0]], out=divisor)
                for j in range(1, len(active)):
                    divisor.add_(rows[j], alpha=w[active[j]])
            else:
                torch.mul(rows[0], w[active[0]], out=divisor)
                for j in range(1, len(active)):
                    divisor.add_(rows[j], alpha=w[active[j]])
                divisor.copy_(torch.where(divisor == 0, torch.ones_like(divisor), divisor))
            mixed.div_(divisor)
        mixed.mul_(sign)
    else:
        torch.sum(rows, dim=0, out=mixed)
        if do_normalize:
            total = float(torch.tensor(w, dtype=dtype).sum())
            mixed.div_(total if abs(total) >= _NORM_EPS else 1.0)
    if lambda_ != 1:
        mixed.mul_(lambda_)
    return mixed.view(base.shape)


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
) -> Tensor:
    """Merge one tensor: `base` plus the method's combination of the task vectors `deltas` ([n_models, ...])."""
    mixed = merge_delta(
        method, base, deltas, weights, densities,
        normalize=normalize, lambda_=lambda_, rescale=rescale, generators=generators,
    )
    return (base + mixed).to(base.dtype)


def linear(base: Tensor, deltas: Tensor, weights: Tensor | Sequence[float], *, normalize: bool = True) -> Tensor:
    """Weighted average of the models `base + deltas[i]` (a weighted sum when not normalized)."""
    return merge_tensor("linear", base, deltas, weights, normalize=normalize)


def task_arithmetic(
    base: Tensor,
    deltas: Tensor,
    weights: Tensor | Sequence[float],
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
) -> Tensor:
    """`base + lambda * sum_i w_i * delta_i` (divided by sum w when normalized)."""
    return merge_tensor("task_arithmetic", base, deltas, weights, normalize=normalize, lambda_=lambda_)


def ties(
    base: Tensor,
    deltas: Tensor,
    weights: Tensor | Sequence[float],
    densities: Tensor | Sequence[float],
    *,
    lambda_: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """TIES: magnitude trim to `density`, sign election, mean of the agreeing weighted task vectors."""
    return merge_tensor("ties", base, deltas, weights, densities, normalize=normalize, lambda_=lambda_)


def dare_ties(
    base: Tensor,
    deltas: Tensor,
    weights: Tensor | Sequence[float],
    densities: Tensor | Sequence[float],
    generators: Sequence[torch.Generator | None] | None = None,
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
) -> Tensor:
    """DARE random drop (L1-rescaled) followed by TIES sign election."""
    return merge_tensor(
        "dare_ties", base, deltas, weights, densities,
        normalize=normalize, lambda_=lambda_, rescale=rescale, generators=generators,
    )


def dare_linear(
    base: Tensor,
    deltas: Tensor,
    weights: Tensor | Sequence[float],
    densities: Tensor | Sequence[float],
    generators: Sequence[torch.Generator | None] | None = None,
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
) -> Tensor:
    """DARE random drop (L1-rescaled) followed by a weighted sum, without sign election."""
    return merge_tensor(
        "dare_linear", base, deltas, weights, densities,
        normalize=normalize, lambda_=lambda_, rescale=rescale, generators=generators,
    )
