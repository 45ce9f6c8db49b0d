"""What the optimiser searches and how hard: one record, checked once, that the loop and every batch's proposal read."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.optimizer.acquisition import AcqBudget
from mmmo.optimizer.space import SearchSpace
from mmmo.optimizer.target import Target
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import EvaluationSpec, OptimizerSpec
from mmmo.spec.take_home import ChooseRule

# `optimizer.take_home_points: auto`: the share of the BO proposals spent on the take-home preference, larger from
# TAKE_HOME_MANY_DIMS dimensions on, where one point per batch of 5 left it short (measured on the demo's
# surrogates: benchmarks/RESULTS.md, "The merge you take home"; 12-D itself was not measured).
TAKE_HOME_SHARE = 0.2
TAKE_HOME_SHARE_MANY_DIMS = 0.4
TAKE_HOME_MANY_DIMS = 12


@dataclass(frozen=True, eq=False)
class LoopOptions:
    """What `run_loop` optimises and how: checked when made, never changed after.

    `objective_names` are every objective, maximised, in the order of the GP's outputs; `task_objective_names`
    (a subset) are those the weak-to-strong crossover ranks by. `ref_point` (raw objective units, one value per
    objective) fixes the hypervolume reference point; None infers it once from the first done trials. `budget`
    is the acquisition effort (None: AcqBudget's defaults); `device` where the GP work runs (None: CPU).
    `ended_batches` are the batches whose end the caller already recorded (None: the caller keeps no such
    record). `initial_points [k, dim]` (unit cube, e.g. the standard recipes) open the initial design.
    `to_params` names a unit-cube point's merge parameters in real units, for each new trial's `params`.
    `stages` (cumulative fractions of each task's documents; None: one stage) makes `evaluate` return "partial"
    trials short of the last stage; each goes on while its chance of improving the front (optimizer.stages) is at
    least `stage_min_chance` (with `stage_min_gain` > 0: its chance of adding that fraction of the hypervolume),
    else it is done as it is, `stopped`; with `stage_take_home`, also while its chance of becoming the take-home
    merge under `target` is. With stages, a batch is scored `parallel` trials at a time (the
    evaluators' count), each group through all its stages before the next starts, so that later trials of a batch
    are judged against the earlier ones' full scores. `space`, when the method is one of its coordinates (a mixed
    search), projects every proposal onto its configurations and names each new trial's `method`; a single
    method's space changes nothing (None: the same). `target` is the take-home preference the BO strategies spend
    `take_home_slots` of each batch on (None: the plain mean of the task objectives, unconstrained).
    """

    opt: OptimizerSpec
    dim: int
    objective_names: Sequence[str]
    task_objective_names: Sequence[str]
    ref_point: Sequence[float] | None = None
    budget: AcqBudget | None = None
    device: torch.device | str | None = None
    ended_batches: Collection[int] | None = None
    initial_points: Tensor | None = None
    to_params: Callable[[list[float]], dict[str, float]] | None = None
    stages: Sequence[float] | None = None
    stage_min_chance: float = EvaluationSpec.model_fields["stage_min_chance"].default
    stage_min_gain: float = EvaluationSpec.model_fields["stage_min_gain"].default
    stage_take_home: bool = EvaluationSpec.model_fields["stage_take_home"].default
    parallel: int = 1
    space: SearchSpace | None = None
    target: Target | None = None
    take_home_rule: ChooseRule = "posterior"  # take_home.choose: how report.md chooses, so stage_take_home's stake too

    def __post_init__(self) -> None:
        # Kept as tuples and a frozenset: the caller's lists cannot change the options afterwards.
        object.__setattr__(self, "objective_names", tuple(self.objective_names))
        object.__setattr__(self, "task_objective_names", tuple(self.task_objective_names))
        if self.ref_point is not None:
            object.__setattr__(self, "ref_point", tuple(float(v) for v in self.ref_point))
        if self.ended_batches is not None:
            object.__setattr__(self, "ended_batches", frozenset(self.ended_batches))
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(float(f) for f in self.stages))
        if self.parallel < 1:
            raise MmmoError(f"parallel must be at least 1, got {self.parallel}")
        if self.dim < 1:
            raise MmmoError(f"the search space needs at least one dimension, got {self.dim}")
        unknown = [n for n in self.task_objective_names if n not in self.objective_names]
        if unknown:
            raise MmmoError(f"task objective(s) not among the objectives: {', '.join(unknown)}")
        if self.ref_point is not None and len(self.ref_point) != len(self.objective_names):
            raise MmmoError(
                f"ref_point has {len(self.ref_point)} values but there are {len(self.objective_names)} objectives"
            )
        if self.space is not None and self.space.dim != self.dim:
            raise MmmoError(f"the search space has {self.space.dim} dimensions, the options say {self.dim}")
        if self.target is not None and len(self.target.weights) != len(self.objective_names):
            raise MmmoError(
                f"the take-home target has {len(self.target.weights)} weights but there are "
                f"{len(self.objective_names)} objectives"
            )
        if self.initial_points is not None and self.initial_points.shape[-1] != self.dim:
            raise MmmoError(
                f"initial points have {self.initial_points.shape[-1]} coordinates, the search space has {self.dim}"
            )

    def take_home_slots(self, batch_index: int) -> int:
        """How many of BO batch `batch_index`'s (>= 1) points go to the take-home target: `opt.take_home_points`
        (at most `batch_size`), or under "auto" the batch's part of a running total, round(share x points proposed
        by its end), so a share below one point per batch still comes round (batch_size 1: every fifth batch below
        TAKE_HOME_MANY_DIMS, two in five from it). `dim` counts every coordinate of the space (a method list's too)."""
        if batch_index < 1:
            raise MmmoError(f"batch {batch_index} is not a BO batch (the initial design is batch 0)")
        opt = self.opt
        if opt.take_home_points != "auto":
            return min(opt.take_home_points, opt.batch_size)
        share = TAKE_HOME_SHARE_MANY_DIMS if self.dim >= TAKE_HOME_MANY_DIMS else TAKE_HOME_SHARE

        def by_end_of(batch: int) -> int:  # half-up rounding, the same at every batch boundary
            return math.floor(share * opt.batch_size * batch + 0.5)

        return min(by_end_of(batch_index) - by_end_of(batch_index - 1), opt.batch_size)

    @property
    def task_columns(self) -> list[int]:
        """The columns of the task objectives among `objective_names`."""
        return [self.objective_names.index(n) for n in self.task_objective_names]

    @property
    def resolved_target(self) -> Target:
        """`target`, or the plain mean of the task objectives (of every objective when none is a task)."""
        if self.target is not None:
            return self.target
        names = self.objective_names
        tasks = [names.index(n) for n in self.task_objective_names] or list(range(len(names)))
        return Target.mean_of(len(names), tasks)
