"""Pareto mask, hypervolume and reference point on hand-worked examples."""

from __future__ import annotations

import pytest
import torch

from mmmo.optimizer.pareto import hypervolume, infer_ref_point, pareto_mask

T = torch.float64


def test_pareto_mask_keeps_duplicates_and_drops_weakly_dominated() -> None:
    Y = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.5, 0.5], [1.0, 2.0], [2.0, 0.5]], dtype=T)
    # (2, 0.5) is weakly dominated by (2, 1); the two copies of (1, 2) are both on the front.
    assert pareto_mask(Y).tolist() == [True, True, False, True, False]
    assert pareto_mask(torch.zeros(0, 2, dtype=T)).tolist() == []


def test_hypervolume_2d_3d_1d_and_outside_ref() -> None:
    # Staircase (1, 2), (2, 1) above (0, 0): 1*2 + (2-1)*1 = 3.
    assert hypervolume(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=T), [0.0, 0.0]) == pytest.approx(3.0)
    # Unit cube plus a (2, .5, .5) box: 1 + 0.5 - overlap 0.25 = 1.25.
    Y3 = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.5, 0.5]], dtype=T)
    assert hypervolume(Y3, [0.0, 0.0, 0.0]) == pytest.approx(1.25)
    assert hypervolume(torch.tensor([[0.3], [0.7]], dtype=T), [0.5]) == pytest.approx(0.2)
    # A point that does not beat the reference point in every objective adds nothing.
    assert hypervolume(torch.tensor([[5.0, -1.0]], dtype=T), [0.0, 0.0]) == 0.0
    assert hypervolume(torch.tensor([[1.0, 1.0], [5.0, -1.0]], dtype=T), [0.0, 0.0]) == pytest.approx(1.0)


def test_infer_ref_point_nadir_minus_tenth_of_range_with_zero_range_guard() -> None:
    ref = infer_ref_point(torch.tensor([[0.0, 10.0], [1.0, 20.0]], dtype=T))
    torch.testing.assert_close(ref, torch.tensor([-0.1, 9.0], dtype=T))
    # Constant first objective: the margin is 0.1 * |nadir| = 0.5.
    ref = infer_ref_point(torch.tensor([[5.0, 0.0], [5.0, 1.0]], dtype=T))
    torch.testing.assert_close(ref, torch.tensor([4.5, -0.1], dtype=T))
    # A single point at the origin: the margin falls back to 0.1.
    torch.testing.assert_close(
        infer_ref_point(torch.zeros(1, 2, dtype=T)), torch.tensor([-0.1, -0.1], dtype=T)
    )
