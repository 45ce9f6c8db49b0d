"""Support for tests and benchmarks, kept out of the product modules: a search spec over a built demo, a Ray
worker that dies on cue, and evaluators (a Ray worker's, this process's) that take longer, as a bigger model's
generation would.

Nothing in mmmo imports this module.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from mmmo.demo import DemoPaths
from mmmo.evaluation.evaluator import CandidateEvaluator
from mmmo.evaluation.ray_pool import RayWorker
from mmmo.run.records import Trial

# The exit status of a process the kernel's OOM killer ended (128 + SIGKILL).
OOM_KILLED = 137


def search_spec_for(demo: DemoPaths, *, limit: int | None = None, **sections: Any) -> dict[str, Any]:
    """A built demo's search spec (plain data) with absolute paths.

    `limit` overrides every task's example count; each keyword section replaces that spec section, or
    updates it when both are mappings (`optimizer={"batches": 1}` keeps the other optimizer fields).
    """
    data = yaml.safe_load(demo.config.read_text())
    data["base_model"] = str(demo.base)
    data["models"] = [{"path": str(p), "name": n} for n, p in demo.experts.items()]
    data["tasks_dir"] = str(demo.tasks_dir)
    if limit is not None:
        for o in data["objectives"]:
            if o.get("type", "lm_eval") == "lm_eval":
                o["limit"] = limit
    for key, patch in sections.items():
        if isinstance(patch, dict) and isinstance(data.get(key), dict):
            data[key].update(patch)
        else:
            data[key] = patch
    return data


def worker_killed_on_trial(trial_id: int, marker: Path) -> type[RayWorker]:
    """A Ray worker class whose process dies, as an OOM kill would, when it picks up trial `trial_id` while the
    file `marker` does not exist yet (it creates it first, so the death happens once across all workers).

    Install it with `monkeypatch.setattr(RayPool, "worker_class", worker_killed_on_trial(...))`. The class is made
    here, inside a function, so that Ray ships it to the workers by value, `trial_id` and `marker` included.
    """

    class KilledOnTrial(RayWorker):
        def evaluate(self, trial_data: dict[str, Any]) -> dict[str, Any]:
            if trial_data["id"] == trial_id and not marker.exists():
                marker.touch()
                os._exit(OOM_KILLED)
            return super().evaluate(trial_data)

    return KilledOnTrial


def candidate_delay(median_seconds: float, sigma: float, seed: int, trial_id: int, stages_scored: int) -> float:
    """Seconds added to one evaluation: lognormal with `median_seconds` and `sigma`, the same draw for a trial (and
    its stage) and `seed` in any process."""
    draw = random.Random(f"{seed}/{trial_id}/{stages_scored}")
    return median_seconds * math.exp(sigma * draw.gauss(0.0, 1.0))


def worker_delayed(median_seconds: float, sigma: float, seed: int) -> type[RayWorker]:
    """A Ray worker class that scores as `RayWorker` does, then waits `candidate_delay`, counted in the trial's
    `eval_seconds`.

    Stands in for a GPU box, where generation lengths spread candidates' times (a broken merge rambles to
    `max_gen_toks`). Install it as `worker_killed_on_trial`'s class is.
    """

    class Delayed(RayWorker):
        def evaluate(self, trial_data: dict[str, Any]) -> dict[str, Any]:
            result = super().evaluate(trial_data)
            delay = candidate_delay(
                median_seconds, sigma, seed, trial_data["id"], trial_data.get("stages_scored", 0)
            )
            time.sleep(delay)
            result["eval_seconds"] = (result.get("eval_seconds") or 0.0) + delay
            return result

    return Delayed


@contextmanager
def evaluator_delayed(median_seconds: float, sigma: float, seed: int) -> Iterator[None]:
    """Within the block, an evaluator in this process (one worker, in process) waits what `worker_delayed`'s would
    for the same trial after scoring it, counted in its `eval_seconds`."""
    original = CandidateEvaluator.evaluate

    def evaluate(self: CandidateEvaluator, trial: Trial) -> Trial:
        result = original(self, trial)
        delay = candidate_delay(median_seconds, sigma, seed, trial.id, trial.stages_scored)
        time.sleep(delay)
        return replace(result, eval_seconds=(result.eval_seconds or 0.0) + delay)

    CandidateEvaluator.evaluate = evaluate  # type: ignore[method-assign]
    try:
        yield
    finally:
        CandidateEvaluator.evaluate = original  # type: ignore[method-assign]
