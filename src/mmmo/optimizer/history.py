"""What the optimiser knows at one step, built once from the trials: the usable done trials as arrays, their known
observation variances, the batch of each, and every point ever proposed (none of which is proposed again)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.optimizer.gp import observation_variance
from mmmo.run.records import Trial


@dataclass(frozen=True)
class History:
    """`X_done [n, d]`, `Y_done [n, m]` (float64, maximised): the successful trials; `Yvar_done [n, m]` their known
    observation variances (NaN: unknown; None: none known); `X_seen [s, d]` every point ever proposed, failed ones
    included; `done_batches` the batch of each done trial (None: full batches in order); `in_full [n]` whether each
    was scored on all its documents (None: all were)."""

    X_done: Tensor
    Y_done: Tensor
    X_seen: Tensor
    Yvar_done: Tensor | None = None
    done_batches: tuple[int, ...] | None = None
    in_full: Tensor | None = None

    @classmethod
    def of(cls, trials: Sequence[Trial], objective_names: Sequence[str], dim: int) -> History:
        """The history of `trials` (any status) over `objective_names`, in a `dim`-dimensional unit cube."""
        X, Y, usable = done_arrays(trials, objective_names, dim)
        return cls(
            X_done=X,
            Y_done=Y,
            X_seen=torch.tensor([t.x for t in trials], dtype=torch.float64).reshape(-1, dim),
            Yvar_done=done_variances(usable, objective_names),
            done_batches=tuple(t.batch for t in usable),
            in_full=torch.tensor([not t.stopped for t in usable], dtype=torch.bool),
        )

    @property
    def full_mask(self) -> Tensor:
        """`[n]` bool: which done trials were scored in full (all of them when `in_full` is None)."""
        return torch.ones(self.X_done.shape[0], dtype=torch.bool) if self.in_full is None else self.in_full

    @property
    def Y_in_full(self) -> Tensor:
        """`[k, m]`: the done trials scored in full, the ones a front is made of."""
        return self.Y_done[self.full_mask]


def is_usable(trial: Trial, objective_names: Sequence[str]) -> bool:
    """A done trial with a finite value for every objective (only these enter the GP and the hypervolume)."""
    if trial.status != "done" or trial.objectives is None:
        return False
    return all(n in trial.objectives and math.isfinite(float(trial.objectives[n])) for n in objective_names)


def done_arrays(
    trials: Sequence[Trial], objective_names: Sequence[str], dim: int, *, scored_in_full: bool = False
) -> tuple[Tensor, Tensor, list[Trial]]:
    """`X [n, dim]`, `Y [n, m]` (float64, objectives in `objective_names` order) of the usable trials, and them.

    `scored_in_full` leaves out trials stopped after part of their documents (the front is made of the others).
    """
    usable = [t for t in trials if is_usable(t, objective_names) and not (scored_in_full and t.stopped)]
    X = torch.tensor([t.x for t in usable], dtype=torch.float64).reshape(-1, dim)
    Y = torch.tensor(
        [[float(t.objectives[n]) for n in objective_names] for t in usable],  # type: ignore[index]
        dtype=torch.float64,
    ).reshape(-1, len(objective_names))
    return X, Y, usable


def done_variances(usable: Sequence[Trial], objective_names: Sequence[str]) -> Tensor:
    """Known observation variances `[n, m]` of `usable` trials from their stderrs (NaN where unknown)."""
    m = len(objective_names)
    stderr = torch.tensor(
        [[float(t.stderr.get(n, math.nan)) for n in objective_names] for t in usable], dtype=torch.float64
    ).reshape(-1, m)
    n_examples = torch.tensor(
        [[float(t.n_examples.get(n, 0)) for n in objective_names] for t in usable], dtype=torch.float64
    ).reshape(-1, m)
    return observation_variance(stderr, n_examples)
