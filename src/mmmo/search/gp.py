"""Independent GP surrogates, one per objective, on the unit cube."""

from __future__ import annotations

import logging

import torch
from botorch.exceptions.warnings import InputDataWarning, OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import ModelListGP, SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.utils.warnings import NumericalWarning
from torch import Tensor

from mmmo.quiet import expected_warnings

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


def _gp(x: Tensor, y: Tensor) -> SingleTaskGP:
    d = x.shape[-1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(x)
    with expected_warnings(_CONSTANT_OUTCOME_WARNING):
        return SingleTaskGP(
            x,
            y,
            input_transform=Normalize(d=d, bounds=bounds),
            outcome_transform=Standardize(m=1),
        )


def _fit_one(x: Tensor, y: Tensor, index: int) -> SingleTaskGP:
    gp = _gp(x, y)
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    try:
        with expected_warnings(JITTER_WARNING, _FIT_RETRY_WARNING):
            fit_gpytorch_mll(mll)
    except Exception as err:  # noqa: BLE001 - any fit failure falls back to the prior hyperparameters
        log.warning("GP fit for objective %d failed (%s); using prior hyperparameters", index, err)
        gp = _gp(x, y)
    gp.eval()
    return gp


def fit_models(X: Tensor, Y: Tensor) -> ModelListGP:
    """One `SingleTaskGP` per column of `Y [n, m]` on inputs `X [n, d]` in the unit cube (float64).

    Outcomes are standardised by an outcome transform, so posteriors come back in raw units.
    Failed trials must already be excluded; a fit that fails keeps the prior hyperparameters.
    """
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X {list(X.shape)} and Y {list(Y.shape)} must be [n, d] and [n, m]")
    if X.shape[0] < 1:
        raise ValueError("cannot fit a GP without observations")
    X = X.to(torch.float64)
    Y = Y.to(X)
    return ModelListGP(*[_fit_one(X, Y[:, i : i + 1], i) for i in range(Y.shape[-1])])
