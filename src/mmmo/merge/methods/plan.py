"""What one merge computes per tensor, and how: the method with its parameters resolved, as one validated record."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mmmo.merge.methods.registry import MethodInfo, method_info
from mmmo.runtime.errors import MmmoError

CHUNK = 1 << 18  # CPU elements per chunk: the ~25 elementwise passes after selection then run in cache, not DRAM


@dataclass(frozen=True)
class MergePlan:
    """A method and its mergekit parameters, defaults resolved, plus how the fast path runs it.

    `fused`: the task-vector methods `mmmo.merge.kernels.fused.fusable` names, in float32/64, run as compiled
    kernels, the same tensors bit for bit (SCE in float64: to the last bits). `chunk`: CPU elements per chunk of
    the eager path (whole tensors on other devices).
    """

    method: MethodInfo
    normalize: bool
    lambda_: float = 1.0
    rescale: bool = False  # DARE: restore each task vector's L1 norm after the drop
    fused: bool = False
    chunk: int = CHUNK
    # the method's method-level scalars (`MethodInfo.parameters`) by name, every one present (defaults filled in)
    parameters: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.lambda_):
            raise MmmoError(f"lambda must be a finite number, got {self.lambda_}")
        if self.chunk < 1:
            raise MmmoError(f"chunk must be >= 1, got {self.chunk}")

    def value(self, name: str) -> float:
        """A method-level parameter: the one given, else mergekit's default (MmmoError for an unknown name)."""
        if name in self.parameters:
            return float(self.parameters[name])
        return self.method.parameter(name).default

    def with_parameters(self, values: Mapping[str, float] | None) -> MergePlan:
        """This plan with some method-level parameters replaced (checked); itself when `values` is empty."""
        if not values:
            return self
        return replace(self, parameters=resolve_parameters(self.method, {**self.parameters, **values}))

    @classmethod
    def of(
        cls,
        method: str,
        *,
        normalize: bool | None = None,
        lambda_: float = 1.0,
        rescale: bool | None = None,
        fused: bool = False,
        chunk: int | None = None,
        parameters: Mapping[str, float] | None = None,
    ) -> MergePlan:
        """The plan for a method name; None takes the method's mergekit default (MmmoError for an unknown name)."""
        info = method_info(method)
        return cls(
            info,
            normalize=info.default_normalize if normalize is None else normalize,
            lambda_=float(lambda_),
            rescale=info.default_rescale if rescale is None else rescale,
            fused=fused,
            chunk=max(1, chunk or CHUNK),
            parameters=resolve_parameters(info, parameters or {}),
        )


def resolve_parameters(info: MethodInfo, values: Mapping[str, float]) -> dict[str, float]:
    """Every method-level parameter of `info`: `values` where given (checked), else mergekit's default."""
    for name in values:
        info.parameter(name)  # MmmoError naming the method's parameters
    return {p.name: p.check(values.get(p.name, p.default), p.name) for p in info.parameters}
