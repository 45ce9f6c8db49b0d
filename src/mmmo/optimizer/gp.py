"""Independent GP surrogates, one per objective, on the unit cube, with known or inferred observation noise."""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


ResolvedPrior = Literal["worst", "fitted"]

# From this many objectives on, "auto" pins the prior mean (benchmarks/RESULTS.md, issue 14).
PINNED_PRIOR_MIN_OBJECTIVES = 3


def resolve_prior_mean(n_objectives: int, prior_mean: PriorMean) -> ResolvedPrior:
    """"auto": "worst" with PINNED_PRIOR_MIN_OBJECTIVES or more objectives, else "fitted".

    Far from the data a GP returns to its prior mean; fitted, that mean is about the average observation, on
    every objective at once. Where objectives trade off (a merge's tasks against each other and against
    sparsity, DTLZ2) such an average point can lie beyond the front found so far, and the more objectives there
    are the likelier it is that no observation dominates it: every unexplored corner then looks like progress
    and the acquisition spends the budget there. Pinned, the hypervolume rose on every 4-objective problem of
    benchmarks/search_quality.py and fell on the 2-objective one (BraninCurrin): the figures are in RESULTS.md.
    """
    if prior_mean != "auto":
        return prior_mean
    return "worst" if n_objectives >= PINNED_PRIOR_MIN_OBJECTIVES else "fitted"


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


def _gp(
    x: Tensor, y: Tensor, yvar: Tensor | None, prior_mean: ResolvedPrior, cat_dims: Sequence[int] = ()
) -> SingleTaskGP:
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
    if prior_mean == "worst":
        # The unexplored is then no better than the worst seen until the posterior variance says it may be.
        gp.mean_module.constant = gp.train_targets.min()  # standardised units
        gp.mean_module.raw_constant.requires_grad_(False)
    return gp


def _fit_one(
    x: Tensor, y: Tensor, yvar: Tensor | None, index: int, prior_mean: ResolvedPrior, cat_dims: Sequence[int] = ()
) -> SingleTaskGP:
    gp = _gp(x, y, yvar, prior_mean, cat_dims)
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    try:
        with expected_warnings(JITTER_WARNING, _FIT_RETRY_WARNING):
            fit_gpytorch_mll(mll)
    except Exception as err:  # noqa: BLE001 - any fit failure falls back to the prior hyperparameters
        log.warning("GP fit for objective %d failed (%s); using prior hyperparameters", index, err)
        gp = _gp(x, y, yvar, prior_mean, cat_dims)
    gp.eval()
    return gp


def fit_models(
    X: Tensor, Y: Tensor, Yvar: Tensor | None = None, prior_mean: PriorMean = "auto", cat_dims: Sequence[int] = ()
) -> ModelListGP:
    """One `SingleTaskGP` per column of `Y [n, m]` on inputs `X [n, d]` in the unit cube (float64).

    `Yvar [n, m]` holds known observation variances in raw units (NaN: unknown). An objective whose
    every variance is known gets exactly that noise (0 meaning exact); any other infers one noise level.
    Outcomes are standardised by an outcome transform, so posteriors come back in raw units.
    `prior_mean` "worst" pins each GP's constant mean at its worst (lowest) observation; "fitted" fits it;
    "auto" pins it from 3 objectives on (`resolve_prior_mean`). `cat_dims`: categorical coordinates (a mixed
    space's method), modelled by BoTorch's MixedSingleTaskGP; none: a SingleTaskGP, as always.
    Failed trials must already be excluded; a fit that fails keeps the prior hyperparameters.
    """
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X {list(X.shape)} and Y {list(Y.shape)} must be [n, d] and [n, m]")
    if Yvar is not None and Yvar.shape != Y.shape:
        raise ValueError(f"Yvar {list(Yvar.shape)} must have the shape of Y {list(Y.shape)}")
    if X.shape[0] < 1:
        raise ValueError("cannot fit a GP without observations")
    X = X.to(torch.float64)
    Y = Y.to(X)
    prior = resolve_prior_mean(Y.shape[-1], prior_mean)
    models = []
    for i in range(Y.shape[-1]):
        yvar = None if Yvar is None else Yvar[:, i : i + 1].to(X)
        if yvar is not None and not bool(torch.isfinite(yvar).all()):
            yvar = None
        models.append(_fit_one(X, Y[:, i : i + 1], yvar, i, prior, cat_dims))
    return ModelListGP(*models)


def observation_variance(stderr: Tensor, n_examples: Tensor) -> Tensor:
    """Known noise variances `[n, m]` from standard errors and example counts (NaN where unknown).

    A score of 0 or 1 on n examples has a reported stderr of 0, yet the next n examples could disagree:
    the variance is floored at 1 / (n + 2)^2, the Laplace-smoothed binomial variance at those extremes.
    An example count of 0 means an exact objective (sparsity): its variance stays as given.
    """
    floor = torch.where(n_examples > 0, 1.0 / (n_examples + 2.0) ** 2, torch.zeros_like(n_examples))
    return torch.maximum(stderr**2, floor.to(stderr))
