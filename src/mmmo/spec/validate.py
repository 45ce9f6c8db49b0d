"""`mmmo validate`: check a spec, its model folders (headers only), the memory its run needs and its lm-eval tasks,
loading no weights; `check_memory` is the same memory check for `mmmo search`, before it loads anything.

`--offline` checks the fields alone, so a spec can be checked before its models and datasets are at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import SearchSpec, is_hub_id, load_spec

if TYPE_CHECKING:
    import torch

    from mmmo.merge.memory_plan import RunMemoryPlan


def check_sources(spec: SearchSpec) -> str:
    """Architecture, tensor names and shapes of every local source against the base, from file headers."""
    from mmmo.merge.sources.checkpoint import check_compatible, open_checkpoint

    refs = [spec.base_model, *(m.path for m in spec.models)]
    remote = [r for r in refs if is_hub_id(r) and not Path(r).is_dir()]
    if remote:
        return f"sources: {len(remote)} hub id(s) not checked offline ({', '.join(remote)}); fetched at search time"
    base = open_checkpoint(spec.base_model, allow_pickle=spec.merge.allow_pickle)
    models = [open_checkpoint(m.path, allow_pickle=spec.merge.allow_pickle) for m in spec.models]
    check_compatible(base, models)
    shapes = base.shapes()
    numel = sum(_prod(s) for s in shapes.values())
    return (
        f"sources: base + {len(models)} model(s), {base.config.get('model_type')}, "
        f"{len(shapes)} tensors, {numel / 1e6:.2f}M parameters each, names and shapes match"
    )


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


@dataclass(frozen=True)
class DeviceProbe:
    """The evaluation device a run would use, its merge dtype, and the memory free there and on the host (bytes)."""

    device: torch.device
    dtype: torch.dtype
    free_bytes: int | None  # None: not measured here (why says why)
    host_bytes: int
    why: str = ""


def probe_device(spec: SearchSpec, *, strict: bool) -> DeviceProbe:
    """The spec's device and merge dtype (the `objectives.device` policy) and what is free now.

    `strict` (a search): a device this machine lacks is the evaluator's own one-line MmmoError; otherwise (validate)
    the run is planned without a free-memory figure. Ray workers measure their own GPUs: the driver measuring one
    would hold a CUDA context on it for the whole search.
    """
    import torch

    from mmmo.merge.memory import available_host_bytes, free_device_bytes
    from mmmo.objectives.device import default_dtype, resolve_device
    from mmmo.runtime.dtypes import DTYPES

    host = available_host_bytes()
    try:
        device = resolve_device(spec.evaluation.device)
        dtype = default_dtype(device, spec.merge.dtype)
    except MmmoError:
        if strict and not spec.evaluators_in_ray:  # Ray workers may have the device this driver lacks
            raise
        device = torch.device(spec.evaluation.device)
        dtype = DTYPES[spec.merge.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
        return DeviceProbe(device, dtype, None, host, f"{device} is not available on this machine")
    if spec.evaluators_in_ray:
        n = spec.evaluation.workers
        return DeviceProbe(device, dtype, None, host, f"each of the {n} workers plans its own" if n > 1 else
                           "the Ray worker plans its own")
    return DeviceProbe(device, dtype, free_device_bytes(device), host)


def plan_spec_memory(
    spec: SearchSpec, probe: DeviceProbe | None = None, *, strict: bool = True
) -> RunMemoryPlan | str:
    """The run's memory plan from the base's tensor headers and config, or one line saying why it is made at
    load time instead (hub sources, pickled weights). `probe`: by default `probe_device(spec, strict=strict)`."""
    from mmmo.merge.memory_plan import ModelDims, SourceSizes, plan_run
    from mmmo.merge.methods.registry import method_info
    from mmmo.merge.sources.checkpoint import open_checkpoint
    from mmmo.objectives.lm_eval import NON_CUDA_AUTO_BATCH

    refs = [spec.base_model, *(m.path for m in spec.models)]
    if any(is_hub_id(r) and not Path(r).is_dir() for r in refs):
        return "memory: planned at load time (hub sources: their tensor headers are not on this machine yet)"
    base = open_checkpoint(spec.base_model, allow_pickle=spec.merge.allow_pickle)
    if base.pickled:
        return "memory: planned at load time (pickled weights have no header to read)"
    probe = probe if probe is not None else probe_device(spec, strict=strict)
    batch = spec.evaluation.batch_size
    if batch == "auto":  # lm-eval probes the largest batch that fits on CUDA; 1 is the least it needs
        batch = 1 if probe.device.type == "cuda" else NON_CUDA_AUTO_BATCH
    return plan_run(
        SourceSizes.of(base.shapes(), len(spec.models)), ModelDims.from_config(base.config),
        dtype=probe.dtype, device=probe.device, sparsification=method_info(spec.merge.methods[0]).table_kind,
        device_free=probe.free_bytes, host_available=probe.host_bytes, batch=batch, unmeasured=probe.why,
        more_tables=[k for m in spec.merge.methods[1:] if (k := method_info(m).table_kind) is not None],
    )


def memory_lines(spec: SearchSpec) -> list[str]:
    """What `mmmo validate` says of memory: every placement's device and host bytes, and which one mmmo chooses."""
    plan = plan_spec_memory(spec, strict=False)
    return [plan] if isinstance(plan, str) else plan.lines()


def check_memory(spec: SearchSpec) -> str:
    """Before a search loads any weight: one line on the placement it will use; MmmoError (one line) naming what
    is needed and what is free when no placement fits."""
    plan = plan_spec_memory(spec, strict=True)
    if isinstance(plan, str):
        return plan
    refusal = plan.refusal()
    if refusal is not None:
        raise MmmoError(refusal)
    return plan.choice_line()


def check_tasks(spec: SearchSpec) -> str:
    """Build the lm-eval tasks once: an unknown task or a metric a task does not produce fails here."""
    from mmmo.objectives.lm_eval import LmEvalObjectives

    objectives = LmEvalObjectives(
        spec.task_objectives,
        tasks_dir=spec.tasks_dir,
        batch_size=1,
        confirm_run_unsafe_code=spec.evaluation.confirm_run_unsafe_code,
    )
    return f"tasks: {', '.join(objectives.names)} built; metrics found"


def describe_spec(spec: SearchSpec) -> str:
    """One line: method, sources, search dimensions, objectives and budget (builds the search space)."""
    from mmmo.optimizer.space import SearchSpace

    space = SearchSpace.from_spec(spec)
    opt = spec.optimizer
    return (
        f"spec: {spec.name}: {', '.join(spec.merge.methods)} over {len(spec.models)} model(s), {space.dim} search dimensions "
        f"({', '.join(space.names)}), {len(spec.objectives)} objectives, budget {opt.budget} evaluations "
        f"({opt.strategy}: {opt.initial} initial + {opt.batches}×{opt.batch_size})"
    )


def check_limits(spec: SearchSpec) -> None:
    """Each objective's limit, as the task builder would read it (a field check that needs no task)."""
    from mmmo.run.documents import document_limit

    for objective in spec.task_objectives:
        document_limit(objective.limit, objective.name)


def check_fields(path: str | Path) -> str:
    """The schema, limits and search space only: no path, hub id, model header or lm-eval task is looked at."""
    spec = load_spec(path, check_paths=False)
    check_limits(spec)
    return (
        f"{describe_spec(spec)}; fields ok; not checked (offline): model paths and hub ids, tensor headers, "
        "lm-eval tasks and metrics"
    )


def validate_spec_file(path: str | Path, *, offline: bool = False) -> list[str]:
    """Every check `mmmo validate` makes, or only the fields when `offline`; MmmoError (one line) at the first
    problem."""
    if offline:
        return [check_fields(path)]
    spec = load_spec(path)
    return [
        describe_spec(spec),
        check_sources(spec),
        *memory_lines(spec),
        check_tasks(spec),
        f"run folder: {spec.run_dir}",
        "ok",
    ]
