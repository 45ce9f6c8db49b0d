"""Hypervolume-improvement acquisition: step 1 of the MM-MO batch (qLogNEHVI or qEHVI, sequential greedy).

Units: the GPs standardise their outcomes with an outcome transform that is undone in the posterior, so
posterior samples, the Pareto front and the reference point all live in RAW objective units. Never
z-score the reference point (or the objectives) by hand on top of that: mixing z-scored and raw units
puts the reference point above (or far below) every sample and silently zeroes (or distorts) the
improvement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.monte_carlo import qExpectedHypervolumeImprovement
from botorch.acquisition.objective import LinearMCObjective
from botorch.exceptions.warnings import BadInitialCandidatesWarning, NumericsWarning
from botorch.models.model import Model
from botorch.optim import optimize_acqf, optimize_acqf_mixed
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning
from torch import Tensor

from mmmo.optimizer.fisher import DEDUPE_TOL, far_from
from mmmo.optimizer.gp import JITTER_WARNING
from mmmo.optimizer.pareto import infer_ref_point
from mmmo.runtime.quiet import expected_warnings

log = logging.getLogger(__name__)

AcqKind = Literal["qlognehvi", "qehvi"]
# BoTorch outcome constraints: callables on posterior samples `[..., m]` in raw units, feasible where <= 0.
Constraints = list[Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class AcqBudget:
    """How hard to optimise the acquisition: L-BFGS restarts, raw samples for their starts, MC samples of the
    posterior, and L-BFGS iterations per restart. The defaults are a thorough budget; `budget_for` is the one a
    search uses."""

    num_restarts: int = 8
    raw_samples: int = 256
    mc_samples: int = 128
    maxiter: int = 200

    def shared(self, k: int) -> AcqBudget:
        """This effort shared among `k` separate optimisations (a mixed space's methods): restarts and raw samples
        divided, so that a batch costs about what one method's does."""
        if k <= 1:
            return self
        return replace(self, num_restarts=max(1, math.ceil(self.num_restarts / k)),
                       raw_samples=max(MIN_RAW_SAMPLES, self.raw_samples // k))

    def optimizer_options(self, seed: int) -> dict[str, int]:
        """The `options` of BoTorch's optimize_acqf for this budget."""
        return {"seed": seed, "batch_limit": self.num_restarts, "init_batch_limit": self.raw_samples,
                "maxiter": self.maxiter}


DEFAULT_BUDGET = AcqBudget()
MIN_RAW_SAMPLES = 16  # raw samples for each method of a mixed space at least


def budget_for(n_objectives: int) -> AcqBudget:
    """An acquisition budget whose cost stays small beside an evaluation.

    qLogNEHVI partitions the objective space once per MC sample, and that partitioning grows steeply with
    the number of objectives: with 4 objectives and 128 samples one batch of 10 proposals took over 2 min
    on 2 CPU cores against ~20 s with 32 samples (benchmarks/overhead.py measures it).
    """
    mc = DEFAULT_BUDGET.mc_samples if n_objectives <= 2 else (64 if n_objectives == 3 else 32)
    return AcqBudget(num_restarts=4, raw_samples=128, mc_samples=mc, maxiter=100)


# BoTorch recommends the log variant over qEHVI; qEHVI stays on purpose, for the paper's ablation.
_LEGACY_EHVI_WARNING = (NumericsWarning, "qExpectedHypervolumeImprovement has known numerical issues")
# With small budgets the acquisition is often flat (no improvement left near the front): the initial
# conditions are then drawn at random, and some L-BFGS-B restarts fail and are retried. Nothing to act on.
_FLAT_ACQUISITION_WARNING = (BadInitialCandidatesWarning, "Unable to find non-zero acquisition function values")
_RESTART_WARNING = (RuntimeWarning, "Optimization failed")


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fix torch's global RNG (CPU, and `device` if CUDA) inside the block, restoring it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def posterior_mean(model: Model, X: Tensor) -> Tensor:
    """Posterior mean `[n, m]` in raw objective units."""
    with torch.no_grad():
        return model.posterior(X).mean


def resolve_ref_point(
    model: Model, X_baseline: Tensor, ref_point: Tensor | Sequence[float] | None, Y_baseline: Tensor | None
) -> Tensor:
    """The reference point in raw units: as given, else nadir - 0.1 range of `Y_baseline` (or the posterior mean)."""
    if ref_point is not None:
        return torch.as_tensor(ref_point, dtype=X_baseline.dtype, device=X_baseline.device)
    Y = Y_baseline if Y_baseline is not None else posterior_mean(model, X_baseline)
    return infer_ref_point(Y.to(X_baseline))


def build_acquisition(
    model: Model,
    X_baseline: Tensor,
    ref_point: Tensor | Sequence[float] | None = None,
    *,
    kind: AcqKind = "qlognehvi",
    seed: int = 0,
    Y_baseline: Tensor | None = None,
    mc_samples: int = DEFAULT_BUDGET.mc_samples,
    prune_baseline: bool = True,
    constraints: Constraints | None = None,
    X_pending: Tensor | None = None,
) -> AcquisitionFunction:
    """The hypervolume-improvement acquisition in raw units; a single objective falls back to qLogNEI.

    qEHVI's box decomposition is built from the posterior mean at `X_baseline` (not from noisy
    observations), in the same raw units as the reference point. `constraints` (on the raw outputs) weigh each
    improvement by its chance of feasibility; None or empty: unconstrained, exactly as before.
    `X_pending [r, d]`: points being scored, given at construction: qLogNEHVI then builds its box decompositions
    once, over the baseline and the pending points together, with the same values as `set_X_pending` afterwards,
    which first builds them without the pending points (a fifth of an asynchronous proposal's time with 4
    objectives). A single objective's qLogNEI then prunes its baseline once, not twice.
    """
    X_baseline = X_baseline.to(torch.float64)
    extra: dict = {"constraints": constraints} if constraints else {}
    if X_pending is not None and X_pending.shape[0]:
        extra["X_pending"] = X_pending.to(X_baseline)
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([mc_samples]), seed=seed)
    if model.num_outputs == 1:
        return qLogNoisyExpectedImprovement(
            model, X_baseline, sampler=sampler, prune_baseline=prune_baseline, **extra
        )
    ref = resolve_ref_point(model, X_baseline, ref_point, Y_baseline)
    if kind == "qlognehvi":
        return qLogNoisyExpectedHypervolumeImprovement(
            model, ref_point=ref, X_baseline=X_baseline, sampler=sampler, prune_baseline=prune_baseline,
            **extra,
        )
    if kind == "qehvi":
        partitioning = FastNondominatedPartitioning(ref_point=ref, Y=posterior_mean(model, X_baseline))
        with expected_warnings(_LEGACY_EHVI_WARNING):
            return qExpectedHypervolumeImprovement(
                model, ref_point=ref, partitioning=partitioning, sampler=sampler, **extra
            )
    raise ValueError(f"unknown acquisition {kind!r} (qlognehvi or qehvi)")


FixedFeatures = list[dict[int, float]]


def maximize(
    acqf: AcquisitionFunction, bounds: Tensor, q: int, budget: AcqBudget, seed: int,
    fixed_features_list: FixedFeatures | None = None, sequential: bool = True,
) -> Tensor:
    """`q` points `[q, d]` maximising `acqf` by sequential greedy L-BFGS; with `fixed_features_list` (a mixed
    space: one dict of fixed coordinates per method) each point is the best over those choices (BoTorch's
    `optimize_acqf_mixed`)."""
    kwargs = {"num_restarts": budget.num_restarts, "raw_samples": budget.raw_samples,
              "options": budget.optimizer_options(seed)}
    if fixed_features_list:
        shared = budget.shared(len(fixed_features_list))
        kwargs = {"num_restarts": shared.num_restarts, "raw_samples": shared.raw_samples,
                  "options": shared.optimizer_options(seed)}
        X, _ = optimize_acqf_mixed(acqf, bounds=bounds, q=q, fixed_features_list=fixed_features_list, **kwargs)
    else:
        X, _ = optimize_acqf(acqf, bounds=bounds, q=q, sequential=sequential, **kwargs)
    return X.detach().clamp(0.0, 1.0)


def best_in_pool(acqf: AcquisitionFunction, pool: Tensor, avoid: Tensor, tol: float = DEDUPE_TOL) -> int | None:
    """Index of the row of `pool [p, d]` with the highest acquisition value (given the acquisition's pending
    points), among those farther than `tol` from `avoid`; None if none is. Ties go to the lower index."""
    if pool.shape[0] == 0:
        return None
    with torch.no_grad():
        values = acqf(pool.unsqueeze(1))  # [p]: one q=1 batch per row
    values = values.masked_fill(~far_from(pool, avoid, tol), -math.inf)
    best = int(torch.argmax(values))
    return None if math.isinf(float(values[best])) else best


def propose_hvi_pooled(
    model: Model,
    X_baseline: Tensor,
    ref_point: Tensor | Sequence[float] | None,
    n: int,
    pool: Tensor,
    *,
    X_avoid: Tensor | None = None,
    optimize: bool = True,
    kind: AcqKind = "qlognehvi",
    seed: int = 0,
    budget: AcqBudget = DEFAULT_BUDGET,
    Y_baseline: Tensor | None = None,
    fixed_features_list: FixedFeatures | None = None,
    X_pending: Tensor | None = None,
    constraints: Constraints | None = None,
) -> tuple[Tensor, Tensor]:
    """(At most) `n` points `[k, d]`, and a `[k]` mask of those taken from `pool [p, d]`.

    Sequential greedy over a growing batch: at each step the acquisition's own optimum (found by L-BFGS
    with the points already chosen as pending, exactly as `propose_hvi` does) competes with the pool's
    rows not yet taken, and the highest acquisition value wins (ties: the optimum, then the lower row).
    Pool rows never replace a proposal: they are chosen only where the acquisition values them more.
    Points within DEDUPE_TOL of `X_avoid` (the evaluated ones) or of an earlier choice are skipped.
    `optimize=False` leaves the optimum out: a discrete greedy choice from the pool alone, as BoTorch's
    `optimize_acqf_discrete`. `budget` is the acquisition effort (MC samples, and L-BFGS's when optimising).
    `fixed_features_list`: a mixed space's choices (see `maximize`). `X_pending [r, d]`: points already chosen
    for this batch by another part of it, pending throughout and never repeated. `constraints`: see
    `build_acquisition`.
    """
    X_baseline = X_baseline.to(torch.float64)
    d = X_baseline.shape[-1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(X_baseline)
    left = pool.to(X_baseline)
    avoid = X_baseline.new_zeros(0, d) if X_avoid is None else X_avoid.to(X_baseline)
    chosen: list[Tensor] = []
    pending = X_baseline.new_zeros(0, d) if X_pending is None else X_pending.to(X_baseline).reshape(-1, d)
    avoid = torch.cat([avoid, pending])
    from_pool: list[bool] = []
    with seeded(seed, X_baseline.device), expected_warnings(
        JITTER_WARNING, _FLAT_ACQUISITION_WARNING, _RESTART_WARNING
    ):
        acqf = build_acquisition(
            model, X_baseline, ref_point, kind=kind, seed=seed, Y_baseline=Y_baseline, mc_samples=budget.mc_samples,
            constraints=constraints, X_pending=pending,
        )
        for _ in range(n):
            so_far = torch.cat([pending, torch.stack(chosen)]) if chosen else pending
            acqf.set_X_pending(so_far if so_far.shape[0] else None)
            own = avoid[:0]
            if optimize:
                own = maximize(acqf, bounds, 1, budget, seed, fixed_features_list, sequential=False)
            candidates = torch.cat([own, left])
            taken = torch.stack(chosen) if chosen else avoid[:0]
            i = best_in_pool(acqf, candidates, torch.cat([avoid, taken]))
            if i is None:
                break
            chosen.append(candidates[i])
            in_pool = i - own.shape[0]
            from_pool.append(in_pool >= 0)
            if in_pool >= 0:
                left = torch.cat([left[:in_pool], left[in_pool + 1 :]])
    X = torch.stack(chosen) if chosen else X_baseline.new_zeros(0, d)
    return X, torch.tensor(from_pool, dtype=torch.bool)


def propose_hvi(
    model: Model,
    X_baseline: Tensor,
    ref_point: Tensor | Sequence[float] | None,
    n: int,
    *,
    kind: AcqKind = "qlognehvi",
    seed: int = 0,
    budget: AcqBudget = DEFAULT_BUDGET,
    Y_baseline: Tensor | None = None,
    prune_baseline: bool = True,
    fixed_features_list: FixedFeatures | None = None,
    X_pending: Tensor | None = None,
    constraints: Constraints | None = None,
) -> Tensor:
    """`n` points `[n, d]` in the unit cube, chosen by sequential greedy maximisation of the acquisition.

    `ref_point` is in raw objective units; None infers it from `Y_baseline` (or the posterior mean).
    `budget` is the acquisition effort (MC samples, L-BFGS restarts, raw samples and iterations).
    `fixed_features_list`: a mixed space's choices, one dict of fixed coordinates per method (see `maximize`).
    `X_pending` and `constraints`: see `propose_hvi_pooled`.
    """
    X_baseline = X_baseline.to(torch.float64)
    d = X_baseline.shape[-1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(X_baseline)
    with seeded(seed, X_baseline.device), expected_warnings(
        JITTER_WARNING, _FLAT_ACQUISITION_WARNING, _RESTART_WARNING
    ):
        acqf = build_acquisition(
            model,
            X_baseline,
            ref_point,
            kind=kind,
            seed=seed,
            Y_baseline=Y_baseline,
            mc_samples=budget.mc_samples,
            prune_baseline=prune_baseline,
            constraints=constraints,
            X_pending=X_pending,
        )
        return maximize(acqf, bounds, n, budget, seed, fixed_features_list)


def propose_scalar(
    model: Model,
    X_baseline: Tensor,
    weights: Tensor,
    n: int,
    *,
    constraints: Constraints | None = None,
    seed: int = 0,
    budget: AcqBudget = DEFAULT_BUDGET,
    fixed_features_list: FixedFeatures | None = None,
    X_pending: Tensor | None = None,
) -> Tensor:
    """`n` points `[n, d]` maximising qLogNEI of the weighted sum `Y @ weights` (`weights [m]`, raw units) of the
    model's outputs, under outcome `constraints` on those outputs (BoTorch applies them to the raw samples, before
    the weighting), by sequential greedy optimisation as `propose_hvi`; `X_pending [r, d]`: points being scored."""
    X_baseline = X_baseline.to(torch.float64)
    d = X_baseline.shape[-1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(X_baseline)
    with seeded(seed, X_baseline.device), expected_warnings(
        JITTER_WARNING, _FLAT_ACQUISITION_WARNING, _RESTART_WARNING
    ):
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([budget.mc_samples]), seed=seed)
        acqf = qLogNoisyExpectedImprovement(
            model, X_baseline, sampler=sampler, objective=LinearMCObjective(weights.to(X_baseline)),
            constraints=constraints or None,
            X_pending=X_pending.to(X_baseline) if X_pending is not None and X_pending.shape[0] else None,
        )
        return maximize(acqf, bounds, n, budget, seed, fixed_features_list)
