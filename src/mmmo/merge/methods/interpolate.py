"""Merges that interpolate models rather than sum task vectors, written as mergekit 0.1.5 computes them, one
tensor at a time (slerp.py, nuslerp.py, multislerp.py, model_stock.py, karcher.py), operation for operation, so
the same inputs give the same bits.

- `slerp`: the great-circle path from `v0` (the base, t = 0) to `v1` (t = 1), the angle taken over each whole
  tensor; lerp where the two are (anti)parallel (|cos| > 0.9995). Computed in float32 (float64 stays float64).
- `nuslerp`: slerp of two vectors (the task vectors with a base, else the models) at t = w1 / (w0 + w1), over the
  flattened tensor (default), its rows, or (row_wise) its columns; in the inputs' dtype.
- `multislerp`: many points on the sphere: each point's direction is moved to the tangent space at the weighted
  mean direction, averaged there, mapped back, and scaled by the weighted mean norm.
- `model_stock`: the base moved towards the models' average by t = k·cos / (1 + (k-1)·cos), cos the mean pairwise
  cosine of the task vectors (per row with `filter_wise`).
- `karcher`: the Riemannian (Karcher) mean of the directions by fixed-point iteration, times the mean norm.

slerp and nuslerp are split where a search reuses work: the angle between the sources (`*_geometry`, fixed for a
search) and the mix for one candidate's `t`, an elementwise pass that may run chunk by chunk with the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.runtime.errors import MmmoError

SLERP_CHUNK = 1024 * 1024  # mergekit's chunk: its norms are norms of per-chunk norms, its dot a sum of chunk dots
SLERP_DOT_THRESHOLD = 0.9995  # above this |cos|, slerp is lerp
SLERP_EPS = 1e-8  # norms below this count as 1
NUSLERP_EPS = 1e-8  # nuslerp lerps where 1 - cos² <= eps²
NUSLERP_NORM_MIN = 1e-7  # nuslerp's floor on a norm before dividing by it
MODEL_STOCK_NORM_MIN = 1e-6  # model_stock's floor on a product of norms
MODEL_STOCK_SINGULAR = 1e-6  # |1 + (k-1)·cos| below this keeps the base


def slerp_dtype(dtype: torch.dtype) -> torch.dtype:
    """slerp's and karcher's compute dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- slerp


@dataclass(frozen=True)
class SlerpGeometry:
    """The angle between slerp's two ends, as 0-d tensors in the compute dtype."""

    linear: Tensor  # bool: lerp instead (|cos| above the threshold)
    theta: Tensor
    sin_theta: Tensor


def slerp_geometry(v0: Tensor, v1: Tensor) -> SlerpGeometry:
    """The angle between `v0` and `v1` (any shape, same numel), as mergekit's chunked slerp measures it."""
    dtype = slerp_dtype(v0.dtype)
    a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    starts = range(0, a.shape[1], SLERP_CHUNK)

    def norm(x: Tensor) -> Tensor:  # a norm of chunk norms, as mergekit's
        parts = [torch.linalg.vector_norm(x[:, s : s + SLERP_CHUNK].to(dtype), dim=1, keepdim=True) for s in starts]
        n = torch.linalg.vector_norm(torch.stack(parts), dim=0)
        return torch.where(n > SLERP_EPS, n, 1)

    norm_a, norm_b = norm(a), norm(b)
    dots = [
        (a[:, s : s + SLERP_CHUNK].to(dtype) / norm_a * (b[:, s : s + SLERP_CHUNK].to(dtype) / norm_b)).sum(
            dim=1, keepdim=True
        )
        for s in starts
    ]
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > SLERP_DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    return SlerpGeometry(linear.reshape(()), theta.reshape(()), torch.sin(theta).reshape(()))


def slerp_coefficients(t: float, geo: SlerpGeometry) -> tuple[Tensor, Tensor]:
    """(coef_a, coef_b), 0-d in the compute dtype: the merge is coef_a·v0 + coef_b·v1."""
    tt = torch.tensor(t, dtype=geo.theta.dtype, device=geo.theta.device)
    coef_a = torch.where(geo.linear, 1 - tt, torch.sin((1 - tt) * geo.theta) / geo.sin_theta)
    coef_b = torch.where(geo.linear, tt, torch.sin(tt * geo.theta) / geo.sin_theta)
    return coef_a, coef_b


def slerp(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """mergekit's slerp of one tensor: `v0` at t = 0, `v1` at t = 1; in `v0`'s shape and dtype."""
    if v0.numel() == 0:
        return v0.clone()
    dtype = slerp_dtype(v0.dtype)
    coef_a, coef_b = slerp_coefficients(t, slerp_geometry(v0, v1))
    return (coef_a * v0.to(dtype) + coef_b * v1.to(dtype)).to(v0.dtype)


# ---- nuslerp


def nuslerp_t(weights: Sequence[float]) -> float:
    """nuslerp's t from the two models' weights: w1 / (w0 + w1), 0.5 where the sum is below 1e-6."""
    total = weights[0] + weights[1]
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def nuslerp_view(x: Tensor, *, row_wise: bool, flatten: bool) -> Tensor:
    """The layout nuslerp measures angles in: flat, else the last dim (the first with `row_wise`) as vectors."""
    if flatten:
        return x.reshape(-1)
    return x.transpose(0, -1) if row_wise else x


@dataclass(frozen=True)
class NuslerpGeometry:
    """The angle per vector of nuslerp's view, shaped [..., 1] in the inputs' dtype."""

    colinear: Tensor
    theta: Tensor
    sin_theta: Tensor


def nuslerp_geometry(v0: Tensor, v1: Tensor) -> NuslerpGeometry:
    """The angles between `v0` and `v1`, both already in nuslerp's view (`nuslerp_view`)."""

    def unit(x: Tensor) -> Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=NUSLERP_NORM_MIN)

    cos_theta = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos_theta.square()) <= NUSLERP_EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    return NuslerpGeometry(colinear, theta, torch.sin(theta))


def nuslerp_mix(t: float, geo: NuslerpGeometry, v0: Tensor, v1: Tensor) -> Tensor:
    """nuslerp of `v0` and `v1` (in the view, or any slice of it along which `geo` broadcasts) at `t`."""
    result = (torch.sin((1 - t) * geo.theta) * v0 + torch.sin(t * geo.theta) * v1) / geo.sin_theta
    return torch.where(geo.colinear, (1 - t) * v0 + t * v1, result)


def nuslerp(t: float, v0: Tensor, v1: Tensor, *, row_wise: bool = False, flatten: bool = True) -> Tensor:
    """mergekit's nuslerp of two tensors of one shape, in their dtype."""
    a = nuslerp_view(v0, row_wise=row_wise, flatten=flatten)
    b = nuslerp_view(v1, row_wise=row_wise, flatten=flatten)
    result = nuslerp_mix(t, nuslerp_geometry(a, b), a, b)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(v0.shape)


# ---- multislerp


def multislerp(points: Tensor, weights: Sequence[float], *, normalize_weights: bool = True,
               eps: float = 1e-8, name: str = "") -> Tensor:
    """mergekit's multislerp of `points` ([n, *shape]: the task vectors with a base, else the models), in their
    dtype and shape [*shape], before the base is added back. MmmoError where the weighted mean direction is ~0
    with three or more points (mergekit refuses those too)."""
    n = points.shape[0]
    flat = points.reshape(n, -1)
    w = torch.tensor(list(weights), dtype=points.dtype, device=points.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if n == 2:  # mergekit's fallback: the weighted sum
            return (points[0] * w[0] + points[1] * w[1]).reshape(points.shape[1:])
        raise MmmoError(
            f"multislerp: the weighted mean direction of tensor {name or '?'} is zero (antipodal task vectors "
            "whose weights cancel); use other weights"
        )
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangent = ((units - dots * mean) * w.view(-1, 1)).sum(0)  # the weighted mean in the tangent space at `mean`
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)  # exp map
    avg_norm = (norms.squeeze(-1) * w).sum()
    return (result * avg_norm).view(points.shape[1:])


# ---- model_stock


def model_stock(base: Tensor, offsets: Sequence[Tensor], models: Sequence[Tensor], *,
                filter_wise: bool = False) -> Tensor:
    """mergekit's model_stock of one tensor: `offsets` are the task vectors (model - base), `models` the models;
    in `base`'s shape and dtype."""
    out_shape = base.shape
    w0 = base
    if filter_wise:
        if base.dim() == 1:
            w0, offsets, models = base.unsqueeze(0), [o.unsqueeze(0) for o in offsets], [m.unsqueeze(0) for m in models]
    else:
        w0, offsets, models = base.reshape(-1), [o.reshape(-1) for o in offsets], [m.reshape(-1) for m in models]
    norms = [torch.norm(o, dim=-1) for o in offsets]
    cos_thetas = [
        ((offsets[i] * offsets[j]).sum(dim=-1) / (norms[i] * norms[j]).clamp(min=MODEL_STOCK_NORM_MIN)).clamp(-1, 1)
        for i in range(len(offsets)) for j in range(i + 1, len(offsets))
    ]
    cos_theta = torch.stack(cos_thetas).mean(dim=0).unsqueeze(-1)
    k = len(models)
    denominator = 1 + (k - 1) * cos_theta
    singular = denominator.abs() < MODEL_STOCK_SINGULAR  # no finite estimate: keep the base
    t = torch.where(
        singular, torch.zeros_like(cos_theta),
        (k * cos_theta) / torch.where(singular, torch.ones_like(denominator), denominator),
    )
    total = models[0] + 0  # mergekit's sum() starts from 0
    for m in models[1:]:
        total = total + m
    return (t * (total / k) + (1 - t) * w0).reshape(out_shape)


# ---- karcher


def karcher(points: Sequence[Tensor], *, max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """mergekit's Karcher mean of `points` (the models, equally weighted): the mean direction on the unit sphere,
    by at most `max_iter` steps along the mean log map, times the mean norm; in the points' dtype."""
    if len(points) == 1:
        return points[0]
    alphas = [1.0 / len(points)] * len(points)
    dtype = slerp_dtype(points[0].dtype)
    norms = [torch.linalg.vector_norm(p.to(dtype)) for p in points]
    units = [torch.zeros_like(p) if n.item() == 0.0 else (p / n).to(p.dtype) for p, n in zip(points, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum((p * 0 for p in points[1:]), points[0] * 0)
    alpha_sum = sum(alphas[i] for i in valid)
    weights = [alphas[i] / alpha_sum for i in valid]
    valid_units = [units[i] for i in valid]

    mean = torch.zeros_like(valid_units[0])
    for a, u in zip(weights, valid_units):
        mean += a * u
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = valid_units[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(weights, valid_units):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if tangent_norm.item() < tol:
            break
        mean = (torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = alphas[0] * norms[0]
    for a, n in zip(alphas[1:], norms[1:]):
        scale = scale + a * n
    return scale * mean
