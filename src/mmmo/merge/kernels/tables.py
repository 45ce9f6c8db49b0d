"""Per-tensor tables that depend only on the task vectors: computed once, they turn every candidate's TIES
threshold and DARE draws and rescale norms into lookups for a whole search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.merge.methods.sparsify import della_rank_norm


@dataclass(frozen=True)
class Precomputed:
    """What stays fixed for a tensor over a whole search ([n, numel] each unless said; None: not computed)."""

    sorted_mag: Tensor | None = None  # ascending |delta_i| (`sorted_magnitudes`)
    sorted_pos: Tensor | None = None  # their flat positions
    uniforms: Tensor | None = None  # DARE draws, position order (`dare_tables`)
    u_sorted: Tensor | None = None  # the draws ascending
    l1_prefix: Tensor | None = None  # cumulative |delta_i| in draw order
    l1_norms: Tensor | None = None  # [n] `rescale_l1(delta_i)`, for DARE's rescale without the tables
    ranks: Tensor | None = None  # DELLA: `sparsify.della_rank_norm` of each task vector, flat
    mag_rank: Tensor | None = None  # Breadcrumbs: each entry's rank by descending |delta_i| (`magnitude_ranks`)
    # SCE: [numel] each entry's rank by descending variance across the models (`variance_ranks`), and how many
    # variances are nonzero: a candidate's `select_topk` keeps `rank < int(var_nonzero * select_topk)`
    var_rank: Tensor | None = None
    var_nonzero: int | None = None


def sorted_magnitudes(deltas: Tensor) -> tuple[Tensor, Tensor]:
    """Per task vector, |delta_i| ascending ([n, numel], exact, in the deltas' dtype) and the flat position each
    came from ([n, numel] int32 (int64 past 2^31 entries); equal magnitudes in ascending position).

    Every later density's TIES threshold, and the positions of the ties it must drop, are then lookups
    (`mmmo.merge.kernels.selection.cut_from_sorted`) instead of a selection over the tensor.
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


def variance_ranks(variances: Tensor) -> tuple[Tensor, int]:
    """SCE's selection table from the variances across models ([numel], >= 0): each entry's rank by descending
    variance, equal variances lowest flat position first ([numel] int32; int64 past 2^31 entries), as
    `reference.sce_mask` breaks ties, and the count of nonzero variances."""
    return magnitude_ranks(variances.reshape(1, -1))[0], int(torch.count_nonzero(variances))


def magnitude_ranks(deltas: Tensor) -> Tensor:
    """Per task vector, each entry's place when |delta_i| is ordered descending, equal magnitudes lowest flat
    position first ([n, numel] int32; int64 past 2^31 entries): `sparsify.top_mask(delta, k)` is `rank < k`.

    Breadcrumbs' band for any density and gamma is then one comparison per entry, `k_inner <= rank < k_outer`
    (`sparsify.outlier_band`), with no selection and no tie handling.
    """
    n = deltas.shape[0]
    mag = deltas.detach().reshape(n, -1).abs()
    numel = mag.shape[1]
    if mag.device.type == "cpu" and mag.dtype != torch.float64 and numel < 2**31:
        import numpy as np

        # One int64 sort per row, as `sorted_magnitudes`, on (largest float32 bits - bits, position): ascending
        # keys are descending magnitudes, equal ones by ascending position.
        ranks = torch.empty(mag.shape, dtype=torch.int32)
        index = torch.arange(numel, dtype=torch.int64)
        places = np.arange(numel, dtype=np.int32)
        for i in range(n):
            keys = ((0x7FFFFFFF - mag[i].float().view(torch.int32).to(torch.int64)) << 32) | index
            order = np.sort(keys.numpy()) & 0x7FFFFFFF
            ranks[i].numpy()[order] = places
        return ranks
    pos_dtype = torch.int32 if numel < 2**31 else torch.int64
    order = torch.sort(mag, dim=1, descending=True, stable=True).indices
    places = torch.arange(numel, dtype=pos_dtype, device=mag.device).expand(n, numel)
    return torch.empty(mag.shape, dtype=pos_dtype, device=mag.device).scatter_(1, order, places)


def rescale_l1(t: Tensor) -> Tensor:
    """|t|_1 for DARE's rescale: summed in float64 and rounded to float32, which is what `dare_tables`' prefix
    sums hold, so the rescale factor is the same bit for bit with or without the tables."""
    return torch.sum(t.abs(), dtype=torch.float64).float()


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


def della_tables(deltas: Tensor, generators: Sequence[torch.Generator | None]) -> tuple[Tensor, Tensor]:
    """What DELLA needs for any density and epsilon, per task vector ([n, numel] each): the uniforms drawn from
    `generators[i]` (float32, the draws `della_prune` makes) and `sparsify.della_rank_norm` (flat, in its dtype).
    Each merge then compares the draws with probabilities made from the ranks: no RNG, no sort."""
    n = deltas.shape[0]
    u = torch.empty((n, deltas[0].numel()), dtype=torch.float32, device=deltas.device)
    ranks = [_row_rank_norm(deltas[i]) for i in range(n)]
    for i in range(n):
        u[i].uniform_(generator=generators[i])
    return u, torch.stack(ranks)


def _row_rank_norm(delta: Tensor) -> Tensor:
    """`sparsify.della_rank_norm(delta)`, flat; on CPU for float32 / float16 matrices (and vectors) with under
    2^16 rows and columns, by one int64 sort of (row, magnitude bits, column) instead of two sorts per row."""
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    if (delta.device.type != "cpu" or delta.dtype not in (torch.float32, torch.float16) or rows.dim() != 2
            or not 1 < rows.shape[1] < 2**16 or rows.shape[0] >= 2**16):
        return della_rank_norm(delta).reshape(-1)
    import numpy as np

    n_rows, n_cols = rows.shape
    bits = rows.abs().float().view(torch.int32).to(torch.int64)  # >= 0: ordered like the magnitudes
    row = torch.arange(n_rows, dtype=torch.int64).view(-1, 1)
    col = torch.arange(n_cols, dtype=torch.int64).view(1, -1)
    keys = torch.from_numpy(np.sort(((row << 47) | (bits << 16) | col).reshape(-1).numpy()))
    # sorted slot s holds (row, col) with rank s - row * n_cols within its row (equal magnitudes: lower column
    # first, as the stable sort); the rank is scaled as della_rank_norm does, (r + 1 - 1) / (n_cols - 1) in float32
    place = (keys >> 47) * n_cols + (keys & 0xFFFF)
    rank = torch.empty(n_rows * n_cols, dtype=torch.float32)
    rank[place] = torch.arange(n_rows * n_cols, dtype=torch.int64).sub_((keys >> 47) * n_cols).float()
    return rank.div_(torch.tensor(float(n_cols - 1), dtype=torch.float32))


def masked_l1(u_sorted: Tensor, prefix: Tensor, density: float) -> float:
    """|delta * (u < density)|_1 from one row of `dare_tables` (the comparison in float32, as `torch.lt` makes it)."""
    d32 = torch.tensor([density], dtype=torch.float32, device=u_sorted.device)
    m = int(torch.searchsorted(u_sorted, d32))  # how many draws are < density
    return 0.0 if m == 0 else float(prefix[m - 1])
