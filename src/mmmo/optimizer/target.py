"""The take-home target: the one scalar a user's stated preference maximises over the objectives, its outcome
constraints, and the choice of the merge to take home by the surrogate's posterior rather than by luck."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.optimizer.acquisition import seeded
from mmmo.optimizer.gp import fit_models
from mmmo.optimizer.pareto import pareto_mask
from mmmo.spec.schema import PriorMean

# Below this many feasible evaluated points a GP says nothing the observations do not: choose by them.
MIN_POINTS_FOR_POSTERIOR = 3


@dataclass(frozen=True)
class ChosenRow:
    """The row `choose_take_home` chose, the rule that chose it ("posterior", or "observed" when asked for, when
    too few rows qualify for a GP, or when the GP's posterior was not finite) and the row's target value by that
    rule (its posterior mean or its observed value, raw units)."""

    row: int
    by: str
    value: float


@dataclass(frozen=True)
class Target:
    """A weighted mean of objective columns (raw units, maximised) and lower bounds on columns.

    `weights [m]`: one per objective column, in the order of `Y`'s last dimension (0: not part of the scalar);
    value = sum(w * y) / sum(w). `minimums`: (column, lowest allowed value in raw units) pairs; a point is
    feasible when every such column is at least its minimum.
    """

    weights: tuple[float, ...]
    minimums: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        object.__setattr__(self, "minimums", tuple((int(c), float(v)) for c, v in self.minimums))
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights}")
        bad = [c for c, _ in self.minimums if not 0 <= c < len(self.weights)]
        if bad:
            raise ValueError(f"constraint column(s) {bad} outside the {len(self.weights)} objectives")

    @classmethod
    def mean_of(cls, n_objectives: int, columns: Sequence[int]) -> Target:
        """The plain mean of `columns` (e.g. the task objectives) among `n_objectives`, unconstrained."""
        return cls(tuple(1.0 if i in set(columns) else 0.0 for i in range(n_objectives)))

    @property
    def columns(self) -> list[int]:
        """The columns with a non-zero weight."""
        return [i for i, w in enumerate(self.weights) if w > 0]

    @property
    def constrained(self) -> bool:
        return bool(self.minimums)

    def normalised_weights(self, like: Tensor) -> Tensor:
        """`[m]` weights summing to 1, with `like`'s dtype and device."""
        w = torch.tensor(self.weights, dtype=like.dtype, device=like.device)
        return w / w.sum()

    def value(self, Y: Tensor) -> Tensor:
        """`[...]`: the weighted mean of `Y [..., m]`."""
        return Y @ self.normalised_weights(Y)

    def slack(self, Y: Tensor) -> Tensor:
        """`[..., k]`: `y[column] - minimum` per constraint (>= 0 where it holds); `k = 0` without constraints."""
        if not self.minimums:
            return Y.new_zeros((*Y.shape[:-1], 0))
        cols = [c for c, _ in self.minimums]
        mins = torch.tensor([v for _, v in self.minimums], dtype=Y.dtype, device=Y.device)
        return Y[..., cols] - mins

    def feasible(self, Y: Tensor) -> Tensor:
        """`[...]` bool: every constraint holds for `Y [..., m]`."""
        return (self.slack(Y) >= 0).all(dim=-1)

    def botorch_constraints(self) -> list[Callable[[Tensor], Tensor]]:
        """BoTorch outcome constraints (feasible where the callable is <= 0), one per minimum, on samples `[..., m]`."""

        def below(column: int, minimum: float) -> Callable[[Tensor], Tensor]:
            return lambda Z: minimum - Z[..., column]

        return [below(c, v) for c, v in self.minimums]


def choose_take_home(
    X: Tensor,
    Y: Tensor,
    target: Target,
    Yvar: Tensor | None = None,
    *,
    by: str = "posterior",
    prior_mean: PriorMean = "fitted",
    cat_dims: Sequence[int] = (),
) -> ChosenRow | None:
    """The row of the evaluated points `X [n, d]`, `Y [n, m]` to take home; None when no row is feasible.

    Only rows whose OBSERVED `Y` meets every constraint can be chosen. Among them, `by="observed"` takes the highest
    observed target value, `by="posterior"` the highest posterior mean of the target value from a GP fitted to
    every evaluated row's target value with its known variance (`Yvar [n, m]`, NaN: unknown), so a lucky, noisily
    measured score is shrunk towards what its neighbours say before it can win. Ties: see `_highest`.
    """
    feasible = target.feasible(Y)
    rows = torch.nonzero(feasible).flatten().tolist()
    if not rows:
        return None
    observed = target.value(Y)
    if by not in ("observed", "posterior"):
        raise ValueError(f"unknown take-home rule {by!r} (posterior or observed)")
    posterior = None
    if by == "posterior" and len(rows) >= MIN_POINTS_FOR_POSTERIOR:
        posterior = posterior_value(X, Y, target, Yvar, prior_mean, cat_dims)
    rule, score = ("observed", observed) if posterior is None else ("posterior", posterior)
    row = _highest(rows, score, Y)
    return ChosenRow(row, rule, float(score[row]))


def _highest(rows: list[int], score: Tensor, Y: Tensor) -> int:
    """The row of `rows` with the highest `score [n]`; of tied rows, the lowest one no other tied row dominates.

    A row that dominates a tied one scores at least as high on any non-negative weighting, so it is tied too: the
    choice is always on the front of the tied rows (as `RunSummary.best` breaks ties on one objective).
    """
    top = max(float(score[i]) for i in rows)
    tied = [i for i in rows if float(score[i]) == top]
    if len(tied) == 1:
        return tied[0]
    keep = pareto_mask(Y[tied]).tolist()
    return min(i for i, k in zip(tied, keep) if k)


def posterior_value(
    X: Tensor, Y: Tensor, target: Target, Yvar: Tensor | None = None, prior_mean: PriorMean = "fitted",
    cat_dims: Sequence[int] = (),
) -> Tensor | None:
    """`[n]` posterior mean of the target value at `X [n, d]`, from one GP on the observed target values of
    `Y [n, m]` (with their known variances `Yvar [n, m]`, when every one is finite); None if it is not finite."""
    w = target.normalised_weights(Y)
    y = target.value(Y).unsqueeze(-1)
    yvar = None
    if Yvar is not None:
        cols = target.columns
        known = Yvar[:, cols]
        if bool(torch.isfinite(known).all()):
            yvar = (known * w[cols] ** 2).sum(-1, keepdim=True)
    with seeded(0, X.device):
        model = fit_models(X.to(torch.float64), y.to(torch.float64), yvar, prior_mean, cat_dims=cat_dims)
        with torch.no_grad():
            mean = model.posterior(X.to(torch.float64)).mean[..., 0]
    return mean if bool(torch.isfinite(mean).all()) else None
