"""Acquisition units: the reference point and the posterior must both be in raw objective units.

The paper's code mixes raw and z-scored units, which silently zeroes the hypervolume improvement.
Objectives here sit far from unit scale (Y * 1000 + 500 and Y * 1000 - 5000) so that any such mix shows.
"""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement as QLogNEHVI

from mmmo.optimizer.acquisition import AcqBudget, build_acquisition, propose_hvi, propose_hvi_pooled
from mmmo.optimizer.gp import JITTER_WARNING, fit_models
from mmmo.optimizer.pareto import infer_ref_point
from mmmo.runtime.quiet import expected_warnings

T = torch.float64
CHEAP = AcqBudget(num_restarts=2, raw_samples=64, mc_samples=32, maxiter=50)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """10 points with x1 <= 0.6; both objectives grow with x1, so (0.5, 0.95) improves the front."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(10, 2, generator=g, dtype=T) * torch.tensor([1.0, 0.6], dtype=T)
    Y_unit = torch.stack([X[:, 0] + X[:, 1], 1.0 - X[:, 0] + X[:, 1]], -1)
    return X, Y_unit


X_IMPROVING = torch.tensor([[[0.5, 0.95]]], dtype=T)


def _zscore(Y: torch.Tensor) -> torch.Tensor:
    return (Y - Y.mean(0)) / Y.std(0)


@pytest.mark.parametrize("kind", ["qehvi", "qlognehvi"])
def test_raw_units_give_positive_improvement_and_unit_mixing_gives_none(
    data: tuple[torch.Tensor, torch.Tensor], kind: str
) -> None:
    X, Y_unit = data
    for Y in (Y_unit * 1000 + 500, Y_unit * 1000 - 5000):
        model = fit_models(X, Y)
        value = build_acquisition(model, X, None, kind=kind, Y_baseline=Y)(X_IMPROVING).item()
        # The improving point adds an area of order (0.1 * 1000)^2 raw units: clearly > 0 (log > 0).
        assert value > (1e3 if kind == "qehvi" else 0.0)

    # Mistake 1 (the paper's): GP on hand-z-scored objectives, reference point from raw objectives.
    Y = Y_unit * 1000 + 500
    z_model = fit_models(X, _zscore(Y))
    mixed = build_acquisition(z_model, X, infer_ref_point(Y), kind=kind)(X_IMPROVING).item()
    # Mistake 2: raw-unit GP (Standardize outcome transform) but a z-scored-by-hand reference point.
    Y = Y_unit * 1000 - 5000
    mixed_too = build_acquisition(fit_models(X, Y), X, infer_ref_point(_zscore(Y)), kind=kind)(
        X_IMPROVING
    ).item()
    if kind == "qehvi":
        assert mixed == 0.0 and mixed_too == 0.0
    else:
        assert mixed < -50.0 and mixed_too < -50.0  # log of a vanishing improvement


def test_proposals_are_spread_beyond_the_data_and_shift_invariant(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    X, Y_unit = data
    props = []
    for Y in (Y_unit * 1000 + 500, Y_unit * 1000 - 5000):
        props.append(propose_hvi(fit_models(X, Y), X, None, 3, seed=0, Y_baseline=Y, budget=CHEAP))
    P = props[0]
    assert P.shape == (3, 2)
    assert ((P >= 0) & (P <= 1)).all()
    assert torch.cdist(P, P, p=float("inf")).add(torch.eye(3, dtype=T)).min() > 0.05  # distinct points
    assert (P[:, 1] > 0.6).sum() >= 2  # where the improvement is, beyond every observed x1
    # Raw units throughout: shifting every objective moves the inferred reference point with it.
    torch.testing.assert_close(props[1], P)


def _random_batches(n: int, q: int, d: int, seed: int = 0) -> torch.Tensor:
    """`n` batches `[n, q, d]` of uniform points in the unit cube, seeded."""
    return torch.rand(n, q, d, generator=torch.Generator().manual_seed(seed), dtype=T)


def test_qehvi_and_single_objective_proposals(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    X, Y_unit = data
    Y = Y_unit * 1000 + 500
    model = fit_models(X, Y)
    P = propose_hvi(model, X, None, 2, kind="qehvi", seed=1, Y_baseline=Y, budget=CHEAP)
    assert P.shape == (2, 2) and ((P >= 0) & (P <= 1)).all()
    # The proposed batch is worth more, by the very acquisition it maximised, than any of 20 random batches.
    acqf = build_acquisition(model, X, None, kind="qehvi", seed=1, Y_baseline=Y, mc_samples=CHEAP.mc_samples)
    with torch.no_grad():
        proposed = acqf(P.unsqueeze(0)).item()
        random = acqf(_random_batches(20, *P.shape))
    assert proposed > random.max().item()
    P1 = propose_hvi(fit_models(X, Y[:, :1]), X, None, 2, seed=1, budget=CHEAP)  # qLogNEI fallback
    assert P1.shape == (2, 2) and ((P1 >= 0) & (P1 <= 1)).all()
    assert P1[:, 1].max() > 0.6  # the single objective also grows with x1


def test_pending_points_given_at_construction_value_as_set_afterwards_with_one_box_decomposition(
    data: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asynchronous schedule's pending points: the same acquisition values as BoTorch's `set_X_pending`
    after construction, for one box decomposition instead of two (3 objectives: one per MC sample, on the CPU)."""
    X, Y_unit = data
    Y = torch.cat([Y_unit, (X[:, :1] - X[:, 1:]) ** 2], -1) * 1000
    model = fit_models(X, Y)
    pending = _random_batches(1, 3, 2, seed=3)[0]
    built = []
    original = QLogNEHVI._set_cell_bounds
    monkeypatch.setattr(QLogNEHVI, "_set_cell_bounds", lambda self, **kw: (built.append(1), original(self, **kw)))
    torch.manual_seed(0)  # pruning the baseline draws from the global generator: the same draws for both
    afterwards = build_acquisition(model, X, None, seed=2, Y_baseline=Y, mc_samples=CHEAP.mc_samples)
    afterwards.set_X_pending(pending)
    assert len(built) == 2
    torch.manual_seed(0)
    at_construction = build_acquisition(model, X, None, seed=2, Y_baseline=Y, mc_samples=CHEAP.mc_samples,
                                        X_pending=pending)
    assert len(built) == 3
    batches = _random_batches(8, 1, 2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(at_construction(batches), afterwards(batches))
    # the pending points count: a candidate on top of one is worth less than without them
    alone = build_acquisition(model, X, None, seed=2, Y_baseline=Y, mc_samples=CHEAP.mc_samples)
    with torch.no_grad(), expected_warnings(JITTER_WARNING):  # the candidate repeats a pending point
        assert at_construction(pending[:1].unsqueeze(0)).item() < alone(pending[:1].unsqueeze(0)).item()
    # the pooled greedy choice too: one build for its first point, the pending points given once
    built.clear()
    pool = _random_batches(1, 6, 2, seed=5)[0]
    X_first, _ = propose_hvi_pooled(model, X, None, 1, pool, optimize=False, seed=2, budget=CHEAP, Y_baseline=Y,
                                    X_pending=pending)
    assert len(built) == 1 and X_first.shape == (1, 2)
