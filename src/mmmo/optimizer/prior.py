"""Which prior mean the GPs get, decided by the data: the prior whose GPs forecast better what an unexplored
configuration adds to the front (each point of the initial design, from the others), per batch, as a
`PriorChoice`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from botorch.models import SingleTaskGP
from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning
from torch import Tensor

from mmmo.optimizer.pareto import pareto_mask

ResolvedPrior = Literal["worst", "fitted"]
PRIORS: tuple[ResolvedPrior, ...] = ("fitted", "worst")
# Posterior draws per held-out point when forecasting its hypervolume gain; the same draws serve both priors.
FORECAST_SAMPLES = 256


@dataclass(frozen=True)
class PriorChoice:
    """The prior mean one batch's GPs were fitted with, and why.

    `kind`: "fitted" (BoTorch's fitted constant, about the average observation) or "worst" (pinned at each
    objective's worst observation). `evidence`: for "forecast", each prior's forecast error of the initial design's
    hypervolume gains (`initial_design_errors`: CRPS summed over its points, hypervolume units; lower is
    better) as {"fitted": ..., "worst": ...}; empty when the spec fixed the prior.
    """

    kind: ResolvedPrior
    evidence: dict[str, float]

    def describe(self) -> str:
        """One phrase for the journal and report, e.g. "fitted" or "worst (forecast error 0.012 vs 0.034)"."""
        if not self.evidence:
            return self.kind
        other = "fitted" if self.kind == "worst" else "worst"
        return f"{self.kind} (forecast error {self.evidence[self.kind]:.3g} vs {self.evidence[other]:.3g})"


def leave_one_out(n: int) -> list[tuple[Tensor, Tensor]]:
    """(known, held out) index pairs holding each of `n` trials out in turn (none for fewer than 2)."""
    idx = torch.arange(n)
    return [(idx[idx != i], idx[i : i + 1]) for i in range(n)] if n > 1 else []


def predictive(gp: SingleTaskGP, known: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance `[k]` (raw units, observation noise included) of `gp`'s training points `out` given only
    its points `known`, with the hyperparameters as fitted on all of them."""
    x, t = gp.train_inputs[0], gp.train_targets  # input-transformed inputs [n, d], standardised targets [n]
    noise = gp.likelihood.noise.detach().reshape(-1).expand(t.shape[-1])
    c = gp.mean_module.constant.detach()
    with torch.no_grad():
        K = gp.covar_module(x).to_dense()
        K_aa = K[known][:, known] + torch.diag(noise[known]) + 1e-8 * torch.eye(len(known), dtype=K.dtype, device=K.device)
        L = torch.linalg.cholesky_ex(K_aa)[0]
        K_ba = K[out][:, known]
        mu = c + (K_ba @ torch.cholesky_solve((t[known] - c).unsqueeze(-1), L)).squeeze(-1)
        v = torch.linalg.solve_triangular(L, K_ba.T, upper=False)
        var = (K[out, out] - (v * v).sum(0)).clamp_min(1e-12) + noise[out]
    scale = gp.outcome_transform.stdvs.reshape(())
    return mu * scale + gp.outcome_transform.means.reshape(()), var * scale**2


def nondominated_cells(front: Tensor, ref: Tensor) -> Tensor:
    """`[2, cells, m]`: lower and upper corners of the boxes above `ref [m]` that no row of `front [p, m]` dominates."""
    return FastNondominatedPartitioning(ref_point=ref, Y=front).get_hypercell_bounds()


def hypervolume_gains(points: Tensor, cells: Tensor) -> Tensor:
    """`[...]`: the hypervolume each of `points [..., m]` alone adds to the front whose `nondominated_cells` these are."""
    side = (torch.minimum(points.unsqueeze(-2), cells[1]) - cells[0]).clamp_min(0.0)
    return side.prod(-1).sum(-1)


def crps(draws: Tensor, seen: Tensor) -> float:
    """The continuous ranked probability score of the forecasts `draws [S, k]` against outcomes `seen [k]`, summed
    over the k points (lower is better; 0 for a certain, right forecast)."""
    spread = (draws.unsqueeze(0) - draws.unsqueeze(1)).abs().mean((0, 1))
    return float(((draws - seen).abs().mean(0) - 0.5 * spread).sum())


def gain_draws(mean: Tensor, var: Tensor, cells: Tensor, seed: int) -> Tensor:
    """`[S, k]` hypervolume gains of FORECAST_SAMPLES draws from independent normals `mean`, `var` `[k, m]`."""
    g = torch.Generator().manual_seed(seed)  # common random numbers: every prior scored on the same draws
    eps = torch.randn((FORECAST_SAMPLES, *mean.shape), generator=g, dtype=mean.dtype).to(mean.device)
    return hypervolume_gains(mean + var.clamp_min(0.0).sqrt() * eps, cells)


def initial_design_errors(
    models: dict[ResolvedPrior, Sequence[SingleTaskGP]], Y: Tensor, initial: Tensor, ref: Tensor
) -> dict[ResolvedPrior, float]:
    """Per prior: the CRPS of its GPs' forecast of each initial-design trial's hypervolume gain over the front of
    the other initial trials, from them alone, against the gain its observation brought, summed over the trials
    (hypervolume units above `ref [m]`; `initial [k]`: the initial design's rows of `Y [n, m]`; hyperparameters as
    fitted on all n).

    Why the initial design only: its points were placed without looking at any model, so how well a prior
    forecasts them is how well it knows the unexplored. The search's own proposals are where the prior in use
    chose to go, and scoring forecasts there favours whichever prior was not in use (measured:
    benchmarks/RESULTS.md, "The GPs' prior mean, decided by the data").
    """
    return {kind: sum(errors) for kind, errors in initial_design_point_errors(models, Y, initial, ref).items()}


def initial_design_point_errors(
    models: dict[ResolvedPrior, Sequence[SingleTaskGP]], Y: Tensor, initial: Tensor, ref: Tensor
) -> dict[ResolvedPrior, list[float]]:
    """`initial_design_errors` before the sum: per prior, one CRPS per initial-design trial, in `initial`'s order."""
    errors: dict[ResolvedPrior, list[float]] = {kind: [] for kind in models}
    for i, (k, o) in enumerate(leave_one_out(initial.numel())):
        known, out = initial[k], initial[o]
        cells = nondominated_cells(Y[known][pareto_mask(Y[known])], ref)
        seen = hypervolume_gains(Y[out], cells)
        for kind, gps in models.items():
            moments = [predictive(gp, known, out) for gp in gps]
            mean = torch.stack([m for m, _ in moments], -1)
            var = torch.stack([v for _, v in moments], -1)
            errors[kind].append(crps(gain_draws(mean, var, cells, i), seen))
    return errors
