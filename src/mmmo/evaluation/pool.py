"""Where candidates are evaluated: the `EvaluatorPool` seam, the in-process pool, and the choice of pool for a spec."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mmmo.evaluation.evaluator import CandidateEvaluator
from mmmo.evaluation.ray_pool import RayPool
from mmmo.run.documents import DocumentPlan
from mmmo.run.records import SourceScore, Trial
from mmmo.spec.schema import SearchSpec

if TYPE_CHECKING:
    from mmmo.merge.merger import Merger


@runtime_checkable
class EvaluatorPool(Protocol):
    """One or more resident evaluators that score trials and source models; closed once, at the end of a search."""

    def evaluate(self, trials: list[Trial]) -> Iterator[Trial]:
        """Score `trials` (status "proposed"), yielding each as done or failed as it finishes, in any order."""
        ...

    @property
    def slots(self) -> int:
        """How many trials it scores at once (the asynchronous schedule's `TrialWorkers`)."""
        ...

    def start(self, trial: Trial) -> None:
        """Begin scoring `trial` as soon as an evaluator is free."""
        ...

    def next_finished(self, wait: bool) -> Trial | None:
        """A started trial that came back; None when none has yet and `wait` is False."""
        ...

    def evaluate_sources(self, indices: Iterable[int | None]) -> list[SourceScore]:
        """Score the base (None) and source models (their index in spec.models), in the order given."""
        ...

    def documents(self) -> DocumentPlan:
        """The documents every candidate is scored on (per task objective and leaf task)."""
        ...

    def local_merger(self) -> Merger | None:
        """The merger this process holds, which an export can reuse; None when the models live elsewhere."""
        ...

    def close(self) -> None:
        """Release the evaluators (and anything started for them)."""
        ...


class LocalPool:
    """Evaluate candidates one after the other with a single evaluator resident in this process.

    A started trial is scored when it is asked for (`next_finished`), in the caller's thread: the optimiser and the
    evaluator share torch's global random state (each seeds it inside its own blocks) and Python's warning filters,
    so in one process they take turns rather than run side by side.
    """

    def __init__(self, evaluator: CandidateEvaluator):
        self.evaluator = evaluator
        self._started: list[Trial] = []

    def evaluate(self, trials: list[Trial]) -> Iterator[Trial]:
        for t in trials:
            yield self.evaluator.evaluate(t)

    @property
    def slots(self) -> int:
        return 1

    def start(self, trial: Trial) -> None:
        self._started.append(trial)

    def next_finished(self, wait: bool) -> Trial | None:
        """The started trial, scored now; None when none was started."""
        return self.evaluator.evaluate(self._started.pop(0)) if self._started else None

    def evaluate_sources(self, indices: Iterable[int | None]) -> list[SourceScore]:
        return [self.evaluator.evaluate_source(i) for i in indices]

    def documents(self) -> DocumentPlan:
        return self.evaluator.documents

    def local_merger(self) -> Merger | None:
        return self.evaluator.merger

    def close(self) -> None:
        pass


def make_pool(spec: SearchSpec, on_attempt_failed: Callable[[Trial], None] | None = None) -> EvaluatorPool:
    """One evaluator in this process, or a Ray pool where `spec.evaluators_in_ray` (several evaluators, or one
    under the asynchronous schedule: in process, the optimiser and the evaluator could only take turns).

    `on_attempt_failed` hears of each trial whose Ray worker died under it, before the trial is retried elsewhere.
    """
    if spec.evaluators_in_ray:
        return RayPool(spec, on_attempt_failed=on_attempt_failed)
    return LocalPool(CandidateEvaluator.from_spec(spec))
