"""lm-eval task objectives, scored on the live model that the merge engine rewrites in place.

Tasks, datasets and prompts are built once per search; each `evaluate()` re-runs the same requests on
the same HFLM wrapper through `lm_eval.evaluator.evaluate`, with nothing carried over between candidates
except what does not depend on the weights (prompts, tokenisation, the detected batch size).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from mmmo.config import ObjectiveSpec
from mmmo.errors import MmmoError

if TYPE_CHECKING:
    from lm_eval.api.group import Group
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

# lm-eval's own default fewshot seed (simple_evaluate's fewshot_random_seed), so prompts match its CLI.
FEWSHOT_SEED = 1234
# Seed for sampling tasks (do_sample: true), reset before every evaluation so equal weights score equally.
SAMPLING_SEED = 1234
# Closed-form stderrs (mean, acc_all) only need this > 0; bootstrapped ones (perplexity, f1, bleu, ...)
# cost this many resamples per candidate, so it is kept small.
BOOTSTRAP_ITERS = 100
# lm-eval's "auto" batch size probes with OOM retries, which only exist on CUDA; elsewhere use this.
NON_CUDA_AUTO_BATCH = 32

_log = logging.getLogger(__name__)
_LM_EVAL_LOGGERS = ("lm_eval",)


class EvaluationError(MmmoError):
    """One candidate could not be scored (OOM, non-finite logits or scores, a task error)."""


@dataclass(frozen=True)
class TaskScore:
    """An objective's value for one candidate, with every raw metric lm-eval reported for its task."""

    value: float
    metrics: dict[str, float]
    n_examples: int
    stderr: float | None = None  # lm-eval's standard error of `value`; None where it reported none


@dataclass
class _Unit:
    """One lm-eval task or group, built once with one num_fewshot and limit, scored for >= 1 objective."""

    name: str
    limit: int | float | None
    tasks: dict[str, Task]
    groups: dict[str, Group]

    @property
    def is_group(self) -> bool:
        return self.name in self.groups


@dataclass
class _Run:
    """The units scored by one `lm_eval.evaluator.evaluate` call: equal limits, no leaf task twice."""

    limit: int | float | None
    units: list[_Unit] = field(default_factory=list)

    def accepts(self, unit: _Unit) -> bool:
        names = {n for u in self.units for n in u.tasks}
        return unit.limit == self.limit and names.isdisjoint(unit.tasks)

    def task_dict(self) -> dict[str, Any]:
        return {
            "tasks": {n: t for u in self.units for n, t in u.tasks.items()},
            "groups": {n: g for u in self.units for n, g in u.groups.items()},
        }


@dataclass(frozen=True)
class _Target:
    objective: str
    unit: _Unit
    metric_key: str  # "metric,filter", as lm-eval reports it


class LmEvalObjectives:
    """Scores the lm_eval objectives of a search on a live model; tasks are built and validated up front."""

    def __init__(
        self,
        objectives: Sequence[ObjectiveSpec],
        *,
        tasks_dir: str | None,
        batch_size: int | Literal["auto"] = "auto",
        confirm_run_unsafe_code: bool = False,
    ) -> None:
        _quiet_lm_eval()
        _cache_prompt_templates()
        self.batch_size = batch_size
        self.tasks_dir = tasks_dir
        self.confirm_run_unsafe_code = confirm_run_unsafe_code
        if confirm_run_unsafe_code:
            _allow_code_eval()
        self._targets: list[_Target] = []
        self._runs: list[_Run] = []
        self._lm: Any = None
        self._model: torch.nn.Module | None = None
        self._device: torch.device | None = None
        units: dict[tuple[str, int | None, int | float | None], _Unit] = {}
        catalog = _Catalog(tasks_dir)
        for spec in objectives:
            if spec.type != "lm_eval":
                continue
            assert spec.task is not None and spec.metric is not None  # guaranteed by ObjectiveSpec
            limit = normalize_limit(spec)
            key = (spec.task, spec.num_fewshot, limit)
            if key not in units:
                units[key] = _build_unit(spec, limit, catalog, confirm_run_unsafe_code)
            unit = units[key]
            self._targets.append(_Target(spec.name, unit, _resolve_metric(spec, unit)))
        for unit in units.values():
            run = next((r for r in self._runs if r.accepts(unit)), None)
            if run is None:
                run = _Run(unit.limit)
                self._runs.append(run)
            run.units.append(unit)

    @property
    def names(self) -> list[str]:
        """The objective names scored, in spec order."""
        return [t.objective for t in self._targets]

    def bind(self, model: torch.nn.Module, tokenizer: Any, device: torch.device) -> None:
        """Wrap the live model (by reference: never copied, moved or cast) for every later evaluate()."""
        if not self._targets:
            return
        model_device = next(model.parameters()).device
        if not _same_device(model_device, device):
            raise MmmoError(f"the model is on {model_device} but evaluation was asked for on {device}")
        batch_size: int | str = self.batch_size
        if batch_size == "auto" and device.type != "cuda":
            batch_size = NON_CUDA_AUTO_BATCH
        # HFLM warns (once) that a pre-built model makes most of its options moot: expected here.
        with _logger_level("lm_eval.models.huggingface", logging.ERROR):
            self._lm = _LiveHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        self._model = model
        self._device = device

    def evaluate(self) -> dict[str, TaskScore]:
        """Score the model's current weights on every objective; EvaluationError when that fails."""
        if not self._targets:
            return {}
        if self._lm is None or self._model is None or self._device is None:
            raise RuntimeError("LmEvalObjectives.evaluate() called before bind()")
        from lm_eval.evaluator import evaluate as lm_eval_evaluate

        bad_logits = torch.zeros((), dtype=torch.bool, device=self._device)
        hook = self._model.register_forward_hook(_nonfinite_logits_hook(bad_logits))
        # Per unit, not per name: one task at two limits (or two num_fewshot) is scored in two runs.
        reported: dict[int, tuple[dict[str, Any], int]] = {}
        try:
            with _evaluation_context(self._device):
                for index, run in enumerate(self._runs):
                    self._lm.run_key = index  # the batch size probed for one run's requests fits only those
                    out = lm_eval_evaluate(
                        lm=self._lm,
                        task_dict=run.task_dict(),
                        limit=run.limit,
                        bootstrap_iters=BOOTSTRAP_ITERS,
                        log_samples=_needs_samples(run),
                        cache_requests=False,
                        # Every unsafe task was refused at build time unless the spec confirmed it.
                        confirm_run_unsafe_code=self.confirm_run_unsafe_code,
                    )
                    if out is None:  # only on non-zero ranks, which a live single-process model never has
                        raise RuntimeError("lm-eval returned no results")
                    for unit in run.units:
                        n = sum(int(out["n-samples"][name]["effective"]) for name in unit.tasks)
                        reported[id(unit)] = (out["results"].get(unit.name, {}), n)
        except Exception as err:
            _release_memory(self._device)
            raise EvaluationError(f"evaluation failed: {_one_line(err)}") from err
        finally:
            hook.remove()
        if bool(bad_logits):
            raise EvaluationError("evaluation failed: the model produced NaN or +inf logits")
        return {t.objective: _score(t, *reported[id(t.unit)]) for t in self._targets}


def _score(target: _Target, raw: dict[str, Any], n_examples: int) -> TaskScore:
    """The objective's value from lm-eval's results for its task or group; non-finite is a failure."""
    unit = target.unit
    metrics = {k: float(v) for k, v in raw.items() if "," in k and _is_number(v)}
    if target.metric_key not in metrics:
        raise EvaluationError(
            f"objective {target.objective!r}: lm-eval reported no {target.metric_key!r} for "
            f"{unit.name!r} (it reported: {', '.join(sorted(metrics)) or 'nothing'})"
        )
    value = metrics[target.metric_key]
    if not math.isfinite(value):
        raise EvaluationError(f"objective {target.objective!r}: {target.metric_key} is {value}")
    metric, _, filt = target.metric_key.partition(",")
    stderr = metrics.get(f"{metric}_stderr,{filt}")
    if stderr is not None and not (math.isfinite(stderr) and stderr >= 0):
        stderr = None
    return TaskScore(value=value, metrics=metrics, n_examples=n_examples, stderr=stderr)


# ------------------------------------------------------------------------------------ the HF wrapper


@functools.cache
def _live_hflm_class() -> type:
    from lm_eval.models.huggingface import HFLM

    class LiveHFLM(HFLM):
        """HFLM on a model that changes in place: no progress bars, one batch-size probe per request type.

        Prompts and their tokenisation do not depend on the weights, so tokenising is memoised; what the
        model returns is never kept.
        """

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._auto = self.batch_size_per_gpu == "auto"
            self.run_key: int = 0
            self._probed: dict[tuple[int, str], int] = {}
            self._last_probe: int | None = None
            self._encodings: dict[tuple[str, bool | None, int | None], list[int]] = {}
            self._batch_encodings: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

        def _with_batch_size(self, kind: str, call: Any, requests: Any) -> Any:
            # lm-eval re-probes "auto" on every call (and prints about it); memory needs do not depend on
            # the weights, so the size probed on the first call is reused.
            key = (self.run_key, kind)
            fixed = self._probed.get(key) if self._auto else None
            if fixed is not None:
                self.batch_size_per_gpu = fixed
            self._last_probe = None
            try:
                return call(requests, disable_tqdm=True)
            finally:
                if self._auto:
                    if fixed is None and self._last_probe is not None:
                        self._probed[key] = self._last_probe
                    self.batch_size_per_gpu = "auto"

        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return self._with_batch_size("loglikelihood", super().loglikelihood, requests)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return self._with_batch_size("rolling", super().loglikelihood_rolling, requests)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return self._with_batch_size("generate", super().generate_until, requests)

        def _loglikelihood_tokens(
            self, requests: Any, disable_tqdm: bool = False, override_bs: Any = None
        ) -> Any:
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

        def _detect_batch_size(self, requests: Any = None, pos: int = 0) -> int:
            size = int(super()._detect_batch_size(requests, pos))
            self._last_probe = size if self._last_probe is None else min(size, self._last_probe)
            return size

        def tok_encode(
            self,
            string: str,
            add_special_tokens: bool | None = None,
            left_truncate_len: int | None = None,
            **kwargs: Any,
        ) -> list[int]:
            if kwargs:
                return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
            key = (string, add_special_tokens, left_truncate_len)
            ids = self._encodings.get(key)
            if ids is None:
                ids = self._encodings[key] = super().tok_encode(string, add_special_tokens, left_truncate_len)
            return list(ids)

        def tok_batch_encode(
            self,
            strings: list[str],
            padding_side: str = "left",
            left_truncate_len: int | None = None,
            truncation: bool = False,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            key = (tuple(strings), padding_side, left_truncate_len, truncation)
            pair = self._batch_encodings.get(key)
            if pair is None:
                pair = self._batch_encodings[key] = super().tok_batch_encode(
                    strings, padding_side, left_truncate_len, truncation
                )
            # Clones: generate() must never see (or touch) the memoised tensors themselves.
            return pair[0].clone(), pair[1].clone()

    return LiveHFLM


def _LiveHFLM(**kwargs: Any) -> Any:
    return _live_hflm_class()(**kwargs)


def _nonfinite_logits_hook(flag: torch.Tensor) -> Any:
    """A forward hook that ORs "any logit is NaN or +inf" into `flag`, on device, without a sync."""

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple) and output and torch.is_tensor(output[0]):
            logits = output[0]
        if logits is not None and logits.numel():
            top = logits.detach().amax()  # NaN propagates through amax; -inf alone is a legitimate mask
            flag.logical_or_(~(top < math.inf))

    return hook


# ------------------------------------------------------------------------------ building the tasks


class _Catalog:
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


def normalize_limit(spec: ObjectiveSpec) -> int | float | None:
    """An int count, a fraction in (0, 1), or None for every example (a fraction of 1.0 included)."""
    limit = spec.limit
    if limit is None:
        return None
    if isinstance(limit, float):
        if 0.0 < limit < 1.0:
            return limit
        if limit == 1.0:
            return None
        if limit > 1.0 and limit.is_integer():
            return int(limit)
    elif limit >= 1:
        return int(limit)
    raise MmmoError(
        f"objective {spec.name!r}: limit must be a count >= 1 or a fraction in (0, 1], got {limit!r}"
    )


def _build_unit(
    spec: ObjectiveSpec, limit: float | None, catalog: _Catalog, confirm_run_unsafe_code: bool
) -> _Unit:
    """Load the task or group with its dataset, apply num_fewshot and build its requests once."""
    from lm_eval.evaluator_utils import get_sample_size

    assert spec.task is not None
    loaded: Any = None
    failure: Exception | None = None
    for manager in catalog.managers_for(spec.task):
        if spec.task in manager.all_tags and spec.task not in manager.all_groups:
            raise MmmoError(
                f"objective {spec.name!r}: {spec.task!r} is an lm-eval tag (a list of tasks without a "
                "combined score); name one of its tasks or a group"
            )
        # Before loading: loading a code task already imports its scorer, which refuses to start without
        # HF_ALLOW_CODE_EVAL and would bury the real reason in a page of text.
        if not confirm_run_unsafe_code and _declares_unsafe_code(manager, spec.task):
            raise MmmoError(_unsafe_code_message(spec, spec.task))
        try:
            loaded = manager.load([spec.task])
            break
        except Exception as err:  # noqa: BLE001 - dataset, YAML or import trouble inside lm-eval
            failure = err
    if loaded is None:
        if failure is None:
            raise MmmoError(catalog.unknown_task_message(spec))
        raise MmmoError(
            f"objective {spec.name!r}: could not load lm-eval task {spec.task!r}: {_one_line(failure)}"
        )
    unit = _Unit(
        name=spec.task, limit=limit, tasks=dict(loaded["tasks"]), groups=dict(loaded.get("groups", {}))
    )
    if not unit.tasks:
        raise MmmoError(f"objective {spec.name!r}: lm-eval task {spec.task!r} holds no tasks")
    unsafe = [name for name, task in unit.tasks.items() if getattr(task, "UNSAFE_CODE", False)]
    if unsafe and not confirm_run_unsafe_code:  # a group's member, which the index check cannot see
        raise MmmoError(_unsafe_code_message(spec, unsafe[0]))
    for task in unit.tasks.values():
        _set_fewshot(task, spec.num_fewshot)
        try:
            _freeze_requests(task, get_sample_size(task, limit))
        except Exception as err:  # noqa: BLE001
            raise MmmoError(
                f"objective {spec.name!r}: could not build the prompts of {task.task_name!r}: {_one_line(err)}"
            ) from None
    return unit


def _declares_unsafe_code(manager: TaskManager, name: str) -> bool:
    """Whether the task's YAML (as indexed, before anything is imported) sets lm-eval's `unsafe_code`."""
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    return bool(cfg.get("unsafe_code", False))


def _unsafe_code_message(spec: ObjectiveSpec, task: str) -> str:
    return (
        f"objective {spec.name!r}: lm-eval task {task!r} executes the code the model writes (unsafe_code); "
        "allow it with evaluation.confirm_run_unsafe_code: true, on a machine where that is acceptable"
    )


def _allow_code_eval() -> None:
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


def _freeze_requests(task: Task, limit: int | None) -> None:
    """Build the task's requests now and turn lm-eval's per-call rebuild into a reset of their responses.

    evaluate() rebuilds every request on each call (re-rendering prompts, re-sampling few-shot examples
    with an advancing RNG); prompts do not depend on the weights, so they are built once and only the
    per-request outputs (`resps`, `filtered_resps`) are cleared before each candidate.
    """
    task.build_all_requests(limit=limit, rank=0, world_size=1, cache_requests=False)
    built = list(task.instances)

    def reuse_requests(**_ignored: Any) -> None:
        for instance in built:
            instance.resps = []
            instance.filtered_resps = {}
        task._instances = list(built)

    task.build_all_requests = reuse_requests  # type: ignore[method-assign]


def _task_metric_keys(task: Task) -> list[str]:
    filters = [f.name for f in getattr(task, "_filters", [])] or ["none"]
    return [f"{m},{f}" for f in filters for m in task.aggregation()]


def _group_metric_keys(group: Group) -> list[str]:
    leaf_keys = [k for t in group.get_all_tasks() for k in _task_metric_keys(t)]
    keys: list[str] = []
    for agg in group.aggregate_metric_list or []:
        filters = agg.filter_list or sorted(
            {k.split(",", 1)[1] for k in leaf_keys if k.split(",")[0] == agg.metric}
        )
        keys += [f"{agg.metric},{f}" for f in filters]
    return keys


def _resolve_metric(spec: ObjectiveSpec, unit: _Unit) -> str:
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


def _needs_samples(run: _Run) -> bool:
    # lm-eval refuses "bypass" (predict-only) metrics unless per-sample logging is on.
    return any("bypass" in getattr(t, "_metric_fn_list", {}) for u in run.units for t in u.tasks.values())


# ------------------------------------------------------------------------------------------ helpers


def _cache_prompt_templates() -> None:
    """Memoise lm-eval's Jinja compilation: it compiles each doc_to_text/target/choice template per document.

    lm-eval renders through `env.from_string`, which never caches, so every candidate re-compiled the same
    few templates once per document while scoring (~1.5 ms each, more than a small model's forward pass).
    Compiled templates are immutable, so sharing them changes nothing but the time.
    """
    from lm_eval import utils

    env = utils.env
    if getattr(env.from_string, "_mmmo_cached", False):
        return
    compile_template = env.from_string
    compiled = functools.lru_cache(maxsize=4096)(compile_template)

    def from_string(source: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(source, str):
            return compile_template(source, *args, **kwargs)
        return compiled(source)

    from_string._mmmo_cached = True  # type: ignore[attr-defined]
    env.from_string = from_string  # type: ignore[method-assign]


def _quiet_lm_eval() -> None:
    """Keep lm-eval's per-call INFO chatter (task building, request counts) out of the search's output."""
    for name in _LM_EVAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


@contextlib.contextmanager
def _evaluation_context(device: torch.device) -> Iterator[None]:
    """Seeded torch RNG (restored after) and no bootstrap process pool: equal weights, equal scores."""
    old = os.environ.get("DISABLE_MULTIPROC")
    # lm-eval bootstraps stderrs in a process pool unless this is set: forking a process that holds the
    # model (and maybe a CUDA context) per candidate is slow and fragile, and 100 draws need no pool.
    os.environ["DISABLE_MULTIPROC"] = "1"
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(SAMPLING_SEED)
            yield
    finally:
        if old is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = old


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(err).__name__}: {text}"
