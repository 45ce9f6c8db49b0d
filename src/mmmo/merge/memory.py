"""How much of the task vectors and search-wide tables may stay on the merge device: the memory-budget policy, and
the exact sizes of what a Merger keeps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mmmo.merge.methods.registry import TableKind

# Share of the memory free at load time that task vectors and tables may take: the rest is for the live model's
# activations during evaluation, the allocator's slack and whatever else the machine runs.
RESIDENT_FRACTION = 0.7
DRAW_TABLE_BYTES = 12  # DARE, per parameter and model: float32 draw, sorted draw and L1 prefix sum
POSITION_BYTES = 4  # TIES, per parameter and model, beside the sorted magnitude (in the merge dtype): int32;
# Breadcrumbs' magnitude rank alone
DELLA_TABLE_BYTES = 8  # DELLA, per parameter and model: float32 draw and rank (at most float32)


def available_host_bytes() -> int:
    """RAM available to this process now (psutil, else /proc/meminfo, else free pages)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def free_device_bytes(device: torch.device) -> int:
    """Bytes free on `device` now: the driver's count on CUDA (allocates nothing), available RAM elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_host_bytes()


def resident_budget(free_bytes: int) -> int:
    """Bytes of task vectors and tables that may stay where `free_bytes` are free: RESIDENT_FRACTION of them."""
    return int(RESIDENT_FRACTION * max(0, free_bytes))


def default_resident_budget(device: torch.device) -> int:
    """Bytes of task vectors that may stay on the device: RESIDENT_FRACTION of what is free there now."""
    return resident_budget(free_device_bytes(device))


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per entry of `dtype`."""
    return torch.empty((), dtype=dtype).element_size()


def store_bytes(numel: int, n_models: int, dtype: torch.dtype) -> int:
    """The base copy and one task vector per model, `numel` parameters each, in `dtype`."""
    return numel * itemsize(dtype) * (n_models + 1)


def table_bytes_per_entry(sparsification: TableKind | None, itemsize: int) -> int:
    """Bytes of search-wide tables per parameter and model (`mmmo.merge.kernels.tables`); 0 for methods without any."""
    if sparsification == "magnitude":
        return itemsize + POSITION_BYTES  # sorted magnitude + its position
    if sparsification == "magnitude_outliers":
        return POSITION_BYTES  # the magnitude rank, int32
    if sparsification == "random":
        return DRAW_TABLE_BYTES
    if sparsification == "della_magprune":
        return DELLA_TABLE_BYTES
    return 0


def table_bytes(numel: int, n_models: int, dtype: torch.dtype, sparsification: TableKind | None) -> int:
    """The search-wide tables of every model's task vector (0 for methods without any); SCE's are per parameter,
    not per model: each parameter's rank by its variance across models."""
    if sparsification == "variance":
        return numel * POSITION_BYTES
    return numel * n_models * table_bytes_per_entry(sparsification, itemsize(dtype))


@dataclass(frozen=True)
class MemoryPlan:
    """Where a Merger keeps its task vectors, and whether the search-wide tables fit beside them (bytes)."""

    resident: bool  # task vectors on the merge device; else on the host, copied over tensor by tensor
    store_bytes: int  # the base copy and the task vectors
    tables: bool
    table_bytes: int  # 0 without tables


def plan_memory(
    numel: int,
    n_models: int,
    dtype: torch.dtype,
    sparsification: TableKind | None,
    device: torch.device,
    *,
    max_resident_bytes: int | None,
    want_tables: bool,
) -> MemoryPlan:
    """Task vectors stay on `device` when they fit in `max_resident_bytes` (default: `default_resident_budget`);
    the tables only when wanted, resident, and fitting in the same budget too.

    The one placement rule: the Merger calls it after loading the live model, and `memory_plan` before loading
    anything, with the budget the live model would leave.
    """
    need = store_bytes(numel, n_models, dtype)
    budget = default_resident_budget(device) if max_resident_bytes is None else max_resident_bytes
    resident = need <= budget
    extra = table_bytes(numel, n_models, dtype, sparsification)
    tables = want_tables and extra > 0 and resident and need + extra <= budget
    return MemoryPlan(resident, need, tables, extra if tables else 0)
