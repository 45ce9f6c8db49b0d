"""Independent GP surrogates, one per objective, on the unit cube, with known or inferred observation noise."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from botorch.exceptions.warnings import InputDataWarning, OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, ModelListGP, SingleTaskGP
from botorch.models.kernels.categorical import CategoricalKernel
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import Kernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.utils.warnings import NumericalWarning
from torch import Tensor

from mmmo.optimizer.pareto import infer_ref_point
from mmmo.optimizer.prior import PRIORS, PriorChoice, ResolvedPrior, initial_design_errors
from mmmo.runtime.quiet import expected_warnings
from mmmo.spec.schema import PriorMean

log = logging.getLogger(__name__)

# Near-duplicate points leave the kernel matrix singular up to rounding: gpytorch adds jitter to factor it,
# and says so.
JITTER_WARNING = (NumericalWarning, "A not p.d., added jitter")
# An objective every trial scored the same on (a few examples per task) is constant: the Standardize outcome
# transform copes, but botorch warns that the outcomes are not standardised.
_CONSTANT_OUTCOME_WARNING = (InputDataWarning, r"Data \(outcome observations\) is not standardized")
# L-BFGS-B stopping early on a few tied observations: botorch retries by itself, and a fit that still fails
# falls back to the prior hyperparameters with a warning of ours.
_FIT_RETRY_WARNING = (OptimizationWarning, "Optimization failed")


# An exact observation (variance 0) still gets this fraction of the outcome's sample variance as noise: the
# kernel matrix must stay invertible, and botorch's own floor for inferred noise is 1e-4 of it.
EXACT_NOISE_FRACTION = 1e-5


def known_variance(y: Tensor, yvar: Tensor) -> Tensor:
    """`yvar [n, 1]` floored at EXACT_NOISE_FRACTION x the sample variance of `y [n, 1]` (or of 1, if constant)."""
    scale = y.var() if y.shape[0] > 1 and float(y.var()) > 0 else torch.ones((), dtype=y.dtype, device=y.device)
    return yvar.clamp_min(float(EXACT_NOISE_FRACTION * scale))


# From this many objectives on, "auto" pins the prior mean, and "forecast" asks the data (below: "fitted", for
# both; benchmarks/RESULTS.md, "Search quality" and "The GPs' prior mean, decided by the data").
PINNED_PRIOR_MIN_OBJECTIVES = 3


def resolve_prior_mean(n_objectives: int, prior_mean: PriorMean) -> ResolvedPrior | None:
    """The prior `prior_mean` fixes for `n_objectives`, or None where the data decides per batch
    (`fit_models_with_prior`): "auto" is "worst" from PINNED_PRIOR_MIN_OBJECTIVES objectives, else "fitted";
    "forecast" is "fitted" below PINNED_PRIOR_MIN_OBJECTIVES, else None.

    Far from the data a GP returns to its prior mean; fitted, that mean is about the average observation, on
    every objective at once. Where objectives trade off along a concave front (a merge's tasks against each
    other and against sparsity, DTLZ2) such an average point lies beyond the front found so far: every unexplored
    corner then looks like progress and the acquisition spends the budget there, which pinning each mean at its
    worst observation prevents. The same pin lost on two held-out engineering problems (3 and 4 objectives);
    "forecast" lets the data tell the cases apart, and is measured against "auto" in benchmarks/RESULTS.md.
    With 2 objectives the initial design's forecasts favoured the pinned prior on BraninCurrin (5 of 5 seeds),
    where the fitted one searched better, so both keep it fitted there.
    """
    if prior_mean in ("worst", "fitted"):
        return prior_mean
    if n_objectives < PINNED_PRIOR_MIN_OBJECTIVES:
        return "fitted"
    return "worst" if prior_mean == "auto" else None


# The kernel of a mixed space (the method a categorical coordinate). "product": BoTorch's default kernel on the
# continuous dimensions times its CategoricalKernel on the method, one GP whose method lengthscale says how much
# methods share; "sum+product": BoTorch's MixedSingleTaskGP (both combinations, twice the hyperparameters), whose
# 4 GPs took 17.8 s to fit on the demo's 10 initial points against 11.5 s for the product and 2.3 s for one
# method's (benchmarks/RESULTS.md).
MIXED_KERNEL: Literal["product", "sum+product"] = "product"


def product_kernel(d: int, cat_dims: Sequence[int]) -> Kernel:
    """BoTorch's default (dim-scaled RBF) kernel on the `d - len(cat_dims)` continuous dimensions times a
    CategoricalKernel on `cat_dims`."""
    cont = [i for i in range(d) if i not in cat_dims]
    return get_covar_module_with_dim_scaled_prior(ard_num_dims=len(cont), active_dims=cont) * CategoricalKernel(
        ard_num_dims=len(cat_dims), active_dims=list(cat_dims), lengthscale_constraint=GreaterThan(1e-6)
    )


def _gp(x: Tensor, y: Tensor, yvar: Tensor | None, pinned: float | None, cat_dims: Sequence[int] = ()) -> SingleTaskGP:
    d = x.shape[-1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(x)
    noise = None if yvar is None else known_variance(y, yvar)
    with expected_warnings(_CONSTANT_OUTCOME_WARNING):
        if cat_dims and MIXED_KERNEL == "sum+product":
            gp: SingleTaskGP = MixedSingleTaskGP(
                x, y, cat_dims=list(cat_dims), train_Yvar=noise, input_transform=Normalize(d=d, bounds=bounds),
                outcome_transform=Standardize(m=1),
            )
        elif cat_dims:
            gp = SingleTaskGP(
                x, y, train_Yvar=noise, covar_module=product_kernel(d, cat_dims),
                input_transform=Normalize(d=d, bounds=bounds), outcome_transform=Standardize(m=1),
            )
        else:
            gp = SingleTaskGP(
                x,
                y,
                train_Yvar=noise,
                input_transform=Normalize(d=d, bounds=bounds),
                outcome_transform=Standardize(m=1),
            )
    if pinned is not None:  # raw units; the mean module works in the outcome transform's standardised ones
        # The unexplored is then no better than the worst seen until the posterior variance says it may be.
        transform = gp.outcome_transform
        gp.mean_module.constant = ((pinned - transform.means) / transform.stdvs).reshape(())
        gp.mean_module.raw_constant.requires_grad_(False)
    return gp


def _fit_one(
    x: Tensor, y: Tensor, yvar: Tensor | None, index: int, pinned: float | None, cat_dims: Sequence[int] = ()
) -> SingleTaskGP:
    """One objective's GP fitted by marginal likelihood; `pinned`: its constant prior mean, raw units (None: fitted)."""
    gp = _gp(x, y, yvar, pinned, cat_dims)
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    try:
        with expected_warnings(JITTER_WARNING, _FIT_RETRY_WARNING):
            fit_gpytorch_mll(mll)
    except Exception as err:  # noqa: BLE001 - any fit failure falls back to the prior hyperparameters
        log.warning("GP fit for objective %d failed (%s); using prior hyperparameters", index, err)
        gp = _gp(x, y, yvar, pinned, cat_dims)
    gp.eval()
    return gp


def fit_models(
    X: Tensor, Y: Tensor, Yvar: Tensor | None = None, prior_mean: PriorMean = "auto", cat_dims: Sequence[int] = ()
) -> ModelListGP:
    """`fit_models_with_prior`'s chosen GPs."""
    return fit_models_with_prior(X, Y, Yvar, prior_mean, cat_dims).model


@dataclass(frozen=True)
class Surrogates:
    """One batch's GPs: `model` (one per objective) with the prior `prior` chose, and every prior's GPs fitted
    (`by_prior`: both under "forecast")."""

    model: ModelListGP
    prior: PriorChoice
    by_prior: dict[ResolvedPrior, ModelListGP]


def fit_models_with_prior(
    X: Tensor,
    Y: Tensor,
    Yvar: Tensor | None = None,
    prior_mean: PriorMean = "auto",
    cat_dims: Sequence[int] = (),
    *,
    batches: Sequence[int] | None = None,
    ref_point: Sequence[float] | None = None,
) -> Surrogates:
    """One `SingleTaskGP` per column of `Y [n, m]` on inputs `X [n, d]` in the unit cube (float64), and the prior
    mean they were fitted with.

    `Yvar [n, m]` holds known observation variances in raw units (NaN: unknown). An objective whose
    every variance is known gets exactly that noise (0 meaning exact); any other infers one noise level.
    Outcomes are standardised by an outcome transform, so posteriors come back in raw units.
    `prior_mean` "worst" pins each GP's constant mean at its worst (lowest) observation; "fitted" fits it;
    "auto" pins it from 3 objectives on (`resolve_prior_mean`); "forecast" keeps "fitted" below 3 objectives
    and from 3 fits both and keeps the one whose GPs better forecast the hypervolume gain (above `ref_point`,
    raw units; None: inferred from `Y`) of each initial-design trial from the other ones
    (`optimizer.prior.initial_design_errors`; `batches [n]`: each trial's batch, 0 = the initial design; None:
    every trial is). `cat_dims`: categorical coordinates (a mixed space's method), modelled with a categorical
    kernel; none: a SingleTaskGP, as always.
    Failed trials must already be excluded; a fit that fails keeps the prior hyperparameters.
    """
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X {list(X.shape)} and Y {list(Y.shape)} must be [n, d] and [n, m]")
    if Yvar is not None and Yvar.shape != Y.shape:
        raise ValueError(f"Yvar {list(Yvar.shape)} must have the shape of Y {list(Y.shape)}")
    if X.shape[0] < 1:
        raise ValueError("cannot fit a GP without observations")
    if batches is not None and len(batches) != X.shape[0]:
        raise ValueError(f"{len(batches)} batch indices for {X.shape[0]} trials")
    X = X.to(torch.float64)
    Y = Y.to(X)
    yvars = [None if Yvar is None else Yvar[:, i : i + 1].to(X) for i in range(Y.shape[-1])]
    yvars = [v if v is not None and bool(torch.isfinite(v).all()) else None for v in yvars]
    worst = [float(v) for v in Y.min(dim=0).values]

    def fit_all(kind: ResolvedPrior) -> list[SingleTaskGP]:
        pins = worst if kind == "worst" else [None] * len(worst)
        return [_fit_one(X, Y[:, i : i + 1], yvars[i], i, p, cat_dims) for i, p in enumerate(pins)]

    fixed = resolve_prior_mean(Y.shape[-1], prior_mean)
    if fixed is not None:
        model = ModelListGP(*fit_all(fixed))
        return Surrogates(model, PriorChoice(fixed, {}), {fixed: model})
    # Each fitted from scratch, as a spec fixing it would: "forecast" then searches exactly as the prior it chose.
    fits: dict[ResolvedPrior, list[SingleTaskGP]] = {kind: fit_all(kind) for kind in PRIORS}
    ref = infer_ref_point(Y) if ref_point is None else torch.tensor(list(ref_point), dtype=Y.dtype, device=Y.device)
    initial = torch.tensor([b == 0 for b in batches] if batches is not None else [True] * Y.shape[0], device=Y.device)
    evidence = initial_design_errors(fits, Y, initial.nonzero().flatten(), ref)
    kind: ResolvedPrior = "worst" if evidence["worst"] < evidence["fitted"] else "fitted"
    by_prior = {k: ModelListGP(*gps) for k, gps in fits.items()}
    return Surrogates(by_prior[kind], PriorChoice(kind, evidence), by_prior)


def observation_variance(stderr: Tensor, n_examples: Tensor) -> Tensor:
    """Known noise variances `[n, m]` from standard errors and example counts (NaN where unknown).

    A score of 0 or 1 on n examples has a reported stderr of 0, yet the next n examples could disagree:
    the variance is floored at 1 / (n + 2)^2, the Laplace-smoothed binomial variance at those extremes.
    An example count of 0 means an exact objective (sparsity): its variance stays as given.
    """
    floor = torch.where(n_examples > 0, 1.0 / (n_examples + 2.0) ** 2, torch.zeros_like(n_examples))
    return torch.maximum(stderr**2, floor.to(stderr))
