"""Independent GP surrogates, one per objective, on the unit cube."""

from __future__ import annotations

import logging
import warnings

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import ModelListGP, SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

log = logging.getLogger(__name__)


def _fit_one(x: Tensor, y: Tensor, index: int) -> SingleTaskGP:
    d = x.shape[-1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(x)
    gp = SingleTaskGP(
        x,
        y,
        input_transform=Normalize(d=d, bounds=bounds),
        outcome_transform=Standardize(m=1),
    )
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(mll)
    except Exception as err:  # noqa: BLE001 - any fit failure falls back to the prior hyperparameters
        log.warning("GP fit for objective %d failed (%s); using prior hyperparameters", index, err)
        gp = SingleTaskGP(
            x,
            y,
            input_transform=Normalize(d=d, bounds=bounds),
            outcome_transform=Standardize(m=1),
        )
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
