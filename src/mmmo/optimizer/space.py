"""The search space: named merge parameters in real units, mapped to and from the GP's unit cube."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.merge.methods.registry import MethodInfo, MethodParameter, method_info
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import Bounds, SearchSpec


@dataclass(frozen=True)
class SearchSpace:
    """Per-model (and per layer group) weights, densities for methods that have one, each method's searched
    method-level parameters, and, when the search chooses among two or more `methods`, the method itself.

    Dimension order: every weight (model-major, group-minor), then every density in the same order (so
    `from_unit` can reshape each to `[n_models, K]`), then each method's searched parameters (`method.param`, in
    `methods` order), then, in a mixed space, the `method` coordinate. `methods` () or one method: no method
    coordinate (a single method's space, as named before methods could be listed).

    In a mixed space the method coordinate of method i of K is the bin centre (i + 0.5) / K, and a dimension a
    method does not use (a density for linear, another method's parameter) holds a fixed inactive value (`project`
    puts both there), so the GP sees one point per configuration and no noise from values that change nothing.
    """

    model_names: tuple[str, ...]
    layer_groups: int = 1
    weight_bounds: Bounds = (0.0, 1.0)
    density_bounds: Bounds | None = None
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_names", tuple(self.model_names))
        object.__setattr__(self, "methods", tuple(self.methods))
        if not self.model_names:
            raise MmmoError("search space needs at least one model")
        if self.layer_groups < 1:
            raise MmmoError(f"layer_groups must be >= 1, got {self.layer_groups}")
        for label, b in (("weight", self.weight_bounds), ("density", self.density_bounds)):
            if b is not None and not b[0] < b[1]:
                raise MmmoError(f"{label} bounds {list(b)} are reversed or empty (need low < high)")
        for m in self.methods:
            method_info(m)  # MmmoError naming the supported methods
        if self.is_mixed and not self.searched_methods:
            raise MmmoError(f"none of the methods {', '.join(self.methods)} has anything to search")

    @classmethod
    def from_spec(cls, spec: SearchSpec) -> SearchSpace:
        """The space a validated spec searches."""
        return cls(
            model_names=tuple(spec.model_names),
            layer_groups=spec.merge.layer_groups,
            weight_bounds=tuple(spec.search_space.weight),  # type: ignore[arg-type]
            density_bounds=None if spec.density_bounds is None else tuple(spec.density_bounds),  # type: ignore[arg-type]
            methods=spec.merge.methods,
        )

    @property
    def n_models(self) -> int:
        return len(self.model_names)

    @property
    def has_density(self) -> bool:
        return self.density_bounds is not None

    @property
    def is_mixed(self) -> bool:
        """True when the method is a coordinate of the space (two or more methods)."""
        return len(self.methods) > 1

    @property
    def searched_methods(self) -> tuple[str, ...]:
        """The methods a search proposes; the others (nothing to search) are only scored once, as a reference."""
        return tuple(m for m in self.methods if is_searchable(m))

    @property
    def parameter_dims(self) -> list[tuple[str, MethodParameter]]:
        """(method, parameter) of each method-level dimension, in dimension order."""
        return [(m, p) for m in self.methods for p in method_info(m).parameters if p.searched]

    def _names_for(self, kind: str) -> list[str]:
        if self.layer_groups == 1:
            return [f"{m}.{kind}" for m in self.model_names]
        return [f"{m}.{kind}.g{j}" for m in self.model_names for j in range(self.layer_groups)]

    @property
    def names(self) -> list[str]:
        """Dimension names, in the order of the unit-cube coordinates."""
        names = self._names_for("weight") + (self._names_for("density") if self.has_density else [])
        names += [f"{m}.{p.name}" for m, p in self.parameter_dims]
        return names + (["method"] if self.is_mixed else [])

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def method_dim(self) -> int | None:
        """The index of the method coordinate (the GP's categorical dimension); None unless mixed."""
        return self.dim - 1 if self.is_mixed else None

    def bounds(self, device: torch.device | str | None = None) -> Tensor:
        """Real-unit bounds as a `[2, dim]` float64 tensor (row 0 lower, row 1 upper; the method coordinate is
        unitless, [0, 1])."""
        n_w = self.n_models * self.layer_groups
        lo = [self.weight_bounds[0]] * n_w
        hi = [self.weight_bounds[1]] * n_w
        if self.density_bounds is not None:
            lo += [self.density_bounds[0]] * n_w
            hi += [self.density_bounds[1]] * n_w
        lo += [p.low for _, p in self.parameter_dims] + [0.0] * self.is_mixed
        hi += [p.high for _, p in self.parameter_dims] + [1.0] * self.is_mixed
        return torch.tensor([lo, hi], dtype=torch.float64, device=device)

    def to_unit(self, values: Mapping[str, float] | Tensor | Sequence[float]) -> Tensor:
        """Real-unit parameters (by name, or a `[..., dim]` tensor in dimension order) to the unit cube."""
        if isinstance(values, Mapping):
            missing = [n for n in self.names if n not in values]
            if missing:
                raise MmmoError(f"parameters missing from the search space point: {', '.join(missing)}")
            x = torch.tensor([float(values[n]) for n in self.names], dtype=torch.float64)
        else:
            x = torch.as_tensor(values, dtype=torch.float64)
        if x.shape[-1] != self.dim:
            raise MmmoError(f"point has {x.shape[-1]} coordinates, the search space has {self.dim}")
        b = self.bounds(x.device)
        return (x - b[0]) / (b[1] - b[0])

    def to_real(self, x: Tensor | Sequence[float]) -> Tensor:
        """Unit-cube point(s) `[..., dim]` to real units."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.shape[-1] != self.dim:
            raise MmmoError(f"point has {x.shape[-1]} coordinates, the search space has {self.dim}")
        b = self.bounds(x.device)
        return b[0] + x * (b[1] - b[0])

    def method_of(self, x: Tensor | Sequence[float]) -> str | None:
        """The method of one point: its method coordinate's in a mixed space, else the one method (None: none
        given)."""
        if not self.is_mixed:
            return self.methods[0] if self.methods else None
        u = float(torch.as_tensor(x, dtype=torch.float64)[-1])
        return self.methods[min(max(int(u * len(self.methods)), 0), len(self.methods) - 1)]

    def method_value(self, method: str) -> float:
        """The method coordinate of `method`: its bin centre in the unit interval."""
        return (self.methods.index(method) + 0.5) / len(self.methods)

    def active(self, method: str | None) -> list[bool]:
        """Per dimension, whether `method` uses it (the method coordinate counts as used)."""
        info = None if method is None else method_info(method)
        n_w = self.n_models * self.layer_groups
        flags = [info is None or uses_weights(info)] * n_w
        if self.has_density:
            flags += [info is None or info.uses_density] * n_w
        flags += [method is None or m == method for m, _ in self.parameter_dims]
        return flags + [True] * self.is_mixed

    def inactive_values(self) -> list[float]:
        """Per dimension, the unit-cube value it holds where the point's method does not use it: a density's upper
        bound (nearest to no sparsification, what a method without density does), a parameter's default, the
        standard weight."""
        n_w = self.n_models * self.layer_groups
        values = [_unit(STANDARD_WEIGHT, self.weight_bounds)] * n_w + [1.0] * (n_w if self.has_density else 0)
        values += [_unit(p.default, (p.low, p.high)) for _, p in self.parameter_dims]
        return values + [0.0] * self.is_mixed

    def fixed_features(self, method: str) -> dict[int, float]:
        """What a point of `method` holds fixed: its method coordinate and every dimension it does not use."""
        fixed = {i: v for i, (on, v) in enumerate(zip(self.active(method), self.inactive_values())) if not on}
        if self.method_dim is not None:
            fixed[self.method_dim] = self.method_value(method)
        return fixed

    def project(self, X: Tensor) -> Tensor:
        """Unit-cube points `[..., dim]` onto the space's configurations: in a mixed space the method coordinate
        picks a searched method (equal shares of [0, 1]) and moves to its bin centre, and the dimensions that
        method does not use take their inactive values; the identity otherwise."""
        if not self.is_mixed:
            return X
        X = X.clone()
        flat = X.reshape(-1, self.dim)
        searched = self.searched_methods
        for row in flat:
            u = float(row[-1])
            method = searched[min(max(int(u * len(searched)), 0), len(searched) - 1)]
            for i, v in self.fixed_features(method).items():
                row[i] = v
        return X

    def from_unit(self, x: Tensor | Sequence[float]) -> tuple[Tensor, Tensor | None]:
        """One unit-cube point to `(weights [n_models, K], densities [n_models, K] | None)` in real units
        (densities None where its method has none)."""
        real = self.to_real(x)
        if real.dim() != 1:
            raise MmmoError(f"from_unit takes one point of shape [{self.dim}], got {list(real.shape)}")
        n_w = self.n_models * self.layer_groups
        weights = real[:n_w].reshape(self.n_models, self.layer_groups)
        method = self.method_of(x)
        with_density = self.has_density and (method is None or method_info(method).uses_density)
        densities = real[n_w : 2 * n_w].reshape(self.n_models, self.layer_groups) if with_density else None
        return weights, densities

    def method_parameters(self, x: Tensor | Sequence[float]) -> dict[str, float]:
        """The searched method-level parameters of one point's method, by mergekit name, in real units."""
        method, real = self.method_of(x), self.to_real(x)
        start = self.n_models * self.layer_groups * (2 if self.has_density else 1)
        return {
            p.name: float(real[start + i]) for i, (m, p) in enumerate(self.parameter_dims) if m == method
        }

    def named(self, x: Tensor | Sequence[float]) -> dict[str, float]:
        """One unit-cube point as `{dimension name: real value}`; in a mixed space only the dimensions its method
        uses, and no method coordinate (a trial records its method apart)."""
        real = self.to_real(x)
        if not self.is_mixed:
            return {n: float(v) for n, v in zip(self.names, real.tolist())}
        used = self.active(self.method_of(x))[:-1]
        return {n: float(v) for n, v, on in zip(self.names, real.tolist(), used) if on}


def _unit(value: float, bounds: Bounds) -> float:
    """A real value clamped into `bounds`, in the unit interval."""
    lo, hi = bounds
    return (min(max(value, lo), hi) - lo) / (hi - lo)


def uses_weights(info: MethodInfo) -> bool:
    """Whether a method takes a weight per model (slerp's two models and model_stock's average do not)."""
    return info.uses_weight


def is_searchable(method: str) -> bool:
    """Whether a search has anything to choose for `method` (the registry's `searchable`)."""
    return method_info(method).searchable


# The recipe a user tries by hand: mergekit's documented ties / dare_ties examples use weight 0.5 and
# density 0.5 for every model; linear and task_arithmetic take the same equal weights.
STANDARD_WEIGHT = 0.5
STANDARD_DENSITY = 0.5


def standard_recipes(space: SearchSpace) -> Tensor:
    """The standard recipes as unit-cube points `[k, dim]`: every weight STANDARD_WEIGHT and every density
    STANDARD_DENSITY, in every layer group, each clamped into the space's bounds, and each method-level parameter
    at its default; one point (k = 1) for a single method, one per listed method in a mixed space (a method with
    nothing to search is scored by it once, as a reference)."""
    n_w = space.n_models * space.layer_groups
    real = [min(max(STANDARD_WEIGHT, space.weight_bounds[0]), space.weight_bounds[1])] * n_w
    if space.density_bounds is not None:
        real += [min(max(STANDARD_DENSITY, space.density_bounds[0]), space.density_bounds[1])] * n_w
    real += [min(max(p.default, p.low), p.high) for _, p in space.parameter_dims]
    if not space.is_mixed:
        return space.to_unit(torch.tensor([real], dtype=torch.float64))
    rows = []
    for m in space.methods:
        x = space.to_unit(torch.tensor(real + [0.0], dtype=torch.float64))
        for i, v in space.fixed_features(m).items():
            x[i] = v
        rows.append(x)
    return torch.stack(rows)
