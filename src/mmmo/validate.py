"""`mmmo validate`: check a spec, its model folders (headers only) and its lm-eval tasks, loading no weights.

`--offline` checks the fields alone, so a spec can be checked before its models and datasets are at hand.
"""

from __future__ import annotations

from pathlib import Path

from mmmo.config import SearchSpec, is_hub_id, load_spec


def check_sources(spec: SearchSpec) -> str:
    """Architecture, tensor names and shapes of every local source against the base, from file headers."""
    from mmmo.merge.checkpoint import check_compatible, open_checkpoint

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
    from mmmo.search.space import SearchSpace

    space = SearchSpace.from_spec(spec)
    opt = spec.optimizer
    return (
        f"spec: {spec.name}: {spec.merge.method} over {len(spec.models)} model(s), {space.dim} search dimensions "
        f"({', '.join(space.names)}), {len(spec.objectives)} objectives, budget {opt.budget} evaluations "
        f"({opt.strategy}: {opt.initial} initial + {opt.batches}×{opt.batch_size})"
    )


def check_limits(spec: SearchSpec) -> None:
    """Each objective's limit, as the task builder would read it (a field check that needs no task)."""
    from mmmo.objectives.lm_eval_tasks import normalize_limit

    for objective in spec.task_objectives:
        normalize_limit(objective)


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
        check_tasks(spec),
        f"run folder: {spec.run_dir}",
        "ok",
    ]
