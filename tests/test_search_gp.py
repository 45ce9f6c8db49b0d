"""The GP surrogates' prior mean: what the search assumes about configurations far from every evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from mmmo.optimizer.gp import fit_models, resolve_prior_mean
from mmmo.optimizer.pareto import pareto_mask
from mmmo.spec.schema import OptimizerSpec


def trade_off_observations() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight points in a corner of the unit square whose two objectives trade off on a convex front.

    `Y [8, 2]` = (-cos t, -sin t), t in [0, pi/2] (maximised): the average of such points lies beyond
    the front, as on DTLZ2, so a GP reverting to its average predicts a point no observation dominates.
    """
    t = torch.linspace(0, 1, 8, dtype=torch.float64)
    X = torch.stack([0.3 * t, 0.3 * t.flip(0)], dim=-1)
    theta = t * math.pi / 2
    return X, torch.stack([-theta.cos(), -theta.sin()], dim=-1)


FAR = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # the opposite corner: no data within 0.7


def posterior_mean(prior_mean: str) -> tuple[torch.Tensor, torch.Tensor]:
    X, Y = trade_off_observations()
    model = fit_models(X, Y, prior_mean=prior_mean)
    with torch.no_grad():
        return model.posterior(FAR).mean, Y


def test_worst_prior_mean_predicts_the_unexplored_no_better_than_the_worst_seen() -> None:
    far, Y = posterior_mean("worst")
    worst = Y.min(0).values
    span = Y.max(0).values - worst
    assert ((far - worst).abs() <= 0.1 * span).all(), (far, worst)
    assert not bool(pareto_mask(torch.cat([Y, far]))[-1])  # some observation dominates the prediction


def test_fitted_prior_mean_predicts_an_unexplored_point_beyond_the_front() -> None:
    far, Y = posterior_mean("fitted")
    assert bool(pareto_mask(torch.cat([Y, far]))[-1])  # what draws the acquisition to empty corners
    assert (far > Y.min(0).values + 0.3 * (Y.max(0).values - Y.min(0).values)).all()


def test_worst_prior_mean_is_pinned_not_fitted() -> None:
    X, Y = trade_off_observations()
    for gp, y in zip(fit_models(X, Y, prior_mean="worst").models, Y.T):
        assert float(gp.mean_module.constant) == pytest.approx(float(gp.train_targets.min()))
        assert not gp.mean_module.raw_constant.requires_grad
        standardised_worst = (y.min() - y.mean()) / y.std()
        assert float(gp.mean_module.constant) == pytest.approx(float(standardised_worst), rel=1e-6)


def test_auto_pins_the_prior_from_three_objectives_on() -> None:
    assert [resolve_prior_mean(m, "auto") for m in (1, 2, 3, 4)] == ["fitted", "fitted", "worst", "worst"]
    assert resolve_prior_mean(2, "worst") == "worst" and resolve_prior_mean(4, "fitted") == "fitted"
    X, Y = trade_off_observations()
    assert all(gp.mean_module.raw_constant.requires_grad for gp in fit_models(X, Y).models)  # 2 objectives
    Y3 = torch.cat([Y, Y[:, :1] * 0.5], dim=-1)
    assert all(not gp.mean_module.raw_constant.requires_grad for gp in fit_models(X, Y3).models)


def test_auto_is_the_default_prior_mean() -> None:
    assert OptimizerSpec().prior_mean == "auto"
    with pytest.raises(ValueError):
        OptimizerSpec(prior_mean="best")


def test_a_failed_fit_keeps_the_worst_prior_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmmo.optimizer import gp as gp_module

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no fit")

    monkeypatch.setattr(gp_module, "fit_gpytorch_mll", fail)
    X, Y = trade_off_observations()
    for gp in fit_models(X, Y, prior_mean="worst").models:  # the prior hyperparameters, and still pinned
        assert float(gp.mean_module.constant) == pytest.approx(float(gp.train_targets.min()))
        assert not gp.mean_module.raw_constant.requires_grad
