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
the reference; `merge_into` (and `merge_delta` on top of it) computes the same thing with fewer passes and reusable
buffers (`Workspace`), and is what the Merger runs for every candidate. It fixes the per-tensor quantities first
(the TIES threshold, the DARE rescale factor), then does all the elementwise work over cache-sized chunks on CPU.
Tables that depend only on the task vectors (`sorted_magnitudes`, `dare_tables`, held in `Precomputed`) turn those
per-tensor quantities into lookups and replace the DARE draws, for every candidate of a search. For ties and
dare_ties, `merge_into(fused=True)` replaces the chunked passes by one compiled kernel (`mmmo.merge.fused`).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from mmmo.errors import MmmoError
from mmmo.merge import fused as fused_kernel

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
    """`|delta|_1 / |masked|_1`, or 1 when either norm is below mergekit's 1e-7 (kept on device: no sync).

    The norms are `abs().sum()` as in mergekit (a cascaded sum; `linalg.vector_norm(t, 1)` is ~1e-5 off in
    float32 on large CPU tensors), accumulated in float32 for half types.
    """
    acc = _accumulate_dtype(delta.dtype)
    before = torch.sum(delta.abs(), dtype=acc) if l1_norm is None else l1_norm.to(acc)
    after = torch.sum(masked.abs(), dtype=acc)
    small = (before < _RESCALE_EPS) | (after < _RESCALE_EPS)
    return torch.where(small, torch.ones_like(before), before / torch.where(small, torch.ones_like(after), after))


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def abs_sum(t: Tensor) -> Tensor:
    """|t|_1 as a float64 0-d tensor, accumulated in float64 (a float32 norm drifts ~1e-5 on large tensors)."""
    return torch.sum(t.abs(), dtype=torch.float64)


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
        return self._buffer(key, numel, dtype, device, torch.empty)

    def zeros(self, key: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A flat buffer of `numel` zeros (kept apart from `get`'s buffers, so nothing writes into it)."""
        return self._buffer(f"zeros:{key}", numel, dtype, device, torch.zeros)

    def _buffer(
        self, key: str, numel: int, dtype: torch.dtype, device: torch.device, make: Callable[..., Tensor]
    ) -> Tensor:
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = make(max(numel, 1), dtype=dtype, device=device)
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


# ---- TIES trim: a threshold per task vector, applied chunk by chunk

_CHUNK = 1 << 18  # CPU elements per chunk: the ~25 elementwise passes after selection then run in cache, not DRAM


class MagnitudeCut(NamedTuple):
    """How TIES trims one task vector: keep |x| >= t; of the entries with |x| == t keep only the first `room` in
    flat order (None: all of them), so exactly k survive. `drop`, when known, lists the flat positions of the
    ties past the first `room` (ascending), so no chunk has to look for them."""

    t: float
    below: float  # the largest value of the dtype under t: |x| > below  <=>  |x| >= t
    room: int | None
    drop: Tensor | None = None


_KEEP_NONZERO = MagnitudeCut(0.0, 0.0, None)  # threshold 0: kept zeros contribute nothing, so keep |x| > 0


def _prev_float(t: Tensor) -> float:
    """The largest value of t's floating dtype below the positive finite 0-d `t` (its bit pattern minus one)."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return float((t.reshape(1).view(bits) - 1).view(t.dtype))


def sorted_magnitudes(deltas: Tensor) -> tuple[Tensor, Tensor]:
    """Per task vector, |delta_i| ascending ([n, numel], exact, in the deltas' dtype) and the flat position each
    came from ([n, numel] int32 (int64 past 2^31 entries); equal magnitudes in ascending position).

    Computed once per search: every later density's TIES threshold, and the positions of the ties it must drop,
    are then lookups (`cut_from_sorted`) instead of a selection over the tensor.
    """
    n = deltas.shape[0]
    mag = deltas.detach().reshape(n, -1).abs()
    numel = mag.shape[1]
    pos_dtype = torch.int32 if numel < 2**31 else torch.int64
    if mag.device.type == "cpu" and mag.dtype != torch.float64 and numel < 2**31:
        import numpy as np

        # One int64 sort per row (NumPy's vectorised sort is several times faster than torch.sort on CPU):
        # magnitudes are >= 0, so their float32 bits in the high word order like the values (exact for half
        # types), and the position in the low word orders the ties.
        values = torch.empty_like(mag)
        positions = torch.empty(mag.shape, dtype=pos_dtype)
        index = torch.arange(numel, dtype=torch.int64)
        for i in range(n):
            keys = (mag[i].float().view(torch.int32).to(torch.int64) << 32) | index
            keys = torch.from_numpy(np.sort(keys.numpy()))
            values[i] = (keys >> 32).to(torch.int32).view(torch.float32)
            positions[i] = (keys & 0x7FFFFFFF).to(torch.int32)  # the low word
        return values, positions
    values, order = torch.sort(mag, dim=1, stable=True)
    return values, order.to(pos_dtype)


def cut_from_sorted(sorted_mag: Tensor, k: int, positions: Tensor | None = None) -> MagnitudeCut:
    """The cut keeping the k largest (0 < k < numel) of the magnitudes whose ascending copy is `sorted_mag`;
    with `positions` (see `sorted_magnitudes`) it also lists the ties to drop."""
    numel = sorted_mag.numel()
    pos = numel - k  # t is the (pos + 1)-th smallest; pos >= 1
    lower, t = sorted_mag[pos - 1 : pos + 1].tolist()
    if t == 0:
        return _KEEP_NONZERO
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


def _cut_by_selection(delta: Tensor, k: int, ws: Workspace) -> MagnitudeCut:
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
        return _KEEP_NONZERO
    below = _prev_float(t.to(delta.dtype))  # t is a value of delta, so exact in its dtype
    n_keep = numel - n_less
    if n_keep == k:
        return MagnitudeCut(tv, below, None)
    n_at = ties.numel() if ties is not None else int(torch.count_nonzero(mag == t))
    return MagnitudeCut(tv, below, k - (n_keep - n_at))


def _trim_chunk(
    x: Tensor, cut: MagnitudeCut, seen: list[int], j: int, row: Tensor, ws: Workspace, drop: Tensor | None = None
) -> None:
    """row = x with the entries outside `cut` zeroed. With `cut.drop`, `drop` holds the chunk-relative positions
    of the ties to zero here; without, seen[j] counts the ties at t met in earlier chunks."""
    room = cut.room
    if cut.drop is not None:
        torch.ops.aten.hardshrink.out(x, cut.below, out=row)
        if drop is not None and drop.numel():
            row[drop] = 0
        return
    if room is None or seen[j] >= room:
        # No tie to keep from here on: strictly above t (or, with room None, at or above it).
        torch.ops.aten.hardshrink.out(x, cut.below if room is None else cut.t, out=row)
        return
    torch.ops.aten.hardshrink.out(x, cut.below, out=row)
    c = x.numel()
    mag = ws.get("tie_mag", c, x.dtype, x.device)
    at = ws.get("tie_at", c, torch.bool, x.device)
    torch.abs(x, out=mag)
    torch.eq(mag, cut.t, out=at)
    count = int(torch.count_nonzero(at))
    if seen[j] + count > room:  # the last kept tie is in this chunk: drop the ones after it
        row[at.nonzero().squeeze(1)[room - seen[j] :]] = 0
    seen[j] += count


def _magnitude_row(delta: Tensor, density: float, w: float, row: Tensor, ws: Workspace) -> None:
    """row = w * (delta with all but its k largest magnitudes zeroed); ties at the threshold: lowest index first."""
    numel = delta.numel()
    k = magnitude_keep_count(numel, density)
    if k >= numel:
        torch.mul(delta, w, out=row)
    elif k == 0:
        row.zero_()
    else:
        _trim_chunk(delta, _cut_by_selection(delta, k, ws), [0], 0, row, ws)
        row.mul_(w)


# ---- DARE: draws fixed for the whole search


def dare_tables(deltas: Tensor, generators: Sequence[torch.Generator | None]) -> tuple[Tensor, Tensor, Tensor]:
    """What DARE needs for any density, per task vector ([n, numel] float32 each): the uniforms drawn from
    `generators[i]` (position order, the exact draws `bernoulli_mask` makes), the same sorted, and |delta_i|
    accumulated in that sorted order (in float64, stored rounded to float32).

    The masks `u < density` then need no RNG, and |delta_i * mask|_1, which DARE's rescale needs before any
    entry can be written, is one lookup (`masked_l1`) instead of a pass over the tensor.
    """
    n = deltas.shape[0]
    flat = deltas.detach().reshape(n, -1)
    u = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    u_sorted = torch.empty_like(u)
    prefix = torch.empty_like(u)
    for i in range(n):
        u[i].uniform_(generator=generators[i])
        # Sort (u, |delta|) pairs by u with one int64 sort: both are >= 0, so their float32 bit patterns order
        # like the values, and u's bits in the high word decide the order.
        mag = flat[i].abs().float()
        keys = (u[i].view(torch.int32).to(torch.int64) << 32) | mag.view(torch.int32).to(torch.int64)
        if keys.device.type == "cpu":
            import numpy as np

            keys = torch.from_numpy(np.sort(keys.numpy()))
        else:
            keys = torch.sort(keys).values
        u_sorted[i] = (keys >> 32).to(torch.int32).view(torch.float32)
        prefix[i] = torch.cumsum((keys & 0xFFFFFFFF).to(torch.int32).view(torch.float32).double(), 0)
        prefix[i, -1] = rescale_l1(flat[i])  # the same total whichever order summed it (see `rescale_l1`)
    return u, u_sorted, prefix


def masked_l1(u_sorted: Tensor, prefix: Tensor, density: float) -> float:
    """|delta * (u < density)|_1 from one row of `dare_tables` (the comparison in float32, as `torch.lt` makes it)."""
    d32 = torch.tensor([density], dtype=torch.float32, device=u_sorted.device)
    m = int(torch.searchsorted(u_sorted, d32))  # how many draws are < density
    return 0.0 if m == 0 else float(prefix[m - 1])


def rescale_l1(t: Tensor) -> Tensor:
    """|t|_1 for DARE's rescale: summed in float64 and rounded to float32, which is what `dare_tables`' prefix
    sums hold, so the rescale factor is the same bit for bit with or without the tables."""
    return torch.sum(t.abs(), dtype=torch.float64).float()


def _rescale_factor(before: float, after: float) -> float:
    """mergekit's L1 rescale `before / after`, or 1 when either norm is below its 1e-7."""
    return 1.0 if before < _RESCALE_EPS or after < _RESCALE_EPS else before / after


@dataclass(frozen=True)
class Precomputed:
    """Per-tensor tables that stay fixed for a whole search (see `sorted_magnitudes` and `dare_tables`)."""

    sorted_mag: Tensor | None = None  # [n, numel] ascending |delta_i|
    sorted_pos: Tensor | None = None  # [n, numel] their flat positions
    uniforms: Tensor | None = None  # [n, numel] DARE draws, position order
    u_sorted: Tensor | None = None  # [n, numel] the draws ascending
    l1_prefix: Tensor | None = None  # [n, numel] cumulative |delta_i| in draw order


# ---- the merge, chunk by chunk


def merge_into(
    out: Tensor,
    method: str,
    base: Tensor,
    deltas: Tensor,
    weights: Tensor | Sequence[float],
    densities: Tensor | Sequence[float] | None = None,
    *,
    add_base: bool = True,
    normalize: bool | None = None,
    lambda_: float = 1.0,
    rescale: bool | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    l1_norms: Tensor | None = None,
    precomputed: Precomputed | None = None,
    workspace: Workspace | None = None,
    chunk: int | None = None,
    fused: bool = False,
) -> Tensor:
    """Write `base + mixed` (or `mixed` alone without `add_base`) into `out` (base's shape) and return |mixed|_1
    as a 0-d float64 tensor; `mixed` is what the method adds to the base, computed in `deltas.dtype`.

    `deltas`: [n_models, *base.shape]; `weights`, `densities`: [n_models]; `generators`: one per model for DARE
    (None draws from torch's default generator); `l1_norms`: optional precomputed `rescale_l1(delta_i)` for DARE rescale;
    `precomputed`: the search-wide tables, which replace the TIES selection and the DARE draws by lookups.
    The threshold and the rescale factor are set per whole tensor; everything after them is elementwise, so on
    CPU it runs over `chunk`-sized slices (default `_CHUNK`) whose temporaries stay in cache. Models with weight
    0 or density <= 0 contribute nothing in every method, so they are skipped.

    With `fused`, ties and dare_ties in float32/64 (normalized only with weights >= 2^-60) run as one compiled
    kernel (`mmmo.merge.fused`) with the same result bit for bit; other cases, or no compiler, run eagerly.
    TIES ties at the threshold that must go are zeroed in `deltas` for the kernel's pass and restored after it.
    """
    info = method_info(method)
    n = deltas.shape[0]
    if deltas.shape[1:] != base.shape:
        raise ValueError(f"deltas shape {tuple(deltas.shape)} does not match base {tuple(base.shape)}")
    ws = workspace if workspace is not None else Workspace()
    pre = precomputed if precomputed is not None else Precomputed()
    dtype, device, numel = deltas.dtype, deltas.device, base.numel()
    w = _weights_list(weights, dtype, n)
    do_normalize = info.default_normalize if normalize is None else normalize
    flat = deltas.reshape(n, numel)
    base_flat = base.reshape(-1)
    out_flat = out.view(-1)
    dens = _as_densities(densities, n) if info.uses_density else [1.0] * n
    active = [i for i in range(n) if w[i] != 0 and dens[i] > 0]

    if not active:
        if info.name == "linear" and not do_normalize:
            if add_base:
                out_flat.zero_()  # the weighted sum of the models is 0
            else:
                torch.neg(base_flat, out=out_flat)
            return abs_sum(base)
        if add_base:
            out_flat.copy_(base_flat)
        else:
            out_flat.zero_()
        return torch.zeros((), dtype=torch.float64, device=device)

    # Per-model setup for the whole tensor: TIES cuts, DARE draws and rescale factors.
    cuts: list[MagnitudeCut | None] = []
    draws: list[Tensor | None] = []
    scales: list[float] = []
    if info.sparsification == "magnitude":
        for i in active:
            k = magnitude_keep_count(numel, dens[i])
            if k >= numel:
                cuts.append(None)
            elif pre.sorted_mag is not None:
                positions = None if pre.sorted_pos is None else pre.sorted_pos[i]
                cuts.append(cut_from_sorted(pre.sorted_mag[i], k, positions))
            else:
                cuts.append(_cut_by_selection(flat[i], k, ws))
    elif info.sparsification == "random":
        do_rescale = info.default_rescale if rescale is None else rescale
        gens = list(generators) if generators is not None else [None] * n
        if len(gens) != n:
            raise ValueError(f"expected {n} generators, got {len(gens)}")
        for j, i in enumerate(active):
            if dens[i] >= 1:
                draws.append(None)
                scales.append(1.0)
                continue
            if pre.uniforms is not None:
                u = pre.uniforms[i]
            else:
                u = ws.get(f"uniform{j}", numel, torch.float32, device)
                u.uniform_(generator=gens[i])
            draws.append(u)
            if not do_rescale:
                scales.append(1.0)
            elif pre.u_sorted is not None and pre.l1_prefix is not None:
                before = float(pre.l1_prefix[i, -1])
                scales.append(_rescale_factor(before, masked_l1(pre.u_sorted[i], pre.l1_prefix[i], dens[i])))
            else:
                fmask = ws.get("fmask", numel, dtype, device)
                torch.lt(u, dens[i], out=fmask)
                masked = ws.get("masked", numel, dtype, device)
                torch.mul(flat[i], fmask, out=masked)
                before = rescale_l1(flat[i]) if l1_norms is None else l1_norms[i]
                scales.append(_rescale_factor(float(before), float(rescale_l1(masked))))

    consensus = info.consensus
    fast_divisor = dtype in (torch.float32, torch.bfloat16, torch.float64) and all(w[i] >= 2.0**-60 for i in active)
    # With consensus the magnitudes are summed before the elected sign is applied; they are >= 0 (and so is the
    # divisor on the fast path), so |mixed|_1 is their plain sum: cheaper than an abs pass.
    stat_unsigned = consensus and (not do_normalize or fast_divisor)
    total_w = float(torch.tensor(w, dtype=dtype).sum())
    m = len(active)
    step = numel if device.type != "cpu" else max(1, chunk or _CHUNK)
    c_max = min(step, numel)
    fold_scales = bool(scales) and dtype in (torch.float32, torch.float64)
    factors = [w[i] * scales[j] for j, i in enumerate(active)] if fold_scales else [w[i] for i in active]
    if (
        fused and consensus and add_base and dtype in fused_kernel.FUSED_DTYPES
        and (not do_normalize or fast_divisor) and fused_kernel.available()
    ):
        stat = _merge_fused(
            out_flat, base_flat, flat, info.sparsification, active, cuts, draws, dens, factors, w,
            normalize=do_normalize, lambda_=lambda_, ws=ws,
        )
        if stat is not None:
            return stat * abs(lambda_) if lambda_ != 1 else stat
    wcol = torch.tensor(factors, dtype=dtype, device=device).view(m, 1)
    rows_buf = ws.get("rows", m * c_max, dtype, device)
    tmp = ws.get("chunk_mask", c_max, dtype, device)
    sign_buf = ws.get("sign", c_max, dtype, device)
    div_buf = ws.get("divisor", c_max, dtype, device)
    mixed_buf = ws.get("mixed_chunk", c_max, dtype, device) if add_base else None
    one = torch.ones((), dtype=dtype, device=device)
    start = torch.full((), 2.0**-100, dtype=dtype, device=device)
    seen = [0] * m
    total = torch.zeros((), dtype=torch.float64, device=device)
    starts = list(range(0, numel, step))
    # Where each chunk's ties to drop begin in the (ascending) drop lists: one search per tensor, not per chunk.
    drop_edges = [
        None if cut is None or cut.drop is None
        else torch.searchsorted(cut.drop, torch.tensor([*starts, numel], device=device)).tolist()
        for cut in cuts
    ]
    # Sums over the models as chained adds for float32/64: the same left-to-right rounding as torch.sum(dim=0)
    # without its output fill and slow outer-dim reduction; half types keep torch.sum's float32 accumulation.
    chain = dtype in (torch.float32, torch.float64)

    def sum_rows(rows: Tensor, out: Tensor) -> None:
        if not chain:
            torch.sum(rows, dim=0, out=out)
            return
        if rows.shape[0] == 1:
            out.copy_(rows[0])  # torch.sum would turn -0 into +0; the chain (and the fused kernel) keep it
            return
        torch.add(rows[0], rows[1], out=out)
        for r in range(2, rows.shape[0]):
            out.add_(rows[r])

    for ci, a in enumerate(starts):
        b = min(numel, a + step)
        c = b - a
        rows = rows_buf[: m * c].view(m, c)
        for j, i in enumerate(active):
            x = flat[i, a:b]
            if info.sparsification == "magnitude":
                cut = cuts[j]
                if cut is None:
                    rows[j].copy_(x)
                else:
                    edges = drop_edges[j]
                    drop = None
                    if edges is not None and edges[ci + 1] > edges[ci]:
                        drop = cut.drop[edges[ci] : edges[ci + 1]] - a
                    _trim_chunk(x, cut, seen, j, rows[j], ws, drop)
            elif info.sparsification == "random":
                u = draws[j]
                if u is None:
                    rows[j].copy_(x)
                else:
                    torch.lt(u[a:b], dens[i], out=tmp[:c])
                    torch.mul(x, tmp[:c], out=rows[j])
                    if not fold_scales and scales[j] != 1.0:
                        rows[j].mul_(scales[j])  # rounded separately from the weight, as mergekit does
            else:
                rows[j].copy_(x)
        # w * (delta * mask): the mask product is exact, so this rounds once, like mergekit. In float32/64 DARE's
        # rescale rides along in the same pass (mergekit rounds it separately: at most an ulp apart; in half
        # types that ulp is too coarse, so they keep mergekit's two roundings).
        rows.mul_(wcol)
        mixed = out_flat[a:b] if mixed_buf is None else mixed_buf[:c]
        if consensus:
            # Elected sign s = +1 where the weighted sum is >= 0 (copysign: -0 only when every term is -0, and
            # then nothing agrees either way). An entry agrees when row * s > 0, so relu(row * s) keeps exactly
            # the agreeing magnitudes and sum_j relu(row_j * s) * s is mergekit's masked sum, bit for bit.
            sign = sign_buf[:c]
            sum_rows(rows, sign)
            torch.copysign(one, sign, out=sign)
            rows.mul_(sign).relu_()
            sum_rows(rows, mixed)
            if do_normalize:
                rows.sign_()  # 1 where model j agrees, else 0
                divisor = div_buf[:c]
                if fast_divisor:
                    # Start from 2^-100 instead of 0: it vanishes when added to any weight >= 2^-60 (below half
                    # an ulp), and where nothing agrees the divisor stays 2^-100 over a sum of exactly 0, giving
                    # mergekit's 0 / 1 without another pass.
                    torch.add(start, rows[0], alpha=w[active[0]], out=divisor)
                    for j in range(1, m):
                        divisor.add_(rows[j], alpha=w[active[j]])
                else:
                    torch.mul(rows[0], w[active[0]], out=divisor)
                    for j in range(1, m):
                        divisor.add_(rows[j], alpha=w[active[j]])
                    divisor.copy_(torch.where(divisor == 0, torch.ones_like(divisor), divisor))
                mixed.div_(divisor)
            if stat_unsigned:
                total.add_(torch.sum(mixed, dtype=_accumulate_dtype(dtype)))
            if mixed_buf is not None and lambda_ == 1 and stat_unsigned:
                # base + mixed * s in one pass (the product by +-1 is exact, so the rounding is the add's alone)
                torch.addcmul(base_flat[a:b], mixed, sign, out=out_flat[a:b])
                continue
            mixed.mul_(sign)
        else:
            sum_rows(rows, mixed)
            if info.name == "linear":
                if do_normalize:
                    # Weights summing to ~0 have no average: keep the base (mergekit divides by zero here).
                    if abs(total_w) < _NORM_EPS:
                        mixed.zero_()
                    else:
                        mixed.div_(total_w)
                else:
                    mixed.add_(base_flat[a:b], alpha=total_w - 1.0)  # sum_i w_i (base + delta_i) - base
            elif do_normalize:
                mixed.div_(total_w if abs(total_w) >= _NORM_EPS else 1.0)
        if lambda_ != 1 and info.name != "linear":
            mixed.mul_(lambda_)
        if not stat_unsigned:
            # in float64: a float32 vector_norm(·, 1) drifts by ~1e-5 on large tensors, so chunking would show
            total.add_(torch.linalg.vector_norm(mixed, 1, dtype=torch.float64))
        if mixed_buf is not None:
            torch.add(base_flat[a:b], mixed, out=out_flat[a:b])
    if stat_unsigned and lambda_ != 1:
        total.mul_(abs(lambda_))
    return total


def _merge_fused(
    out_flat: Tensor,
    base_flat: Tensor,
    flat: Tensor,
    sparsification: Sparsification | None,
    active: list[int],
    cuts: list[MagnitudeCut | None],
    draws: list[Tensor | None],
    dens: list[float],
    factors: list[float],
    w: list[float],
    *,
    normalize: bool,
    lambda_: float,
    ws: Workspace,
) -> Tensor | None:
    """`merge_into`'s consensus merge through the fused kernel: per-model arguments for all models, with the
    ties past each cut's `room` zeroed in `flat` for the pass (restored after it). None: kernel unavailable."""
    n, numel = flat.shape
    limits, row_factors, row_weights = [0.0] * n, [0.0] * n, [0.0] * n
    on = [False] * n
    row_draws: list[Tensor] | None = None
    if sparsification == "random":
        row_draws = [ws.zeros("draws", numel, torch.float32, flat.device)] * n
    dropped: list[tuple[int, Tensor, Tensor]] = []
    try:
        for j, i in enumerate(active):
            on[i], row_factors[i], row_weights[i] = True, factors[j], w[i]
            if sparsification == "magnitude":
                cut = cuts[j]
                limits[i] = -1.0 if cut is None else cut.below  # -1: keep everything
                if cut is not None and cut.room is not None:
                    drop = cut.drop
                    if drop is None:  # the selection path knows how many ties stay, not where they are
                        drop = torch.nonzero(flat[i].abs() == cut.t).squeeze(1)[cut.room :]
                    if drop.numel():
                        dropped.append((i, drop, flat[i][drop].clone()))
                        flat[i][drop] = 0
            elif sparsification == "random" and row_draws is not None:
                u = draws[j]
                if u is None:  # density >= 1: every draw of the zeros buffer is < 1
                    limits[i] = 1.0
                else:
                    row_draws[i], limits[i] = u, dens[i]
        return fused_kernel.consensus_merge(
            out_flat, base_flat, [flat[i] for i in range(n)], sparsification=sparsification, limits=limits,
            factors=row_factors, weights=row_weights, active=on, normalize=normalize, lambda_=lambda_,
            draws=row_draws,
        )
    finally:
        for i, drop, values in dropped:
            flat[i][drop] = values


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
    precomputed: Precomputed | None = None,
    workspace: Workspace | None = None,
) -> Tensor:
    """The merged tensor minus the base (what `merge_tensor` adds to `base`), in `deltas.dtype`.

    Arguments as for `merge_into`. With a `workspace` the result lives in its buffers and is overwritten by the
    next call using it.
    """
    ws = workspace if workspace is not None else Workspace()
    mixed = ws.get("mixed", base.numel(), deltas.dtype, deltas.device).view(base.shape)
    merge_into(
        mixed, method, base, deltas, weights, densities, add_base=False,
        normalize=normalize, lambda_=lambda_, rescale=rescale, generators=generators, l1_norms=l1_norms,
        precomputed=precomputed, workspace=ws,
    )
    return mixed


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
