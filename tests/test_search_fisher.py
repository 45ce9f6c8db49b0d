"""Fisher screening: keep the candidates with the lowest summed information (highest variance)."""

from __future__ import annotations

import torch

from mmmo.optimizer.fisher import fisher_scores, fisher_screen, screen_by_score
from mmmo.optimizer.gp import fit_models

T = torch.float64


def test_screen_by_score_orders_ascending_and_skips_duplicates() -> None:
    X = torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]], dtype=T)
    scores = torch.tensor([3.0, 1.0, 2.0, 0.5], dtype=T)
    assert screen_by_score(scores, X, 2).tolist() == [3, 1]
    # Candidate 3 was already evaluated; candidate 2 duplicates candidate 1.
    X_dup = X.clone()
    X_dup[2] = X_dup[1]
    assert screen_by_score(scores, X_dup, 2, X_seen=X[3:4]).tolist() == [1, 0]
    assert screen_by_score(scores, X_dup, 4, X_seen=X[3:4]).tolist() == [1, 0]  # only 2 distinct new ones


def _gp_near_origin() -> tuple[object, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = 0.2 * torch.rand(8, 2, generator=g, dtype=T)
    Y = torch.stack([X.sum(-1), 100.0 * (X[:, 0] - X[:, 1])], -1)  # very different raw scales
    return fit_models(X, Y), X


def test_fisher_scores_sum_standardised_inverse_variances() -> None:
    model, _ = _gp_near_origin()
    cand = torch.tensor([[0.1, 0.1], [0.9, 0.9]], dtype=T)
    expected = torch.zeros(2, dtype=T)
    for sub in model.models:  # type: ignore[attr-defined]
        var = sub.posterior(cand).variance.squeeze(-1) / sub.outcome_transform.stdvs.squeeze() ** 2
        expected += 1.0 / var
    torch.testing.assert_close(fisher_scores(model, cand), expected)  # type: ignore[arg-type]
    raw = fisher_scores(model, cand, standardized=False)  # type: ignore[arg-type]
    assert not torch.allclose(raw, expected)
    s = fisher_scores(model, cand)  # type: ignore[arg-type]
    assert s[0] > s[1]  # near the data the GP is sure: more information


def test_fisher_screen_keeps_far_candidates_and_drops_seen_points() -> None:
    model, X = _gp_near_origin()
    cand = torch.tensor(
        [[0.1, 0.1], [0.9, 0.9], [0.05, 0.15], [0.1, 0.9], [0.9, 0.9], X[0].tolist()], dtype=T
    )  # 4 repeats 1; 5 is an evaluated point
    kept = fisher_screen(model, cand, 2, X).tolist()  # type: ignore[arg-type]
    assert sorted(kept) == [1, 3]
    kept = fisher_screen(model, cand, 10, X).tolist()  # type: ignore[arg-type]
    assert sorted(kept) == [0, 1, 2, 3]
    assert kept[:2] in ([1, 3], [3, 1])
