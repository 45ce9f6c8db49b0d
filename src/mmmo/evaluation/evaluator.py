"""Score candidates: merge in place on the device, run the lm-eval tasks, add the sparsity objective."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmmo.evaluation.hub import hub_model_folder
from mmmo.objectives.device import default_dtype, resolve_device
from mmmo.objectives.lm_eval import LmEvalObjectives, TaskScore
from mmmo.optimizer.space import SearchSpace
from mmmo.run.documents import DocumentPlan, EncodedOutcomes, decode_outcomes, encode_outcomes
from mmmo.run.records import Scored, SourceScore, Trial
from mmmo.runtime.diskspace import is_disk_full
from mmmo.runtime.errors import MmmoError, one_line
from mmmo.spec.schema import SearchSpec, is_hub_id

if TYPE_CHECKING:
    from mmmo.merge.merger import Merger

# A failed trial's error, as the journal, report.md and the progress line show it (characters).
TRIAL_ERROR_LIMIT = 500


def merge_dtype(spec: SearchSpec, device: torch.device) -> torch.dtype:
    """The dtype the live model is merged and evaluated in."""
    return default_dtype(device, spec.merge.dtype)


def local_model_folder(ref: str) -> str:
    """A local folder for a model reference: itself, or the hub snapshot (weights, config, tokenizer only)."""
    if Path(ref).is_dir() or not is_hub_id(ref):
        return ref
    return hub_model_folder(ref)


def build_merger(spec: SearchSpec, device: torch.device) -> Merger:
    """Load the spec's sources once into a Merger on `device`."""
    from mmmo.merge.merger import Merger

    return Merger(
        local_model_folder(spec.base_model),
        [local_model_folder(m.path) for m in spec.models],
        method=spec.merge.methods[0],
        methods=spec.merge.methods,
        dtype=merge_dtype(spec, device),
        device=device,
        layer_groups=spec.merge.layer_groups,
        seed=spec.merge.seed,
        normalize=spec.merge.normalize,
        lambda_=spec.merge.lambda_,
        trust_remote_code=spec.merge.trust_remote_code,
        allow_pickle=spec.merge.allow_pickle,
        fused=spec.merge.fused,
    )


def build_objectives(spec: SearchSpec, *, stages: bool = True) -> LmEvalObjectives:
    """The spec's lm-eval objectives, built once, on the run's documents (`stages=False`: all of them at once)."""
    ev = spec.evaluation
    return LmEvalObjectives(
        spec.task_objectives,
        tasks_dir=spec.tasks_dir,
        batch_size=ev.batch_size,
        confirm_run_unsafe_code=ev.confirm_run_unsafe_code,
        subset=ev.subset,
        subset_seed=ev.subset_seed,
        stages=ev.stages if stages else None,
    )


class CandidateEvaluator:
    """Holds the sources, the live model and the built lm-eval tasks for a whole search."""

    _live: tuple[list[float], float] | None = None  # the merge the live model holds: x and its delta L1

    def __init__(
        self,
        spec: SearchSpec,
        objectives: LmEvalObjectives,
        merger: Merger,
        device: torch.device,
        *,
        worker: str = "local",
    ) -> None:
        """From its parts: `objectives` already bound to `merger`'s live model on `device` (`from_spec` loads them)."""
        self.spec = spec
        self.space = SearchSpace.from_spec(spec)
        self.worker = worker
        self.device = device
        self.objectives = objectives
        self.merger = merger
        self._sparsity_name = next((o.name for o in spec.objectives if o.type == "sparsity"), None)

    @classmethod
    def from_spec(cls, spec: SearchSpec, *, device: str | None = None, worker: str = "local") -> CandidateEvaluator:
        """Build the tasks, load the sources into a Merger on the device (`device` or the spec's) and bind them."""
        resolved = resolve_device(device or spec.evaluation.device)
        # Tasks first: an unknown task or metric must fail before any weights are loaded or merged.
        objectives = build_objectives(spec)
        merger = build_merger(spec, resolved)
        objectives.bind(merger.model, merger.tokenizer, resolved)
        return cls(spec, objectives, merger, resolved, worker=worker)

    @property
    def documents(self) -> DocumentPlan:
        """The documents every candidate is scored on (per task objective and leaf task)."""
        return self.objectives.plan

    def _score(
        self, delta_l1: float, stage: int | None = None, earlier: dict[str, dict[str, EncodedOutcomes]] | None = None
    ) -> tuple[dict[str, float], dict[str, TaskScore]]:
        """Every objective's value: on `stage`'s documents (all for None), combined with the `earlier` stages'."""
        if stage is not None and stage >= self.objectives.n_stages:
            raise MmmoError(f"already scored on all {stage} stage(s) of evaluation.stages")
        scores = self.objectives.evaluate(stage)
        if stage:  # a later stage: its documents join the earlier stages' (every objective keeps them: see _check_stages)
            kept = earlier or {}
            scores = {name: self._with_earlier(name, s, kept.get(name)) for name, s in scores.items()}
        values = {name: s.value for name, s in scores.items()}
        if self._sparsity_name is not None:
            values[self._sparsity_name] = -delta_l1
        # Keep the spec's objective order so every record lists objectives the same way.
        ordered = {o.name: values[o.name] for o in self.spec.objectives}
        bad = [k for k, v in ordered.items() if not math.isfinite(v)]
        if bad:
            raise MmmoError(f"non-finite objective value(s): {', '.join(bad)}")
        return ordered, scores

    def _with_earlier(self, name: str, score: TaskScore, earlier: dict[str, EncodedOutcomes] | None) -> TaskScore:
        if score.outcomes is None or earlier is None:
            raise MmmoError(
                f"objective {name!r}: its per-document values are not numbers (or were not kept), so its stages "
                "cannot be combined; turn evaluation.stages off for this task"
            )
        joined = {leaf: decode_outcomes(earlier.get(leaf, [])) + v for leaf, v in score.outcomes.items()}
        return self.objectives.combine(name, joined)

    def _stderr(self, scores: dict[str, TaskScore]) -> dict[str, float]:
        """Each objective's standard error where known: lm-eval's for tasks, 0.0 for sparsity (exact)."""
        out = {name: s.stderr for name, s in scores.items() if s.stderr is not None}
        if self._sparsity_name is not None:
            out[self._sparsity_name] = 0.0
        return out

    def _merged(self, x: list[float], weights: torch.Tensor, densities: torch.Tensor | None) -> float:
        """Merge `x` into the live model, unless it holds that merge already (a candidate's next stage)."""
        if self._live is not None and self._live[0] == x:
            return self._live[1]
        self._live = None  # until the merge below is complete, the live model holds no known merge
        x_t = torch.tensor(x, dtype=torch.float64)
        method = self.space.method_of(x_t) if self.space.is_mixed else None
        parameters = self.space.method_parameters(x_t)
        delta_l1 = self.merger.apply(weights, densities, parameters or None, method=method)
        self._live = (list(x), delta_l1)
        return delta_l1

    def evaluate(self, trial: Trial) -> Trial:
        """Merge the trial's configuration into the live model and score its next stage (all documents without
        evaluation.stages); failures are recorded, not raised."""
        weights, densities = self.space.from_unit(torch.tensor(trial.x, dtype=torch.float64))
        params = self.space.named(torch.tensor(trial.x, dtype=torch.float64))
        stage = trial.stages_scored
        t0 = time.perf_counter()
        try:
            delta_l1 = self._merged(trial.x, weights, densities)
            t1 = time.perf_counter()
            objectives, scores = self._score(delta_l1, stage, trial.outcomes)
            t2 = time.perf_counter()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - any failure of one candidate must not stop the search
            if is_disk_full(err):  # ... but a full disk would fail every later one: stop, the trial stays pending
                raise
            return replace(
                trial,
                status="failed",
                params=params,
                error=one_line(err, limit=TRIAL_ERROR_LIMIT),
                attempts=trial.attempts + 1,
                worker=self.worker,
                eval_seconds=time.perf_counter() - t0,
            )
        last = stage + 1 == self.objectives.n_stages
        # Attempts count the tries of the stage at hand: a stage that worked leaves the next one its own retries.
        return replace(
            trial,
            status="done" if last else "partial",
            params=params,
            **self._scored(objectives, scores).scores(),
            stages_scored=stage + 1,
            merge_seconds=(trial.merge_seconds or 0.0) + t1 - t0,
            eval_seconds=(trial.eval_seconds or 0.0) + t2 - t1,
            attempts=trial.attempts + 1 if last else 0,
            worker=self.worker,
        )

    def evaluate_source(self, index: int | None) -> SourceScore:
        """Score the base model (index None) or source model `index` unmerged, on every document."""
        name = "base" if index is None else self.spec.models[index].name
        self._live = None
        try:
            delta_l1 = self.merger.apply_source(index)
            objectives, scores = self._score(delta_l1)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001
            if is_disk_full(err):
                raise
            return SourceScore(name=name, objectives=None, error=one_line(err, limit=TRIAL_ERROR_LIMIT))
        return SourceScore(name=name, **self._scored(objectives, scores).scores())

    def _scored(self, objectives: dict[str, float], scores: dict[str, TaskScore]) -> Scored:
        """What one scoring gave, as both a trial and a source record it."""
        return Scored(
            objectives=objectives,
            metrics={k: s.metrics for k, s in scores.items()},
            n_examples={k: s.n_examples for k, s in scores.items()},
            stderr=self._stderr(scores),
            outcomes=_encoded(scores),
        )


def _encoded(scores: dict[str, TaskScore]) -> dict[str, dict[str, EncodedOutcomes]]:
    """Each objective's per-document values, encoded for the journal (objectives without them left out)."""
    return {
        name: {leaf: encode_outcomes(v) for leaf, v in s.outcomes.items()}
        for name, s in scores.items()
        if s.outcomes is not None
    }
