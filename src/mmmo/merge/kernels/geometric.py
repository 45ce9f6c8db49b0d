"""The interpolating methods (`mmmo.merge.methods.interpolate`) over the Merger's sources: each model rebuilt as base +
task vector, the angles of slerp and nuslerp measured once per search, and each candidate written into the live
tensor.

A search moves slerp's `t` and nuslerp's weights; the angles between the sources stay, so after the first merge
a candidate of either is one elementwise pass (base and task vectors read once, the tensor written once), run over
cache-sized chunks on CPU. multislerp, model_stock and karcher recompute everything per merge, as mergekit does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.methods.interpolate import (
    NuslerpGeometry,
    SlerpGeometry,
    karcher,
    model_stock,
    multislerp,
    nuslerp,
    nuslerp_geometry,
    nuslerp_t,
    slerp_coefficients,
    slerp_dtype,
    slerp_geometry,
)
from mmmo.merge.methods.plan import CHUNK
from mmmo.merge.methods.registry import MethodInfo
from mmmo.runtime.errors import MmmoError


@dataclass
class GeometricMerge:
    """One Merger's interpolating method: `merge_into` per tensor; keeps the angles of slerp and nuslerp by
    tensor name (a few scalars each, or one per row)."""

    info: MethodInfo
    with_base: bool  # False: mergekit's merge without base_model (the base folder is only the task vectors' origin)
    chunk: int = CHUNK
    _angles: dict[tuple[str, bool, bool], SlerpGeometry | NuslerpGeometry] = field(default_factory=dict)
    _ws: Workspace = field(default_factory=Workspace)

    def merge_into(
        self, out: Tensor, name: str, base: Tensor, deltas: Tensor, weights: Sequence[float],
        params: Mapping[str, float],
    ) -> Tensor:
        """Write the merge of one tensor into `out` (base's shape); return |merged - base|_1, a float64 0-d tensor.

        `deltas`: [n_models, *base.shape] task vectors; `weights`: one per model (ignored by methods without);
        `params`: the method's parameters, every one given."""
        method = self.info.name
        if method == "slerp":
            return self._slerp(out, name, base, deltas[0], params["t"])
        if method == "nuslerp":
            return self._nuslerp(out, name, base, deltas, weights, params)
        merged = self._merged(name, base, deltas, weights, params)
        total = torch.zeros((), dtype=torch.float64, device=out.device)
        o, m, b = out.view(-1), merged.reshape(-1), base.reshape(-1)
        for s, e in self._chunks(b):  # out = merged, and |out - base|_1 chunk by chunk (no float64 copies)
            total += self._write(o[s:e], m[s:e], b[s:e])
        return total

    def _merged(self, name: str, base: Tensor, deltas: Tensor, weights: Sequence[float],
                params: Mapping[str, float]) -> Tensor:
        """The merge of multislerp, model_stock or karcher, in the task vectors' dtype."""
        method = self.info.name
        if method == "multislerp" and self.with_base and len(deltas) > 1:  # on the task vectors: no models needed
            merged = multislerp(deltas, weights, normalize_weights=bool(params["normalize_weights"]),
                                eps=params["eps"], name=name)
            return base + merged
        models = [base + d for d in deltas]  # the models, as mergekit reads them
        if method == "model_stock":
            return model_stock(base.to(deltas.dtype), list(deltas), models, filter_wise=bool(params["filter_wise"]))
        if method == "karcher":
            points = [*models, base.to(deltas.dtype)] if self.with_base else models
            return karcher(points, max_iter=int(params["max_iter"]), tol=params["tol"])
        if method != "multislerp":
            raise MmmoError(f"{method} is not an interpolating method")
        if len(models) == 1:
            return models[0]
        points = deltas if self.with_base else torch.stack(models)
        merged = multislerp(points, weights, normalize_weights=bool(params["normalize_weights"]),
                            eps=params["eps"], name=name)
        return base + merged if self.with_base else merged

    def _slerp(self, out: Tensor, name: str, base: Tensor, delta: Tensor, t: float) -> Tensor:
        """slerp from the base (t = 0) to base + delta, one pass once the angle is known."""
        key = (name, False, False)
        geo = self._angles.get(key)
        if geo is None:
            geo = self._angles[key] = slerp_geometry(base, base + delta)
        assert isinstance(geo, SlerpGeometry)
        coef_a, coef_b = slerp_coefficients(t, geo)
        dtype = slerp_dtype(delta.dtype)
        b, d, o = base.reshape(-1), delta.reshape(-1), out.view(-1)
        total = torch.zeros((), dtype=torch.float64, device=out.device)
        for s, e in self._chunks(b):
            x, c = b[s:e], e - s
            y = torch.add(x, d[s:e], out=self._ws.get("model", c, d.dtype, d.device)).to(dtype)
            ax = torch.mul(x.to(dtype), coef_a, out=self._ws.get("ax", c, dtype, d.device))
            merged = ax.add_(torch.mul(y, coef_b, out=self._ws.get("by", c, dtype, d.device)))  # coef_a·x + coef_b·y
            total += self._write(o[s:e], merged, x)
        return total

    def _nuslerp(self, out: Tensor, name: str, base: Tensor, deltas: Tensor, weights: Sequence[float],
                 params: Mapping[str, float]) -> Tensor:
        """nuslerp of the two task vectors (with a base) or the two models, at t = w1 / (w0 + w1)."""
        row_wise, flatten = bool(params["nuslerp_row_wise"]), bool(params["nuslerp_flatten"])
        t = nuslerp_t([float(weights[0]), float(weights[1])])
        b = base.to(deltas.dtype)
        if not flatten:  # angles per row (or column): the whole tensor at once
            v0, v1 = (deltas[0], deltas[1]) if self.with_base else (b + deltas[0], b + deltas[1])
            merged = nuslerp(t, v0, v1, row_wise=row_wise, flatten=False)
            merged = b + merged if self.with_base else merged
            out.copy_(merged)
            return _abs_diff_sum(merged, base)
        key = (name, row_wise, flatten)
        geo = self._angles.get(key)
        if geo is None:
            v0, v1 = (deltas[0], deltas[1]) if self.with_base else (b + deltas[0], b + deltas[1])
            geo = self._angles[key] = nuslerp_geometry(v0.reshape(-1), v1.reshape(-1))
        assert isinstance(geo, NuslerpGeometry)
        colinear = bool(geo.colinear.item())  # one angle for the flattened tensor: one branch of mergekit's where
        s0, s1 = torch.sin((1 - t) * geo.theta), torch.sin(t * geo.theta)
        bf, d0, d1, o = b.reshape(-1), deltas[0].reshape(-1), deltas[1].reshape(-1), out.view(-1)
        total = torch.zeros((), dtype=torch.float64, device=out.device)
        for s, e in self._chunks(bf):
            x, c, dt, dev = bf[s:e], e - s, deltas.dtype, deltas.device
            v0, v1 = d0[s:e], d1[s:e]
            if not self.with_base:  # the models themselves
                v0 = torch.add(x, v0, out=self._ws.get("v0", c, dt, dev))
                v1 = torch.add(x, v1, out=self._ws.get("v1", c, dt, dev))
            if colinear:  # (1 - t)·v0 + t·v1
                mix = torch.mul(v0, 1 - t, out=self._ws.get("a", c, dt, dev))
                mix.add_(torch.mul(v1, t, out=self._ws.get("b", c, dt, dev)))
            else:  # (sin((1 - t)θ)·v0 + sin(tθ)·v1) / sin θ
                mix = torch.mul(v0, s0, out=self._ws.get("a", c, dt, dev))
                mix.add_(torch.mul(v1, s1, out=self._ws.get("b", c, dt, dev))).div_(geo.sin_theta)
            merged = mix.add_(x) if self.with_base else mix  # base + mix, the same sum
            total += self._write(o[s:e], merged, x)
        return total

    def _write(self, out: Tensor, merged: Tensor, base: Tensor) -> Tensor:
        """out = merged (cast to out's dtype); return |out - base|_1 in float64."""
        out.copy_(merged)
        diff = torch.sub(out, base, out=self._ws.get("diff", out.numel(), out.dtype, out.device))
        return torch.sum(diff.abs_(), dtype=torch.float64)

    def _chunks(self, flat: Tensor) -> list[tuple[int, int]]:
        """(start, end) of each chunk: cache-sized on CPU, the whole tensor elsewhere."""
        n = flat.numel()
        step = self.chunk if flat.device.type == "cpu" else max(1, n)
        return [(s, min(n, s + step)) for s in range(0, n, step)]


def _abs_diff_sum(merged: Tensor, base: Tensor) -> Tensor:
    """|merged - base|_1 accumulated in float64."""
    return torch.sum((merged.to(torch.float64) - base.to(torch.float64)).abs(), dtype=torch.float64)
