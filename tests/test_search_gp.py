"""The GP surrogates' prior mean: what the search assumes about configurations far from every evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from mmmo.optimizer.gp import fit_models, fit_models_with_prior, resolve_prior_mean
from mmmo.optimizer.pareto import pareto_mask
from mmmo.optimizer.prior import initial_design_errors, initial_design_point_errors, leave_one_out
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


def test_a_fixed_prior_is_kept_auto_pins_by_count_and_forecast_asks_the_data() -> None:
    assert resolve_prior_mean(4, "worst") == "worst" and resolve_prior_mean(2, "fitted") == "fitted"
    assert [resolve_prior_mean(m, "auto") for m in (1, 2, 3, 4)] == ["fitted", "fitted", "worst", "worst"]
    assert [resolve_prior_mean(m, "forecast") for m in (1, 2, 3, 4)] == ["fitted", "fitted", None, None]
    X, Y = trade_off_observations()
    for kind in ("worst", "fitted"):
        gps = fit_models_with_prior(X, Y, prior_mean=kind)
        model, choice = gps.model, gps.prior
        assert list(gps.by_prior) == [kind]
        assert choice.kind == kind and choice.evidence == {} and choice.describe() == kind
        pinned = [not gp.mean_module.raw_constant.requires_grad for gp in model.models]
        assert pinned == [kind == "worst"] * 2


def test_leave_one_out_holds_each_trial_out_once() -> None:
    assert [(k.tolist(), o.tolist()) for k, o in leave_one_out(3)] == [([1, 2], [0]), ([0, 2], [1]), ([0, 1], [2])]
    assert leave_one_out(1) == []


def history_with_far_batch(far: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """An initial design of 8 points on [0, 0.3]^2 whose first two objectives trade off (the third their mean), (-cos t, -sin t) with t growing
    along x0 (maximised: their average lies beyond their front, as on DTLZ2), and a search batch of 4 points far
    away (x in [0.8, 1]^2) that scored what the search found where it had no data: "better" (beyond the front
    on both objectives: real gains) or "worst" (each objective's worst: no gain)."""
    g = torch.Generator().manual_seed(0)
    x0 = 0.3 * torch.rand(8, 2, generator=g, dtype=torch.float64)
    t = (math.pi / 2) * x0[:, :1] / 0.3
    y0 = torch.cat([-torch.cos(t), -torch.sin(t)], dim=-1)
    x1 = 0.8 + 0.2 * torch.rand(4, 2, generator=g, dtype=torch.float64)
    value = torch.tensor([-0.4, -0.4], dtype=torch.float64) if far == "better" else y0.min(0).values
    y1 = value.expand(4, 2) + 0.01 * torch.randn(4, 2, generator=g, dtype=torch.float64)
    Y = torch.cat([y0, y1])
    return torch.cat([x0, x1]), torch.cat([Y, Y.mean(-1, keepdim=True)], -1), [0] * 8 + [1] * 4


def test_forecast_scores_each_initial_trial_forecast_from_the_other_initial_ones() -> None:
    X, Y, batches = history_with_far_batch("worst")
    ref = torch.tensor([-1.2, -1.2, -1.2], dtype=torch.float64)
    gps = fit_models_with_prior(X, Y, prior_mean="forecast", batches=batches, ref_point=ref.tolist())
    models = {k: m.models for k, m in gps.by_prior.items()}
    errors = initial_design_errors(models, Y, torch.arange(8), ref)
    assert gps.prior.evidence == pytest.approx(errors)  # the far batch (batch 1) is never held out
    assert gps.prior.kind == min(errors, key=errors.get) and gps.model is gps.by_prior[gps.prior.kind]
    assert gps.prior.describe().startswith(f"{gps.prior.kind} (forecast error ")
    # point by point: one error per initial trial, each a CRPS (>= 0), summing to what the rule compared
    per_point = initial_design_point_errors(models, Y, torch.arange(8), ref)
    assert {k: len(v) for k, v in per_point.items()} == {"fitted": 8, "worst": 8}
    assert all(e >= 0 for v in per_point.values() for e in v)
    assert {k: sum(v) for k, v in per_point.items()} == errors
    # without batch indices every trial is taken as initial
    every = fit_models_with_prior(X, Y, prior_mean="forecast", ref_point=ref.tolist())
    assert every.prior.evidence == pytest.approx(initial_design_errors(models, Y, torch.arange(12), ref))


def concave_design() -> tuple[torch.Tensor, torch.Tensor]:
    """12 initial points whose first two objectives trade off along a concave front, (-cos t, -sin t) (maximised), t
    growing along x0: any point between two others lies beyond their front, as on DTLZ2."""
    x = torch.quasirandom.SobolEngine(2, scramble=True, seed=1).draw(12, dtype=torch.float64)
    t = (math.pi / 2) * x[:, :1]
    return x, torch.cat([-torch.cos(t), -torch.sin(t)], dim=-1) - 0.5 * x[:, 1:]


def with_mean(y: torch.Tensor) -> torch.Tensor:
    """`y [n, 2]` and a third objective, their mean: "forecast" asks the data from 3 objectives on."""
    return torch.cat([y, y.mean(-1, keepdim=True)], -1)


def test_forecast_pins_the_prior_where_the_unexplored_was_no_better_than_the_worst() -> None:
    x, y = concave_design()
    y = torch.where(torch.arange(12).unsqueeze(-1) % 3 == 0, y, y.min(0).values)  # most points score the worst
    choice = fit_models_with_prior(x, with_mean(y), prior_mean="forecast", ref_point=[-2.0, -2.0, -2.0]).prior
    assert choice.kind == "worst" and choice.evidence["worst"] < choice.evidence["fitted"]


def test_forecast_keeps_the_fitted_prior_where_the_unexplored_filled_the_front() -> None:
    x, y = concave_design()
    choice = fit_models_with_prior(x, with_mean(y), prior_mean="forecast", ref_point=[-2.0, -2.0, -2.0]).prior
    assert choice.kind == "fitted" and choice.evidence["fitted"] < choice.evidence["worst"]


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
