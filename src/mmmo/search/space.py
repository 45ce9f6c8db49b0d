"""The search space: named merge parameters in real units, mapped to and from the GP's unit cube."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmmo.config import Bounds, SearchSpec
from mmmo.errors import MmmoError


@dataclass(frozen=True)
class SearchSpace:
    """Per-model (and per layer group) weights, plus densities for methods that have one.

    Dimension order: every weight (model-major, group-minor), then every density in the same order,
    so `from_unit` can reshape each half to `[n_models, K]`.
    """

    model_names: tuple[str, ...]
    layer_groups: int = 1
    weight_bounds: Bounds = (0.0, 1.0)
    density_bounds: Bounds | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_names", tuple(self.model_names))
        if not self.model_names:
            raise MmmoError("search space needs at least one model")
        if self.layer_groups < 1:
            raise MmmoError(f"layer_groups must be >= 1, got {self.layer_groups}")
        for label, b in (("weight", self.weight_bounds), ("density", self.density_bounds)):
            if b is not None and not b[0] < b[1]:
                raise MmmoError(f"{label} bounds {list(b)} are reversed or empty (need low < high)")

    @classmethod
    def from_spec(cls, spec: SearchSpec) -> SearchSpace:
        """The space a validated spec searches."""
        return cls(
            model_names=tuple(spec.model_names),
            layer_groups=spec.merge.layer_groups,
            weight_bounds=tuple(spec.search_space.weight),  # type: ignore[arg-type]
            density_bounds=None if spec.density_bounds is None else tuple(spec.density_bounds),  # type: ignore[arg-type]
        )

    @property
    def n_models(self) -> int:
        return len(self.model_names)

    @property
    def has_density(self) -> bool:
        return self.density_bounds is not None

    def _names_for(self, kind: str) -> list[str]:
        if self.layer_groups == 1:
            return [f"{m}.{kind}" for m in self.model_names]
        return [f"{m}.{kind}.g{j}" for m in self.model_names for j in range(self.layer_groups)]

    @property
    def names(self) -> list[str]:
        """Dimension names, in the order of the unit-cube coordinates."""
        return self._names_for("weight") + (self._names_for("density") if self.has_density else [])

    @property
    def dim(self) -> int:
        return self.n_models * self.layer_groups * (2 if self.has_density else 1)

    def bounds(self, device: torch.device | str | None = None) -> Tensor:
        """Real-unit bounds as a `[2, dim]` float64 tensor (row 0 lower, row 1 upper)."""
        n_w = self.n_models * self.layer_groups
        lo = [self.weight_bounds[0]] * n_w
        hi = [self.weight_bounds[1]] * n_w
        if self.density_bounds is not None:
            lo += [self.density_bounds[0]] * n_w
            hi += [self.density_bounds[1]] * n_w
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

    def from_unit(self, x: Tensor | Sequence[float]) -> tuple[Tensor, Tensor | None]:
        """One unit-cube point to `(weights [n_models, K], densities [n_models, K] | None)` in real units."""
        real = self.to_real(x)
        if real.dim() != 1:
            raise MmmoError(f"from_unit takes one point of shape [{self.dim}], got {list(real.shape)}")
        n_w = self.n_models * self.layer_groups
        weights = real[:n_w].reshape(self.n_models, self.layer_groups)
        densities = real[n_w:].reshape(self.n_models, self.layer_groups) if self.has_density else None
        return weights, densities

    def named(self, x: Tensor | Sequence[float]) -> dict[str, float]:
        """One unit-cube point as `{dimension name: real value}`."""
        real = self.to_real(x)
        return {n: float(v) for n, v in zip(self.names, real.tolist())}


# The recipe a user tries by hand: mergekit's documented ties / dare_ties examples use weight 0.5 and
# density 0.5 for every model; linear and task_arithmetic take the same equal weights.
STANDARD_WEIGHT = 0.5
STANDARD_DENSITY = 0.5


def standard_recipes(space: SearchSpace) -> Tensor:
    """The standard recipes as unit-cube points `[k, dim]` (k = 1 today): every weight STANDARD_WEIGHT and
    every density STANDARD_DENSITY, in every layer group, each clamped into the space's bounds."""
    n_w = space.n_models * space.layer_groups
    real = [min(max(STANDARD_WEIGHT, space.weight_bounds[0]), space.weight_bounds[1])] * n_w
    if space.density_bounds is not None:
        real += [min(max(STANDARD_DENSITY, space.density_bounds[0]), space.density_bounds[1])] * n_w
    return space.to_unit(torch.tensor([real], dtype=torch.float64))
