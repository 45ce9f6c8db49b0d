"""Pareto front, hypervolume and reference point, all for maximisation."""

from __future__ import annotations

import torch
from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning
from torch import Tensor

REF_POINT_MARGIN = 0.1


def pareto_mask(Y: Tensor) -> Tensor:
    """Boolean `[n]` mask of the non-dominated rows of `Y [n, m]` (maximisation).

    Identical rows do not dominate each other, so every copy of a Pareto-optimal point is kept:
    two trials that scored the same both belong on the front.
    """
    if Y.dim() != 2:
        raise ValueError(f"Y must be [n, m], got shape {list(Y.shape)}")
    if Y.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=Y.device)
    a = Y.unsqueeze(1)  # [n, 1, m]: the candidate dominator
    b = Y.unsqueeze(0)  # [1, n, m]: the point it may dominate
    dominates = (a >= b).all(-1) & (a > b).any(-1)  # [i, j]: row i dominates row j
    return ~dominates.any(0)


def hypervolume(Y: Tensor, ref_point: Tensor | list[float]) -> float:
    """Exact hypervolume dominated by `Y [n, m]` above `ref_point` (maximisation); 0 if nothing beats it."""
    ref = torch.as_tensor(ref_point, dtype=Y.dtype, device=Y.device)
    if Y.dim() != 2 or Y.shape[-1] != ref.shape[-1]:
        raise ValueError(
            f"Y {list(Y.shape)} and ref_point {list(ref.shape)} disagree on the number of objectives"
        )
    Y = Y[(Y > ref).all(-1)]
    if Y.shape[0] == 0:
        return 0.0
    if Y.shape[-1] == 1:
        return float((Y.max() - ref[0]).item())
    return float(DominatedPartitioning(ref_point=ref, Y=Y).compute_hypervolume().item())


def infer_ref_point(Y: Tensor, margin: float = REF_POINT_MARGIN) -> Tensor:
    """Nadir minus `margin` x range per objective; a zero range uses `margin` x max(|nadir|, 1) instead."""
    if Y.dim() != 2 or Y.shape[0] == 0:
        raise ValueError("need at least one observed point to infer a reference point")
    nadir = Y.min(0).values
    span = Y.max(0).values - nadir
    fallback = nadir.abs().clamp_min(1.0)
    span = torch.where(span > 0, span, fallback)
    return nadir - margin * span


def hypervolume_contributions(Y: Tensor, ref_point: Tensor | list[float]) -> list[float]:
    """Per row of `Y [n, m]`: the hypervolume lost if that row alone were removed (exclusive contribution).

    A dominated row, or one of two identical rows, contributes 0: the others still cover its volume.
    """
    total = hypervolume(Y, ref_point)
    keep = torch.ones(Y.shape[0], dtype=torch.bool, device=Y.device)
    out = []
    for i in range(Y.shape[0]):
        keep[i] = False
        out.append(max(0.0, total - hypervolume(Y[keep], ref_point)))
        keep[i] = True
    return out
