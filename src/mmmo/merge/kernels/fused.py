"""The task-arithmetic merges of one tensor as a single compiled kernel: with sign election (ties, dare_ties,
breadcrumbs_ties, della) or without (task_arithmetic, dare_linear, breadcrumbs, della_linear); SCE as two
(`sce_merge`).

Eager (`mmmo.merge.kernels.chunked`), a merge makes about 25 elementwise passes per tensor for TIES, even chunked into
cache. Compiled with inductor it is one loop that reads the base, the task vectors (and DARE's draws, Breadcrumbs'
magnitude ranks, DELLA's draws and ranks) once and writes the parameters; DELLA's rescale norms are one more
compiled pass before it (`della_kept_l1`). The kernel makes the same IEEE operations in the same order as the eager path: chained sums in
model order, products that are exact where eager fuses them, no contraction or reassociation (inductor's CPU
default), so the merged tensors are the same bit for bit. Only the sparsity statistic is summed in another
order (in float64 here, so it is at least as accurate).

Compiling costs seconds once per process and variant (inductor also caches on disk), which is why only the
Merger of a large model turns this on by default. A compiler that is missing or fails turns it off for the
rest of the process with one warning, and the caller runs the eager path.
"""

from __future__ import annotations

import functools
import platform
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.merge.kernels.sce import weights_from_squares
from mmmo.merge.kernels.tensor_setup import DIVISOR_START
from mmmo.merge.methods.registry import MethodInfo
from mmmo.runtime.errors import one_line

FUSED_DTYPES = (torch.float32, torch.float64)  # half types: inductor would skip eager's per-op roundings
FUSED_SPARSIFICATIONS = (None, "magnitude", "random", "magnitude_outliers", "della_magprune")  # with sign election
# without: the plain sum of task vectors (task_arithmetic), DARE (dare_linear), Breadcrumbs (with its rank table)
# and DELLA; linear (an average of the models themselves) keeps the eager path
FUSED_LINEAR_SPARSIFICATIONS = (None, "random", "magnitude_outliers", "della_magprune")
_RECOMPILE_LIMIT = 64  # variants (method, normalize, lambda, model count, dtype) are recompiles of one function


@dataclass
class KernelState:
    """The kernel's state in this process: why compiling it failed (None while it has not); set once."""

    failure: str | None = None


STATE = KernelState()


def available() -> bool:
    """False once compiling the kernel has failed in this process."""
    return STATE.failure is None


def _sparsified(x: Tensor, j: int, sparsification: str | None, draws: list[Tensor], ranks: list[Tensor],
                limits: Tensor, spans: Tensor) -> Tensor:
    """Row j of the kernel, sparsified as the eager path does it (see `consensus_merge` for the arguments)."""
    if sparsification == "magnitude":  # hardshrink(x, limit), NaN kept as eager keeps it
        return torch.where((x >= -limits[j]) & (x <= limits[j]), 0.0, x)
    if sparsification == "random":
        return x * (draws[j] < limits[j]).to(x.dtype)
    if sparsification == "magnitude_outliers":  # the band of magnitude ranks [limit, span)
        return x * ((ranks[j] >= limits[j]) & (ranks[j] < spans[j])).to(x.dtype)
    if sparsification == "della_magprune":  # u < (density - eps) + rank * 2 * eps, in float32 like eager
        return x * (draws[j] < ranks[j] * 2 * spans[j] + limits[j]).to(x.dtype)
    return x


def consensus_kernel(
    out: Tensor,
    base: Tensor,
    rows: list[Tensor],
    draws: list[Tensor],
    ranks: list[Tensor],
    limits: Tensor,
    spans: Tensor,
    factors: Tensor,
    weights: Tensor,
    active: Tensor,
    start: Tensor,
    lambda_: Tensor,
    sparsification: str | None,
    normalize: bool,
    scaled: bool,
    consensus: bool = True,
) -> Tensor:
    """out = base + lambda * s * M / D, or base + lambda * sum / D without `consensus` (see `consensus_merge`);
    returns sum(M / D) (|sum / D| without consensus) in float64."""
    one = torch.ones((), dtype=base.dtype, device=base.device)
    weighted = []
    for j, x in enumerate(rows):
        r = _sparsified(x, j, sparsification, draws, ranks, limits, spans)
        # -0 is the additive identity (-0 + -0 = -0): inactive models drop out of every chained sum exactly.
        weighted.append(torch.where(active[j], r * factors[j], -0.0))
    total = weighted[0]
    for r in weighted[1:]:
        total = total + r
    if not consensus:
        if normalize:
            total = total / start  # here the sum of the weights (or 1)
        if scaled:
            total = total * lambda_
        out.copy_(base + total)
        return total.abs().sum(dtype=torch.float64)
    sign = torch.copysign(one, total)
    agreeing = [torch.where(active[j], torch.relu(r * sign), -0.0) for j, r in enumerate(weighted)]
    mixed = agreeing[0]
    for a in agreeing[1:]:
        mixed = mixed + a
    if normalize:
        divisor = start
        for j, a in enumerate(agreeing):
            divisor = divisor + torch.where(active[j], weights[j] * torch.sign(a), -0.0)
        mixed = mixed / divisor
    stat = mixed.sum(dtype=torch.float64)
    signed = mixed * sign
    if scaled:
        signed = signed * lambda_
    out.copy_(base + signed)
    return stat


def della_l1_kernel(rows: list[Tensor], draws: list[Tensor], ranks: list[Tensor], lows: Tensor,
                    eps: Tensor) -> Tensor:
    """[n] float64: each row's |x * keep|_1 with DELLA's keep mask (see `della_kept_l1`)."""
    sums = [
        torch.where(draws[j] < ranks[j] * 2 * eps[j] + lows[j], x.abs(), 0.0).sum(dtype=torch.float64)
        for j, x in enumerate(rows)
    ]
    return torch.stack(sums)


def sce_squares_kernel(rows: list[Tensor], rank: Tensor, k: Tensor, select: bool) -> Tensor:
    """[n] float64: each row's sum of squares where SCE selects (variance rank < k; everywhere without `select`)."""
    keep = (rank < k).to(rows[0].dtype) if select else None
    return torch.stack([(x * keep if keep is not None else x).to(torch.float64).square().sum() for x in rows])


def sce_kernel(out: Tensor, base: Tensor, rows: list[Tensor], rank: Tensor, k: Tensor, weights: Tensor,
               eps: Tensor, select: bool, add_base: bool) -> Tensor:
    """SCE's erase and average in one pass (see `sce_merge`); returns |delta|_1 in float64."""
    one = torch.ones((), dtype=base.dtype, device=base.device)
    keep = (rank < k).to(base.dtype) if select else None
    selected = [x * keep if keep is not None else x for x in rows]  # x * 0: -0 where x < 0, as eager
    total = selected[0]
    for r in selected[1:]:
        total = total + r
    sign = torch.copysign(one, total)
    erased = [(r * sign > 0).to(base.dtype) * weights[j] for j, r in enumerate(selected)]
    mixed = selected[0] * erased[0]
    divisor = erased[0]
    for j in range(1, len(selected)):
        mixed = mixed + selected[j] * erased[j]
        divisor = divisor + erased[j]
    delta = mixed / torch.clamp(divisor, min=eps)
    out.copy_(base + delta if add_base else delta)
    return delta.abs().sum(dtype=torch.float64)


@functools.cache
def compiled_kernel():  # type: ignore[no-untyped-def]
    """`consensus_kernel` compiled by inductor (once per process; each variant is a recompile of it)."""
    return _compiled(consensus_kernel)


@functools.cache
def compiled_l1_kernel():  # type: ignore[no-untyped-def]
    """`della_l1_kernel` compiled by inductor."""
    return _compiled(della_l1_kernel)


@functools.cache
def compiled_sce_kernels():  # type: ignore[no-untyped-def]
    """`sce_squares_kernel` and `sce_kernel` compiled by inductor."""
    return _compiled(sce_squares_kernel), _compiled(sce_kernel)


def _compiled(fn):  # type: ignore[no-untyped-def]
    # The vector width of inductor's C++ follows ATen's CPU capability (the ATEN_CPU_CAPABILITY override
    # included), not only the CPU's. Without it (torch 2.13), code generated for AVX-512 and cached on disk is
    # reused under avx2 headers and leaves half of each tensor unwritten, and under `default` (no SIMD, old
    # CPUs) the vectorised code fails to compile. Naming the width also puts it in the cache key.
    x86 = platform.machine().lower() in ("x86_64", "amd64")  # on ARM, DEFAULT still means NEON for inductor
    simdlen = _SIMDLEN.get(torch.backends.cpu.get_cpu_capability()) if x86 else None
    options = {"cpp.simdlen": simdlen} if simdlen is not None else None
    return torch.compile(fn, dynamic=True, fullgraph=True, options=options)


# x86 ATen CPU capability -> inductor's cpp.simdlen in bits (1: scalar loops); elsewhere inductor picks.
_SIMDLEN = {"DEFAULT": 1, "AVX2": 256, "AVX512": 512}


def fusable(info: MethodInfo) -> bool:
    """Whether the kernels merge this method: SCE (`sce_merge`), or a sum of task vectors of a sparsification the
    kernel has (with or without sign election). linear averages the models themselves (mergekit's linear: its own
    weights, lambda and zero-sum cases), and the interpolations are not sums: both stay eager."""
    if info.sce:
        return True
    if info.geometric or info.name == "linear":
        return False
    return info.sparsification in (FUSED_SPARSIFICATIONS if info.consensus else FUSED_LINEAR_SPARSIFICATIONS)


def consensus_merge(
    out: Tensor,
    base: Tensor,
    rows: Sequence[Tensor],
    *,
    sparsification: str | None,
    limits: Sequence[float],
    factors: Sequence[float],
    weights: Sequence[float],
    active: Sequence[bool],
    normalize: bool,
    lambda_: float = 1.0,
    draws: Sequence[Tensor] | None = None,
    ranks: Sequence[Tensor] | None = None,
    spans: Sequence[float] | None = None,
    consensus: bool = True,
    total_weight: float = 1.0,
) -> Tensor | None:
    """One tensor of a task-vector merge (see `fusable`) in one pass; None when the
    kernel cannot be compiled here.

    Per model j (all of them, in order): `rows[j]` is the flat task vector; it is sparsified (magnitude: keep
    |x| > `limits[j]`; random: keep `draws[j] < limits[j]`, draws in float32; magnitude_outliers: keep
    `limits[j] <= ranks[j] < spans[j]`, the ranks of `tables.magnitude_ranks`; della_magprune: keep `draws[j] <
    limits[j] + ranks[j] * 2 * spans[j]` in float32, ranks DELLA's rank_norm, limits density - eps, spans eps),
    multiplied by `factors[j]`, and left out entirely where `active[j]` is False. With `consensus` the elected
    sign s is that of the sum; M sums the agreeing magnitudes; with `normalize`, D = 2^-100 + the `weights` of
    the agreeing models (the caller guarantees every active weight is >= 2^-60, so 2^-100 vanishes wherever a
    model agrees). Writes `base + lambda * s * M [/ D]` into `out` and returns sum(M [/ D]) as a float64 0-d
    tensor (`|mixed|_1 / |lambda|`). Without `consensus`: `base + lambda * sum [/ total_weight]`, returning
    |lambda * sum [/ total_weight]|_1.
    """
    if STATE.failure is not None:
        return None
    n, dtype, device = len(rows), base.dtype, base.device
    if dtype not in FUSED_DTYPES:
        raise ValueError(f"the fused merge runs in {FUSED_DTYPES}, not {dtype}")
    draw_list = list(draws) if draws is not None else [rows[0]] * n  # unread unless the sparsification draws
    rank_list = list(ranks) if ranks is not None else [rows[0]] * n  # unread unless it ranks
    bound_dtype = {"random": torch.float32, "della_magprune": torch.float32}.get(str(sparsification), dtype)
    if sparsification == "magnitude_outliers":
        bound_dtype = rank_list[0].dtype
    # detach(): the same memory without the view's base, which the compiled graph would otherwise be guarded on
    # (its shape differs from tensor to tensor: a recompile for each)
    args = (
        out.view(-1).detach(),
        base.reshape(-1).detach(),
        [r.reshape(-1).detach() for r in rows],
        [d.reshape(-1).detach() for d in draw_list],
        [r.reshape(-1).detach() for r in rank_list],
        torch.tensor(limits, dtype=bound_dtype, device=device),
        torch.tensor(list(spans) if spans is not None else [0] * n, dtype=bound_dtype, device=device),
        torch.tensor(factors, dtype=dtype, device=device),
        torch.tensor(weights, dtype=dtype, device=device),
        torch.tensor(active, dtype=torch.bool, device=device),
        torch.full((), DIVISOR_START if consensus else total_weight, dtype=dtype, device=device),
        torch.tensor(lambda_, dtype=dtype, device=device),
        sparsification,
        normalize,
        lambda_ != 1,
        consensus,
    )
    try:
        # Always without autograd: grad mode is part of what a compiled graph is guarded on.
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return compiled_kernel()(*args)
    except Exception as exc:  # noqa: BLE001  (no compiler, inductor bug: anything means "run eager")
        _fail(exc)
        return None


def della_kept_l1(rows: list[Tensor], draws: list[Tensor], ranks: list[Tensor],
                  spreads: list[tuple[float, float]]) -> list[float] | None:
    """|x_j * keep_j|_1 of each DELLA row in one compiled pass, summed in float64 (`tables.rescale_l1`'s sum in
    another order); `spreads[j]`: (density - eps, eps). None when the kernel cannot be compiled here."""
    if STATE.failure is not None or not rows:
        return None
    device = rows[0].device
    args = (
        [r.reshape(-1).detach() for r in rows],
        [d.reshape(-1).detach() for d in draws],
        [r.reshape(-1).detach() for r in ranks],
        torch.tensor([low for low, _ in spreads], dtype=torch.float32, device=device),
        torch.tensor([eps for _, eps in spreads], dtype=torch.float32, device=device),
    )
    try:
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return compiled_l1_kernel()(*args).tolist()
    except Exception as exc:  # noqa: BLE001  (as consensus_merge)
        _fail(exc)
        return None


def sce_merge(out: Tensor, base: Tensor, rows: Sequence[Tensor], rank: Tensor | None, k: int, eps: float,
              add_base: bool) -> Tensor | None:
    """One tensor of an SCE merge in two compiled passes; None when the kernel cannot be compiled here.

    Select: keep the entries whose variance across the models ranks below `k` (`rank`: `tables.variance_ranks`,
    so equal variances keep the lowest flat positions first, as `reference.sce_mask`; None: keep every entry). Calculate: one pass sums each row's selected squares in float64 (the eager path sums per
    chunk: the same weights but for the last bit of their float64 sums). Erase and average: one pass, in the eager
    path's order of operations, writing `base + delta` (the delta alone without `add_base`) into `out`; returns
    |delta|_1 as a float64 0-d tensor.
    """
    if STATE.failure is not None:
        return None
    n, dtype, device = len(rows), base.dtype, base.device
    if dtype not in FUSED_DTYPES:
        raise ValueError(f"the fused merge runs in {FUSED_DTYPES}, not {dtype}")
    flat = [r.reshape(-1).detach() for r in rows]
    rank_flat = rank.reshape(-1).detach() if rank is not None else flat[0]  # unread without selection
    bound = torch.tensor(k, dtype=rank_flat.dtype, device=device)
    try:
        squares_kernel, merge_kernel = compiled_sce_kernels()
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            squares = squares_kernel(flat, rank_flat, bound, rank is not None)
            weights = weights_from_squares(squares, flat[0].numel(), n, dtype, device)
            return merge_kernel(out.view(-1).detach(), base.reshape(-1).detach(), flat, rank_flat, bound, weights,
                                torch.tensor(eps, dtype=dtype, device=device), rank is not None, add_base)
    except Exception as exc:  # noqa: BLE001  (as consensus_merge)
        _fail(exc)
        return None


def _fail(exc: Exception) -> None:
    """Turn the kernel off for this process, with one warning."""
    STATE.failure = one_line(exc)
    warnings.warn(f"fused merge kernel unavailable, merging eagerly (slower): {STATE.failure}", stacklevel=3)


def _warm_up_sample(n_models: int, dtype: torch.dtype, device: torch.device
                    ) -> tuple[int, torch.Generator, Tensor, list[Tensor]]:
    """A small seeded base and `n_models` task vectors to compile a variant on, and the generator for more draws."""
    numel = 4096
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(numel, generator=gen).to(device=device, dtype=dtype)
    rows = [(torch.randn(numel, generator=gen) * 0.01).to(device=device, dtype=dtype) for _ in range(n_models)]
    return numel, gen, base, rows


def warm_up(
    n_models: int,
    *,
    sparsification: str | None,
    normalize: bool,
    lambda_: float,
    dtype: torch.dtype,
    device: torch.device,
    consensus: bool = True,
    rescale: bool = False,
) -> bool:
    """Compile the variant a Merger will use, on a small tensor, so the first candidate does not pay for it."""
    numel, gen, base, rows = _warm_up_sample(n_models, dtype, device)
    # the same arguments a merge passes (draws only where drawn, ranks only where ranked), or the first merge
    # would compile again
    drawn = sparsification in ("random", "della_magprune")
    draws = [torch.rand(numel, generator=gen).to(device) for _ in range(n_models)] if drawn else None
    ranks, limits, spans = None, [0.005] * n_models, None
    if sparsification == "magnitude_outliers":
        ranks = [torch.randperm(numel, generator=gen).to(device=device, dtype=torch.int32) for _ in range(n_models)]
        limits, spans = [10] * n_models, [2000] * n_models
    elif sparsification == "della_magprune":
        ranks = [torch.rand(numel, generator=gen).to(device) for _ in range(n_models)]
        limits, spans = [0.35] * n_models, [0.15] * n_models
        if rescale and draws is not None and della_kept_l1(rows, draws, ranks, [(0.35, 0.15)] * n_models) is None:
            return False
    stat = consensus_merge(
        torch.empty_like(base), base, rows, sparsification=sparsification, limits=limits,
        factors=[0.5] * n_models, weights=[0.5] * n_models, active=[True] * n_models, normalize=normalize,
        lambda_=lambda_, draws=draws, ranks=ranks, spans=spans, consensus=consensus, total_weight=1.5,
    )
    return stat is not None


def warm_up_sce(n_models: int, *, dtype: torch.dtype, device: torch.device) -> bool:
    """Compile SCE's two passes, selecting and not (`select_topk` 1 keeps everything), on a small tensor."""
    numel, gen, base, rows = _warm_up_sample(n_models, dtype, device)
    rank = torch.randperm(numel, generator=gen).to(device=device, dtype=torch.int32)
    out = torch.empty_like(base)
    return all(sce_merge(out, base, rows, r, numel // 2, 1e-6, True) is not None for r in (rank, None))
