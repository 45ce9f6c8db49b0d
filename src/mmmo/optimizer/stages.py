"""Multi-fidelity scoring: whether a candidate scored on part of its documents goes on to the next stage.

The criterion: the chance that the candidate's score on all its documents improves the Pareto front, that is,
lands above the reference point and is dominated by no trial scored in full. That full score is the mean of the
documents scored so far (known) and of those still to score (not), so with a fraction `f` scored and `r = 1 - f`
left, per task objective:

    full = f * partial + r * rest,   rest ~ N(mu, s^2 + sigma_doc^2 / (r * N))

where `mu, s^2` are the GP posterior of the candidate's true score (fitted on every finished trial and on the
partial scores themselves, each with its own noise under optimizer.known_noise) and `sigma_doc^2 / N = yvar * f` (the partial score's
variance `yvar` is `sigma_doc^2 / (f * N)`). Hence mean `f * partial + r * mu` and variance `r^2 s^2 + r f yvar`.
Exact objectives (sparsity) are known already. The chance is estimated from seeded draws; objectives are drawn
independently, as the GPs are independent. Without enough trials for a GP the partial score is its own posterior.

With a take-home stake (`TakeHomeStake`), a candidate also goes on while it could become the take-home merge: the
chance that the same draws meet the target's constraints and beat the value of the trial the take-home choice
would take now (`target.choose_take_home` by the posterior, among the trials scored in full). A draw is an
observed full score, noisier than a posterior mean, so this errs towards going on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from gpytorch.utils.warnings import NumericalWarning
from torch import Tensor

from mmmo.optimizer.gp import JITTER_WARNING, fit_models_with_prior
from mmmo.optimizer.history import History
from mmmo.optimizer.pareto import hypervolume
from mmmo.optimizer.target import Target, choose_take_home
from mmmo.runtime.quiet import expected_warnings
from mmmo.spec.schema import PriorMean

# Draws of each candidate's full score; the chance's standard error is at most 0.5 / sqrt(DRAWS) ~ 0.016.
DRAWS = 1024
# Uniform points per draw that estimate the hypervolume a draw adds (only with a minimum gain).
BOX_POINTS = 128
MIN_TRIALS_FOR_GP = 3
# A posterior variance that rounds below zero at a point the GP has seen is clamped to 1e-10 by gpytorch, which says so.
NEGATIVE_VARIANCE_WARNING = (NumericalWarning, "Negative variance values detected")


@dataclass(frozen=True)
class PartialScores:
    """Candidates scored on part of their documents: `x [k, d]` (unit cube), `y [k, m]` their scores so far
    (maximised), `yvar [k, m]` the variance of those scores, `scored [k, m]` the fraction of each objective's
    documents scored (1 for exact objectives)."""

    x: Tensor
    y: Tensor
    yvar: Tensor
    scored: Tensor


@dataclass(frozen=True)
class TakeHomeStake:
    """What a partly scored candidate must beat to become the take-home merge: the `target`, and the value (raw
    units) of the trial it would take now, by the rule that chose it; -inf when no trial qualifies yet."""

    target: Target
    incumbent: float


def take_home_stake(
    done: History, target: Target, cat_dims: Sequence[int] = (), by: str = "posterior"
) -> TakeHomeStake:
    """The stake under `target` of the done trials scored in full, chosen as report.md and `export: best` choose
    (`choose_take_home` by the rule `by` of `take_home.choose`, with the trials' known variances)."""
    full = done.full_mask
    Yvar = None if done.Yvar_done is None else done.Yvar_done[full]
    chosen = choose_take_home(done.X_done[full], done.Y_done[full], target, Yvar, by=by, cat_dims=cat_dims)
    return TakeHomeStake(target, chosen.value if chosen is not None else float("-inf"))


def full_score_distribution(partial: PartialScores, mu: Tensor | None, s2: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean and variance `[k, m]` of each candidate's score on all its documents (see the module docstring).

    `mu, s2 [k, m]`: the GP posterior of the true scores at `partial.x`; None takes the partial scores as it.
    """
    f = partial.scored.clamp(0.0, 1.0)
    r = 1.0 - f
    if mu is None or s2 is None:
        mu, s2 = partial.y, partial.yvar
    mean = f * partial.y + r * mu
    var = r**2 * s2.clamp_min(0.0) + r * f * partial.yvar.clamp_min(0.0)
    return mean, var


def chance_of_improving(
    mean: Tensor,
    var: Tensor,
    front: Tensor,
    ref_point: Tensor | None,
    *,
    seed: int,
    min_gain: float = 0.0,
    draws: int = DRAWS,
) -> Tensor:
    """`[k]`: the chance that a draw from N(mean, var) `[k, m]` improves the front `[p, m]` (maximisation).

    With `min_gain` 0: the draw is above `ref_point [m]` and dominated by no row of `front` (a tie on every objective
    counts as dominated: it adds no hypervolume). With `min_gain` > 0: it adds at least `min_gain` x the front's
    hypervolume (estimated with BOX_POINTS uniform points in the box between `ref_point` and the draw).
    """
    generator = torch.Generator().manual_seed(seed)
    samples = score_draws(mean, var, generator, draws)
    ok = torch.ones(samples.shape[:2], dtype=torch.bool)
    if ref_point is not None:
        ok &= (samples > ref_point.to(samples)).all(-1)
    if front.shape[0]:
        weakly = (front.to(samples)[None, None] >= samples[:, :, None]).all(-1)  # [draws, k, p]
        ok &= ~weakly.any(-1)
    if min_gain > 0.0 and ref_point is not None and front.shape[0]:
        needed = min_gain * hypervolume(front, ref_point)
        ok &= hypervolume_gain(samples, front, ref_point, generator) >= needed
    return ok.to(mean.dtype).mean(0)


def score_draws(mean: Tensor, var: Tensor, generator: torch.Generator, draws: int = DRAWS) -> Tensor:
    """`[draws, k, m]` draws from N(mean, var) `[k, m]`, each objective independently."""
    eps = torch.randn((draws, *mean.shape), generator=generator, dtype=mean.dtype)
    return mean + var.sqrt() * eps


def chance_of_taking_home(
    mean: Tensor, var: Tensor, target: Target, incumbent: float, *, seed: int, draws: int = DRAWS
) -> Tensor:
    """`[k]`: the chance that a draw from N(mean, var) `[k, m]` meets `target`'s constraints and its target value
    beats `incumbent` (-inf: no trial qualifies yet, so any feasible draw would be the take-home merge).

    The same `seed` draws the same scores as `chance_of_improving`'s.
    """
    samples = score_draws(mean, var, torch.Generator().manual_seed(seed), draws)
    wins = target.feasible(samples) & (target.value(samples) > incumbent)
    return wins.to(mean.dtype).mean(0)


def hypervolume_gain(points: Tensor, front: Tensor, ref_point: Tensor, generator: torch.Generator) -> Tensor:
    """`[...]`: the hypervolume each of `points [..., m]` adds to `front [p, m]` above `ref_point [m]`, estimated
    from BOX_POINTS uniform points in its box (the box's volume times the share no front row dominates)."""
    ref = ref_point.to(points)
    box = (points - ref).clamp_min(0.0)  # [..., m]
    u = torch.rand((BOX_POINTS, points.shape[-1]), generator=generator, dtype=points.dtype)
    inside = ref + u * box.unsqueeze(-2)  # [..., B, m]
    covered = (front.to(points)[:, None, :] >= inside.unsqueeze(-3)).all(-1).any(-2)  # [..., B]
    return box.prod(-1) * (1.0 - covered.to(points.dtype).mean(-1))


def continue_chances(
    X_done: Tensor,
    Y_done: Tensor,
    Yvar_done: Tensor | None,
    front: Tensor,
    partial: PartialScores,
    ref_point: Tensor | None,
    *,
    prior_mean: PriorMean,
    seed: int,
    min_gain: float = 0.0,
    cat_dims: Sequence[int] = (),
    batches: Sequence[int] | None = None,
    stake: TakeHomeStake | None = None,
) -> Tensor:
    """`[k]` chances that each partially scored candidate improves the front once scored in full; with a `stake`,
    the larger of that and its chance of becoming the take-home merge (`chance_of_taking_home`).

    `X_done [n, d]`, `Y_done [n, m]`, `Yvar_done [n, m]` (None: noise inferred) are every finished trial, those
    stopped early included; `front [p, m]` is the front of the trials scored in full. `cat_dims`: a mixed space's
    method coordinate (see `fit_models`). `batches [n + k]`: the batch of each finished then each partial trial,
    so that `prior_mean: forecast` asks the same initial design as the batches do (None: all initial).
    """
    X = torch.cat([X_done, partial.x]).to(torch.float64)
    Y = torch.cat([Y_done, partial.y]).to(torch.float64)
    mu = s2 = None
    if X.shape[0] >= MIN_TRIALS_FOR_GP:
        Yvar = None if Yvar_done is None else torch.cat([Yvar_done, partial.yvar]).to(torch.float64)
        ref = None if ref_point is None else ref_point.tolist()
        model = fit_models_with_prior(X, Y, Yvar, prior_mean, cat_dims, batches=batches, ref_point=ref).model
        with torch.no_grad(), expected_warnings(JITTER_WARNING, NEGATIVE_VARIANCE_WARNING):
            posterior = model.posterior(partial.x.to(torch.float64))
            mu, s2 = posterior.mean, posterior.variance
    mean, var = full_score_distribution(partial, mu, s2)
    chance = chance_of_improving(mean, var, front, ref_point, seed=seed, min_gain=min_gain)
    if stake is None:
        return chance
    taking_home = chance_of_taking_home(mean, var, stake.target, stake.incumbent, seed=seed)
    return torch.maximum(chance, taking_home)
