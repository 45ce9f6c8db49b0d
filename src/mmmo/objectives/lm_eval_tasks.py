"""The lm-eval tasks a search scores, built once: found, loaded with their data, configured and checked up front.

Every problem a spec can cause (an unknown task, a tag, an unconfirmed code task, a metric the task does not report,
a bad limit) is an MmmoError here, before any candidate is merged.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmmo.objectives.lm_eval_compat import declares_unsafe_code, filter_names, freeze_requests
from mmmo.run.documents import SubsetKind, TaskDocuments, document_order, fingerprint, subset_size
from mmmo.runtime.errors import MmmoError, one_line
from mmmo.spec.schema import ObjectiveSpec

if TYPE_CHECKING:
    from lm_eval.api.group import Group
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

# lm-eval's own default fewshot seed (simple_evaluate's fewshot_random_seed), so prompts match its CLI.
FEWSHOT_SEED = 1234

_log = logging.getLogger(__name__)


@dataclass
class TaskUnit:
    """One lm-eval task or group, built once with one num_fewshot and limit, scored for >= 1 objective."""

    name: str
    limit: int | float | None  # a count of documents, a fraction in (0, 1), or None for all
    tasks: dict[str, Task]  # leaf tasks by name: the task itself, or a group's members
    groups: dict[str, Group]  # empty for a task
    documents: dict[str, TaskDocuments] = field(default_factory=dict)  # per leaf task: the documents scored

    @property
    def is_group(self) -> bool:
        return self.name in self.groups


class TaskCatalog:
    """lm-eval's task index: tasks_dir alone when it names every task (fast), else with all built-ins."""

    def __init__(self, tasks_dir: str | None):
        self.tasks_dir = tasks_dir
        self._local: TaskManager | None = None
        self._full: TaskManager | None = None

    def local(self) -> TaskManager | None:
        if self.tasks_dir is None:
            return None
        if self._local is None:
            self._local = _task_manager(self.tasks_dir, include_defaults=False)
        return self._local

    def full(self) -> TaskManager:
        if self._full is None:
            self._full = _task_manager(self.tasks_dir, include_defaults=True)
        return self._full

    def managers_for(self, name: str) -> Iterator[TaskManager]:
        """The indexes that know `name`, smallest first (a local task may still need the built-ins)."""
        local = self.local()
        if local is not None and name in local.all_tasks:
            yield local
        full = self.full()
        if name in full.all_tasks:
            yield full

    def unknown_task_message(self, spec: ObjectiveSpec) -> str:
        full = self.full()
        where = (
            f"tasks_dir {self.tasks_dir} or lm-eval's built-in tasks" if self.tasks_dir else "lm-eval's tasks"
        )
        close = difflib.get_close_matches(spec.task or "", full.all_tasks, n=5, cutoff=0.6)
        local = self.local()
        local_names = sorted(local.all_tasks) if local is not None else []
        hint = f"closest: {', '.join(close)}" if close else f"{len(full.all_tasks)} names are known"
        if local is not None:
            shown = ", ".join(local_names[:10]) + (", ..." if len(local_names) > 10 else "")
            hint += f"; tasks_dir holds: {shown or 'no task YAMLs'}"
        return f"objective {spec.name!r}: unknown lm-eval task {spec.task!r} (not in {where}); {hint}"


def _task_manager(tasks_dir: str | None, *, include_defaults: bool) -> TaskManager:
    from lm_eval.tasks import TaskManager

    if not hasattr(TaskManager, "load"):
        raise MmmoError("this lm-eval is too old (TaskManager.load is missing): pip install -U 'lm-eval[hf]'")
    return TaskManager(include_path=tasks_dir, include_defaults=include_defaults)


def build_unit(
    spec: ObjectiveSpec,
    limit: float | None,
    catalog: TaskCatalog,
    confirm_run_unsafe_code: bool,
    subset: SubsetKind = "random",
    subset_seed: int = 0,
) -> TaskUnit:
    """Load the task or group with its dataset, apply num_fewshot, choose its documents and build their requests once."""
    assert spec.task is not None
    unit = TaskUnit(name=spec.task, limit=limit, **_load(spec, catalog, confirm_run_unsafe_code))
    if not unit.tasks:
        raise MmmoError(f"objective {spec.name!r}: lm-eval task {spec.task!r} holds no tasks")
    unsafe = [name for name, task in unit.tasks.items() if getattr(task, "UNSAFE_CODE", False)]
    if unsafe and not confirm_run_unsafe_code:  # a group's member, which the index check cannot see
        raise MmmoError(unsafe_code_message(spec, unsafe[0]))
    for name, task in unit.tasks.items():
        _set_fewshot(task, spec.num_fewshot)
        try:
            unit.documents[name] = choose_documents(task, name, limit, subset, subset_seed)
            freeze_requests(task, unit.documents[name].ids)
        except MmmoError:
            raise
        except Exception as err:  # noqa: BLE001
            raise MmmoError(
                f"objective {spec.name!r}: could not build the prompts of {task.task_name!r}: {one_line(err)}"
            ) from None
    return unit


def choose_documents(task: Task, name: str, limit: float | None, subset: SubsetKind, seed: int) -> TaskDocuments:
    """The documents of a leaf task a run scores (see mmmo.run.documents), with a fingerprint of their contents."""
    docs = task.eval_docs
    n = len(docs)
    if n == 0:
        raise MmmoError(f"lm-eval task {name!r} has no documents in its evaluation split")
    ids = document_order(n, name, seed, subset)[: subset_size(n, limit)]
    texts = [json.dumps(docs[i], sort_keys=True, default=str) for i in ids]
    return TaskDocuments(task=name, ids=tuple(ids), available=n, fingerprint=fingerprint(texts))


def _load(spec: ObjectiveSpec, catalog: TaskCatalog, confirm_run_unsafe_code: bool) -> dict[str, Any]:
    """The spec's task or group as `{"tasks": {name: Task}, "groups": {name: Group}}`, from the first index
    that loads it."""
    assert spec.task is not None
    failure: Exception | None = None
    for manager in catalog.managers_for(spec.task):
        if spec.task in manager.all_tags and spec.task not in manager.all_groups:
            raise MmmoError(
                f"objective {spec.name!r}: {spec.task!r} is an lm-eval tag (a list of tasks without a "
                "combined score); name one of its tasks or a group"
            )
        # Before loading: loading a code task already imports its scorer (see declares_unsafe_code).
        if not confirm_run_unsafe_code and declares_unsafe_code(manager, spec.task):
            raise MmmoError(unsafe_code_message(spec, spec.task))
        try:
            loaded = manager.load([spec.task])
        except Exception as err:  # noqa: BLE001 - dataset, YAML or import trouble inside lm-eval
            failure = err
            continue
        return {"tasks": dict(loaded["tasks"]), "groups": dict(loaded.get("groups", {}))}
    if failure is None:
        raise MmmoError(catalog.unknown_task_message(spec))
    raise MmmoError(f"objective {spec.name!r}: could not load lm-eval task {spec.task!r}: {one_line(failure)}")


def unsafe_code_message(spec: ObjectiveSpec, task: str) -> str:
    return (
        f"objective {spec.name!r}: lm-eval task {task!r} executes the code the model writes (unsafe_code); "
        "allow it with evaluation.confirm_run_unsafe_code: true, on a machine where that is acceptable"
    )


def allow_code_eval() -> None:
    """Let Hugging Face `evaluate`'s code_eval metric run: the spec's confirm_run_unsafe_code is the consent.

    Set in the process that builds the tasks (each Ray worker included), before a code task's scorer is
    imported, since that import already runs a test program through code_eval.
    """
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"


def _set_fewshot(task: Task, num_fewshot: int | None) -> None:
    """Apply num_fewshot as lm-eval's simple_evaluate does; a task configured zero-shot stays so."""
    configured = task.get_config("num_fewshot")
    if num_fewshot is not None:
        if configured == 0 and num_fewshot > 0:
            _log.warning(
                "task %s is zero-shot by its config; num_fewshot %d ignored", task.task_name, num_fewshot
            )
        else:
            task.set_config(key="num_fewshot", value=num_fewshot)
    elif configured is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)


def _task_metric_keys(task: Task) -> list[str]:
    return [f"{m},{f}" for f in filter_names(task) for m in task.aggregation()]


def _group_metric_keys(group: Group) -> list[str]:
    leaf_keys = [k for t in group.get_all_tasks() for k in _task_metric_keys(t)]
    keys: list[str] = []
    for agg in group.aggregate_metric_list or []:
        filters = agg.filter_list or sorted(
            {k.split(",", 1)[1] for k in leaf_keys if k.split(",")[0] == agg.metric}
        )
        keys += [f"{agg.metric},{f}" for f in filters]
    return keys


def averages_documents(unit: TaskUnit, metric_key: str) -> bool:
    """Whether the objective's value is a mean of per-document values: every leaf aggregates the metric with
    lm-eval's `mean` (and a group, if any, weights its leaves by size, as a pooled mean does)."""
    from lm_eval.api.metrics import mean

    metric = metric_key.split(",", 1)[0]
    if any(task.aggregation().get(metric) is not mean for task in unit.tasks.values()):
        return False
    for group in unit.groups.values():
        for agg in group.aggregate_metric_list or []:
            if agg.metric == metric and not agg.weight_by_size:
                return False
    return True


def resolve_metric(spec: ObjectiveSpec, unit: TaskUnit) -> str:
    """The full "metric,filter" key an objective reads; MmmoError naming the choices when there is none."""
    assert spec.metric is not None
    if unit.is_group:
        available = _group_metric_keys(unit.groups[unit.name])
        what = f"group {unit.name!r}"
    else:
        available = _task_metric_keys(unit.tasks[unit.name])
        what = f"task {unit.name!r}"
    if "," in spec.metric:
        key = spec.metric
    else:
        # Without a filter, the first filter that reports this metric (usually the only one, "none").
        key = next((k for k in available if k.split(",", 1)[0] == spec.metric), spec.metric + ",?")
    if key not in available:
        shown = ", ".join(available) if available else "none (a group needs aggregate_metric_list)"
        raise MmmoError(
            f"objective {spec.name!r}: {what} does not report metric {spec.metric!r}; available: {shown}"
        )
    return key
