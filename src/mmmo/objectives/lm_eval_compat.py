"""Every place mmmo reaches into lm-eval's internals (private attributes, replaced methods, process-wide patches).

lm-eval is built to score a model once; mmmo scores one live model many times, rewritten in place between calls,
so what does not depend on the weights (prompts, compiled templates, tokenisation, the probed batch size) is built
once and reused. Each adaptation below says what lm-eval does, what mmmo changes and why; tests/test_lm_eval_compat.py
pins each one, so that an lm-eval release that moves what it relies on fails there, by name (written against
lm-eval 0.4.x).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _HFLMMixin = HFLM  # the mixins below are type-checked as what they extend
else:
    _HFLMMixin = object  # ... and at run time sit before HFLM in LiveHFLM's bases, so that lm-eval loads lazily

# The environment variable lm-eval's bootstrap_stderr reads to resample in-process.
BOOTSTRAP_IN_PROCESS_VARIABLE = "DISABLE_MULTIPROC"


# ------------------------------------------------------------------------------------------------ tasks


def freeze_requests(task: Task, doc_ids: Sequence[int]) -> None:
    """Build the task's requests once for `doc_ids`, and turn lm-eval's rebuild on every evaluate() into a pick of them.

    lm-eval: `evaluator.evaluate` calls `task.build_all_requests(samples=ids, ...)` on every call, which re-renders
    each prompt and re-samples few-shot examples with an RNG that advances between calls, and keeps the requests in
    the private `task._instances` (read back through `task.instances`). With `samples` it enumerates the chosen
    documents in split order and numbers each request's `doc_id` by that position (its post-processing maps the
    position back through the `samples` list as given, so callers pass it sorted).
    mmmo: builds the requests of every document the run may score here, once, then replaces the task's
    `build_all_requests` by one that puts back copies of the requests of the documents asked for (`samples`, any
    subset of `doc_ids`; all of them when None), numbered as lm-eval numbers them, with empty outputs.
    Why: prompts do not depend on the weights; rebuilding them costs time per candidate, and with few-shot sampling
    it would show equal weights other prompts (so other scores), or a stage's documents other prompts than the full
    set's.
    """
    ids = sorted(set(doc_ids))
    task.build_all_requests(samples=ids, rank=0, world_size=1, cache_requests=False)
    by_doc: dict[int, list[Any]] = {}
    for instance in task.instances:
        by_doc.setdefault(ids[instance.doc_id], []).append(instance)

    def pick_requests(*, samples: Sequence[int] | None = None, **_ignored: Any) -> None:
        chosen = ids if samples is None else sorted(samples)
        picked = []
        for position, doc_id in enumerate(chosen):
            for built in by_doc[doc_id]:
                instance = copy.copy(built)
                instance.doc_id = position
                instance.resps = []
                instance.filtered_resps = {}
                picked.append(instance)
        task._instances = picked

    task.build_all_requests = pick_requests  # type: ignore[method-assign]


def aggregate_outcomes(
    tasks: dict[str, Task], groups: dict[str, Any], values: dict[str, dict[str, list[float]]], bootstrap_iters: int
) -> dict[str, dict[str, Any]]:
    """lm-eval's results (`{task or group: {"metric,filter": value, "metric_stderr,filter": stderr}}`) computed from
    per-document values `{leaf task: {"metric,filter": [value per document]}}`.

    lm-eval: `evaluator.evaluate` appends each document's metric values to a per-task accumulator and aggregates
    tasks and groups with the private `evaluator_utils._process_results` (its docstring shows this use).
    mmmo: calls it on values it kept from earlier calls (a candidate's stages), so that a value combined over stages
    is the one lm-eval reports for those documents scored at once.
    """
    from lm_eval.evaluator_utils import _process_results

    acc: dict[str, Any] = {}
    for name, task in tasks.items():
        raw: dict[tuple[str, str], list[float]] = defaultdict(list)
        for key, per_doc in values.get(name, {}).items():
            metric, _, filt = key.partition(",")
            raw[(metric, filt)] = list(per_doc)
        acc[name] = {"task": task, "raw_metrics": raw, "logged_samples": []}
    with bootstrap_in_process():
        results = _process_results(acc, groups, bootstrap_iters)._to_eval_results()
    return dict(results["results"])


def filter_names(task: Task) -> list[str]:
    """The names of the task's filter pipelines, in lm-eval's order: the second half of its "metric,filter" keys.

    lm-eval keeps them only in the private `task._filters` (one pipeline per `filter_list` entry, else one named
    "none"); mmmo reads them to check an objective's metric before anything is scored.
    """
    return [f.name for f in getattr(task, "_filters", [])] or ["none"]


def declares_unsafe_code(manager: TaskManager, name: str) -> bool:
    """Whether the YAML of task `name` sets lm-eval's `unsafe_code`, read from the task index before any import.

    lm-eval learns it only when it builds the task, and building a code task already imports its scorer, which
    refuses to start without HF_ALLOW_CODE_EVAL and buries the reason in a page of text. mmmo reads the raw YAML
    that lm-eval's index keeps (`manager.task_index[name].cfg`), to refuse an unconfirmed task in one line first.
    """
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    return bool(cfg.get("unsafe_code", False))


# ------------------------------------------------------------------------------------ templates, stderrs


def cache_prompt_templates() -> None:
    """Memoise lm-eval's Jinja compilation, process-wide (applying it twice changes nothing).

    lm-eval renders every doc_to_text/target/choice template through `lm_eval.utils.env.from_string`, which never
    caches: each document re-compiles the same few templates (~1.5 ms each, more than a small model's forward).
    mmmo: replaces `env.from_string` by an LRU-cached one for plain template strings. Compiled templates are
    immutable, so sharing them changes nothing but the time.
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


@contextlib.contextmanager
def bootstrap_in_process() -> Iterator[None]:
    """Inside the block, lm-eval bootstraps stderrs in this process rather than in a pool (the variable is restored).

    lm-eval's `lm_eval.api.metrics.bootstrap_stderr` resamples in a `multiprocessing.Pool` of every core unless the
    environment variable DISABLE_MULTIPROC is set. Forking a process that holds the model (and maybe a CUDA context)
    once per candidate is slow and fragile, and the few draws mmmo asks for need no pool.
    """
    old = os.environ.get(BOOTSTRAP_IN_PROCESS_VARIABLE)
    os.environ[BOOTSTRAP_IN_PROCESS_VARIABLE] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BOOTSTRAP_IN_PROCESS_VARIABLE, None)
        else:
            os.environ[BOOTSTRAP_IN_PROCESS_VARIABLE] = old


# ------------------------------------------------------------------------------------------ the HF wrapper


class SilentProgress(_HFLMMixin):
    """HFLM without progress bars.

    lm-eval: HFLM's loglikelihood, loglikelihood_rolling and generate_until draw a tqdm bar unless `disable_tqdm`,
    which evaluate() never sets, and loglikelihood_rolling calls the private `_loglikelihood_tokens` with
    `disable_tqdm=False` written in. mmmo: passes True everywhere, since a bar per request type per candidate buries
    the search's own output.
    """

    def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return super().loglikelihood(requests, disable_tqdm=True)

    def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return super().loglikelihood_rolling(requests, disable_tqdm=True)

    def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return super().generate_until(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests: Any, disable_tqdm: bool = False, override_bs: Any = None) -> Any:
        return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)


class BatchSizeProbedOnce(_HFLMMixin):
    """HFLM whose "auto" batch size is probed once per run and request type, then reused.

    lm-eval: with batch_size "auto", HFLM probes the largest batch that fits (the private `_detect_batch_size`,
    forward passes halving on OOM, and a print about it) on every loglikelihood/generate call, by reading its
    `batch_size_per_gpu` attribute. mmmo: remembers the size the first call of a request type probed (the smallest,
    where one call probes several times) under (`run_key`, request type), and sets `batch_size_per_gpu` to it for
    later calls. Why: memory needs do not depend on the weights, only on the requests, which a run never changes;
    the caller sets `run_key` to tell one call's requests from another's (a run and its stage).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._auto = self.batch_size_per_gpu == "auto"
        self.run_key: Hashable = 0
        self._probed: dict[tuple[int, str], int] = {}
        self._last_probe: int | None = None

    def _with_batch_size(self, kind: str, call: Callable[..., Any], requests: Any, disable_tqdm: bool) -> Any:
        key = (self.run_key, kind)
        fixed = self._probed.get(key) if self._auto else None
        if fixed is not None:
            self.batch_size_per_gpu = fixed
        self._last_probe = None
        try:
            return call(requests, disable_tqdm=disable_tqdm)
        finally:
            if self._auto:
                if fixed is None and self._last_probe is not None:
                    self._probed[key] = self._last_probe
                self.batch_size_per_gpu = "auto"

    def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return self._with_batch_size("loglikelihood", super().loglikelihood, requests, disable_tqdm)

    def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return self._with_batch_size("rolling", super().loglikelihood_rolling, requests, disable_tqdm)

    def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
        return self._with_batch_size("generate", super().generate_until, requests, disable_tqdm)

    def _detect_batch_size(self, requests: Any = None, pos: int = 0) -> int:
        size = int(super()._detect_batch_size(requests, pos))
        self._last_probe = size if self._last_probe is None else min(size, self._last_probe)
        return size


class MemoisedTokenizing(_HFLMMixin):
    """HFLM that tokenises each prompt once per search.

    lm-eval: HFLM tokenises every request's text on every call (`tok_encode`, and `tok_batch_encode` for each
    generation batch). mmmo: memoises both by their arguments, since prompts and their tokens do not depend on the
    weights; it hands out copies, so that nothing downstream can change (or see changes to) the memoised ones.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encodings: dict[tuple[str, bool | None, int | None], list[int]] = {}
        self._batch_encodings: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs: Any
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


@functools.cache
def live_hflm_class() -> type[HFLM]:
    """lm-eval's HFLM with every adaptation above: the wrapper of a model that changes in place.

    Made on first use, so that importing mmmo does not import lm-eval.
    """
    from lm_eval.models.huggingface import HFLM

    class LiveHFLM(BatchSizeProbedOnce, SilentProgress, MemoisedTokenizing, HFLM):
        """HFLM on a live model: no progress bars, one batch-size probe per run and request type, tokens memoised.

        What the model returns is never kept: only what does not depend on its weights.
        """

    return LiveHFLM


def live_hflm(**kwargs: Any) -> HFLM:
    """A LiveHFLM made with HFLM's own keyword arguments (`pretrained=` a model object, `tokenizer=`, ...)."""
    return live_hflm_class()(**kwargs)
