"""The sources of a search, loaded once: each merged tensor's base copy and task vectors (model - base), and the
tables that stay fixed for the whole search."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from mmmo.merge.kernels.sce import variance
from mmmo.merge.kernels.tables import (
    Precomputed,
    dare_tables,
    della_tables,
    magnitude_ranks,
    rescale_l1,
    sorted_magnitudes,
    variance_ranks,
)
from mmmo.merge.methods.registry import TableKind
from mmmo.merge.methods.sparsify import dare_generator
from mmmo.merge.sources.checkpoint import Checkpoint


@dataclass(frozen=True)
class TaskVectors:
    """Per tensor name: the base ([*shape]) and the task vectors ([n_models, *shape]) in the merge dtype, kept on
    `device` when `resident`, else in host memory (pinned for CUDA) and copied over for each merge; and the
    tensor's tables (`Precomputed`), where any."""

    device: torch.device
    resident: bool
    base: dict[str, Tensor]
    deltas: dict[str, Tensor]
    tables: dict[str, Precomputed]

    def stored(self, name: str) -> tuple[Tensor, Tensor]:
        """The base and task vectors of a tensor as kept (on the host when not resident)."""
        return self.base[name], self.deltas[name]

    def fetch(self, name: str) -> tuple[Tensor, Tensor]:
        """The base and task vectors of a tensor on the merge device."""
        base, deltas = self.base[name], self.deltas[name]
        if self.resident:
            return base, deltas
        return base.to(self.device, non_blocking=True), deltas.to(self.device, non_blocking=True)


def load_task_vectors(
    base: Checkpoint,
    models: Sequence[Checkpoint],
    names: Sequence[str],
    *,
    dtype: torch.dtype,
    device: torch.device,
    resident: bool,
    sparsification: TableKind | None,
    with_tables: bool,
    seed: int,
) -> TaskVectors:
    """Read every tensor in `names` once (peak extra memory: one tensor per model). `with_tables`: the search-wide
    tables of the method's sparsification (TIES: sorted magnitudes; DARE: the draws of generators seeded by
    `seed`); without them DARE still gets each task vector's L1 norm, which its rescale needs every merge."""
    work = device if resident else torch.device("cpu")
    # Differences are taken in float32 (float64 stays float64) and rounded once to `dtype`.
    diff_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def storage(shape: Sequence[int]) -> Tensor:
        if resident:
            return torch.empty(tuple(shape), dtype=dtype, device=device)
        return torch.empty(tuple(shape), dtype=dtype, pin_memory=device.type == "cuda")

    out = TaskVectors(device, resident, {}, {}, {})
    with contextlib.ExitStack() as stack:
        base_get = stack.enter_context(base.reader())
        model_gets = [stack.enter_context(c.reader()) for c in models]
        for name in names:
            t = base_get(name)
            b = storage(t.shape)
            b.copy_(t)
            out.base[name] = b
            base_diff = t.to(device=work, dtype=diff_dtype)
            deltas = storage((len(models), *t.shape))
            for i, get in enumerate(model_gets):
                deltas[i].copy_(get(name).to(device=work, dtype=diff_dtype) - base_diff)
            out.deltas[name] = deltas
            del base_diff
            if sparsification is not None:
                out.tables[name] = _tables(deltas, name, sparsification, with_tables, seed, device)
    return out


def add_tables(tv: TaskVectors, sparsification: TableKind, *, with_tables: bool, seed: int) -> None:
    """Give every tensor of `tv` the tables of one more sparsification (a merger that merges with several methods):
    what `load_task_vectors` computes for its own, kept beside the tables already there."""
    for name, deltas in tv.deltas.items():
        extra = _tables(deltas, name, sparsification, with_tables, seed, tv.device)
        old = tv.tables.get(name, Precomputed())
        tv.tables[name] = replace(
            old, **{f.name: getattr(extra, f.name) for f in fields(extra) if getattr(extra, f.name) is not None}
        )


def _tables(
    deltas: Tensor, name: str, sparsification: TableKind, with_tables: bool, seed: int, device: torch.device
) -> Precomputed:
    if sparsification == "random" and with_tables:
        gens = [dare_generator(seed, i, name, device) for i in range(deltas.shape[0])]
        u, u_sorted, prefix = dare_tables(deltas, gens)
        return Precomputed(uniforms=u, u_sorted=u_sorted, l1_prefix=prefix)
    if sparsification == "della_magprune" and with_tables:
        gens = [dare_generator(seed, i, name, device) for i in range(deltas.shape[0])]
        u, ranks = della_tables(deltas, gens)
        return Precomputed(uniforms=u, ranks=ranks, l1_norms=torch.stack([rescale_l1(d) for d in deltas]))
    if sparsification == "variance":  # SCE: what its selection looks up (none without the tables)
        if not with_tables:
            return Precomputed()
        rank, nonzero = variance_ranks(variance(deltas.reshape(deltas.shape[0], -1)))
        return Precomputed(var_rank=rank, var_nonzero=nonzero)
    if sparsification == "magnitude_outliers" and with_tables:
        return Precomputed(mag_rank=magnitude_ranks(deltas))
    if with_tables:
        values, positions = sorted_magnitudes(deltas)
        return Precomputed(sorted_mag=values, sorted_pos=positions)
    if sparsification in ("random", "della_magprune"):  # the rescale needs each task vector's L1 norm: once
        return Precomputed(l1_norms=torch.stack([rescale_l1(d) for d in deltas]).to(device))
    return Precomputed()
