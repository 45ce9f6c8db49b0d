"""lm-eval task objectives, scored on the live model that the merge engine rewrites in place.

Tasks, datasets and prompts are built once per search (lm_eval_tasks.py); each `evaluate()` re-runs the same
requests on the same HFLM wrapper through `lm_eval.evaluator.evaluate`, with nothing carried over between
candidates except what does not depend on the weights (prompts, tokenisation, the detected batch size: see
lm_eval_compat.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from mmmo.objectives.lm_eval_compat import (
    aggregate_outcomes,
    bootstrap_in_process,
    cache_prompt_templates,
    live_hflm,
)
from mmmo.objectives.lm_eval_tasks import (
    TaskCatalog,
    TaskUnit,
    allow_code_eval,
    averages_documents,
    build_unit,
    resolve_metric,
)
from mmmo.run.documents import DocumentPlan, SubsetKind, document_limit, stage_sizes
from mmmo.runtime.errors import MmmoError, one_line
from mmmo.spec.schema import ObjectiveSpec

# Seed for sampling tasks (do_sample: true), reset before every evaluation so equal weights score equally.
SAMPLING_SEED = 1234
# Closed-form stderrs (mean, acc_all) only need this > 0; bootstrapped ones (perplexity, f1, bleu, ...)
# cost this many resamples per candidate, so it is kept small.
BOOTSTRAP_ITERS = 100
# lm-eval's "auto" batch size probes with OOM retries, which only exist on CUDA; elsewhere use this.
NON_CUDA_AUTO_BATCH = 32

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
    # Per leaf task, the metric's value on each document scored, in the run's document order; None where lm-eval's
    # per-document values are not numbers (a corpus metric's tuples), which are not kept.
    outcomes: dict[str, list[float]] | None = None


@dataclass
class _Run:
    """The units scored by one `lm_eval.evaluator.evaluate` call: no leaf task twice."""

    units: list[TaskUnit] = field(default_factory=list)

    def accepts(self, unit: TaskUnit) -> bool:
        names = {n for u in self.units for n in u.tasks}
        return names.isdisjoint(unit.tasks)

    def task_dict(self) -> dict[str, Any]:
        return {
            "tasks": {n: t for u in self.units for n, t in u.tasks.items()},
            "groups": {n: g for u in self.units for n, g in u.groups.items()},
        }


@dataclass(frozen=True)
class _Target:
    objective: str
    unit: TaskUnit
    metric_key: str  # "metric,filter", as lm-eval reports it
    averages: bool  # the value is a mean of per-document values (lm_eval_tasks.averages_documents)


class LmEvalObjectives:
    """Scores the lm_eval objectives of a search on a live model; tasks are built and validated up front."""

    def __init__(
        self,
        objectives: Sequence[ObjectiveSpec],
        *,
        tasks_dir: str | None,
        batch_size: int | Literal["auto"] = "auto",
        confirm_run_unsafe_code: bool = False,
        subset: SubsetKind = "random",
        subset_seed: int = 0,
        stages: Sequence[float] | None = None,
    ) -> None:
        _quiet_lm_eval()
        cache_prompt_templates()
        self.batch_size = batch_size
        self.tasks_dir = tasks_dir
        self.confirm_run_unsafe_code = confirm_run_unsafe_code
        self.stages = tuple(stages) if stages else None
        if confirm_run_unsafe_code:
            allow_code_eval()
        self._targets: list[_Target] = []
        self._lm: Any = None
        self._model: torch.nn.Module | None = None
        self._device: torch.device | None = None
        units: dict[tuple[str, int | None, int | float | None], TaskUnit] = {}
        catalog = TaskCatalog(tasks_dir)
        for spec in objectives:
            if spec.type != "lm_eval":
                continue
            assert spec.task is not None and spec.metric is not None  # guaranteed by ObjectiveSpec
            limit = document_limit(spec.limit, spec.name)
            key = (spec.task, spec.num_fewshot, limit)
            if key not in units:
                units[key] = build_unit(spec, limit, catalog, confirm_run_unsafe_code, subset, subset_seed)
            unit = units[key]
            metric_key = resolve_metric(spec, unit)
            self._targets.append(_Target(spec.name, unit, metric_key, averages_documents(unit, metric_key)))
        self._runs = _plan_runs(units.values())
        if self.stages:
            _check_stages(self._targets, len(self.stages))

    @property
    def names(self) -> list[str]:
        """The objective names scored, in spec order."""
        return [t.objective for t in self._targets]

    @property
    def plan(self) -> DocumentPlan:
        """The documents each objective is scored on, per leaf task, in scoring order."""
        return {t.objective: [t.unit.documents[leaf] for leaf in t.unit.tasks] for t in self._targets}

    @property
    def n_stages(self) -> int:
        """How many stages a candidate's scoring has (1 without evaluation.stages)."""
        return len(self.stages) if self.stages else 1

    @property
    def lm(self) -> Any:
        """The lm-eval LM (an HFLM) that wraps the bound model, by reference; None before bind()."""
        return self._lm

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
            self._lm = live_hflm(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        self._model = model
        self._device = device

    def evaluate(self, stage: int | None = None) -> dict[str, TaskScore]:
        """Score the model's current weights on every objective; EvaluationError when that fails.

        `stage` k scores only the documents stage k adds (see mmmo.run.documents.stage_sizes); None scores them all.
        """
        if not self._targets:
            return {}
        if self._lm is None or self._model is None or self._device is None:
            raise RuntimeError("LmEvalObjectives.evaluate() called before bind()")
        bad_logits = torch.zeros((), dtype=torch.bool, device=self._device)
        hook = self._model.register_forward_hook(_nonfinite_logits_hook(bad_logits))
        try:
            with _evaluation_context(self._device):
                reported = self._run_all(stage)
        except Exception as err:
            _release_memory(self._device)
            raise EvaluationError(f"evaluation failed: {one_line(err)}") from err
        finally:
            hook.remove()
        if bool(bad_logits):
            raise EvaluationError("evaluation failed: the model produced NaN or +inf logits")
        return {t.objective: self._target_score(t, reported[id(t.unit)], stage) for t in self._targets}

    def combine(self, objective: str, outcomes: dict[str, list[float]]) -> TaskScore:
        """The objective's score on the documents of `outcomes` (per leaf task, per-document values), as lm-eval
        reports it when it scores them at once (a candidate's stages together)."""
        target = next(t for t in self._targets if t.objective == objective)
        values = {leaf: {target.metric_key: v} for leaf, v in outcomes.items()}
        results = aggregate_outcomes(target.unit.tasks, target.unit.groups, values, BOOTSTRAP_ITERS)
        score = _score(target, results.get(target.unit.name, {}), sum(len(v) for v in outcomes.values()))
        return replace(score, outcomes={leaf: list(v) for leaf, v in outcomes.items()})

    def stage_documents(self, unit: TaskUnit, stage: int | None) -> dict[str, list[int]]:
        """Per leaf task of `unit`, the document ids `stage` scores (all of them for None), in the run's order."""
        out = {}
        for leaf, docs in unit.documents.items():
            if stage is None:
                out[leaf] = list(docs.ids)
                continue
            sizes = stage_sizes(len(docs.ids), self.stages)
            out[leaf] = list(docs.ids[(sizes[stage - 1] if stage else 0) : sizes[stage]])
        return out

    def _target_score(self, target: _Target, reported: tuple[dict[str, Any], Any], stage: int | None) -> TaskScore:
        raw, samples = reported
        order = self.stage_documents(target.unit, stage)
        score = _score(target, raw, sum(len(ids) for ids in order.values()))
        return replace(score, outcomes=_per_document(target, samples, order))

    def _run_all(self, stage: int | None) -> dict[int, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]]:
        """lm-eval's results and logged samples per unit (by id), one `evaluate` call per run."""
        from lm_eval.evaluator import evaluate as lm_eval_evaluate

        # Per unit, not per name: one task at two limits (or two num_fewshot) is scored in two runs.
        reported: dict[int, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = {}
        for index, run in enumerate(self._runs):
            self._lm.run_key = (index, stage)  # the batch size probed for one call's requests fits only those
            chosen = {leaf: sorted(ids) for u in run.units for leaf, ids in self.stage_documents(u, stage).items()}
            out = lm_eval_evaluate(
                lm=self._lm,
                task_dict=run.task_dict(),
                samples=chosen,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=True,  # each document's metric values: the run keeps them
                cache_requests=False,
                # Every unsafe task was refused at build time unless the spec confirmed it.
                confirm_run_unsafe_code=self.confirm_run_unsafe_code,
            )
            if out is None:  # only on non-zero ranks, which a live single-process model never has
                raise RuntimeError("lm-eval returned no results")
            for unit in run.units:
                reported[id(unit)] = (out["results"].get(unit.name, {}), out.get("samples", {}))
        return reported


def _check_stages(targets: Sequence[_Target], n_stages: int) -> None:
    """Stages combine per-document values: every objective must average them, and fill every stage."""
    for t in targets:
        if not t.averages:
            raise MmmoError(
                f"objective {t.objective!r}: {t.metric_key} is not a mean over documents, so evaluation.stages "
                "cannot combine its stages; turn stages off or choose a mean metric (exact_match, acc, ...)"
            )
        for leaf, docs in t.unit.documents.items():
            if len(docs.ids) < n_stages:
                raise MmmoError(
                    f"objective {t.objective!r}: task {leaf!r} has {len(docs.ids)} document(s) for "
                    f"{n_stages} evaluation.stages; raise its limit or use fewer stages"
                )


def _per_document(
    target: _Target, samples: dict[str, list[dict[str, Any]]], order: dict[str, list[int]]
) -> dict[str, list[float]] | None:
    """Per leaf task, the target metric's value on each document of `order`; None unless the metric is a mean
    over documents with a number per document (a paired comparison of anything else would not be of the score)."""
    if not target.averages:
        return None
    metric, _, filt = target.metric_key.partition(",")
    out: dict[str, list[float]] = {}
    for leaf, ids in order.items():
        by_id = {int(s["doc_id"]): s.get(metric) for s in samples.get(leaf, []) if s.get("filter") == filt}
        values = [by_id.get(i) for i in ids]
        if not all(_is_number(v) for v in values):
            return None
        out[leaf] = [float(v) for v in values]  # type: ignore[arg-type]
    return out


def _plan_runs(units: Iterable[TaskUnit]) -> list[_Run]:
    """The units grouped into as few lm-eval runs as their shared leaf tasks allow (a task once per run), in order."""
    runs: list[_Run] = []
    for unit in units:
        run = next((r for r in runs if r.accepts(unit)), None)
        if run is None:
            run = _Run()
            runs.append(run)
        run.units.append(unit)
    return runs


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


# ------------------------------------------------------------------------------------------ helpers


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
    """Seeded torch RNG (restored after), no gradients, and no bootstrap process pool: equal weights, equal scores."""
    devices = [device] if device.type == "cuda" else []
    with bootstrap_in_process(), torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(SAMPLING_SEED)
        yield


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
