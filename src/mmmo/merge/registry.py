"""The merge methods as data: how each sparsifies and combines task vectors, with mergekit 0.1.5's defaults.

The one list of method names: the spec schema (`mmmo.config`) reads it from here, so this module imports nothing
heavy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from mmmo.errors import MmmoError

MethodName = Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
Sparsification = Literal["magnitude", "random"]  # TIES trim, DARE drop


@dataclass(frozen=True)
class MethodInfo:
    """How a method sparsifies and combines task vectors, and its mergekit defaults."""

    name: MethodName
    sparsification: Sparsification | None
    consensus: bool  # TIES sign election
    default_normalize: bool
    default_rescale: bool

    @property
    def uses_density(self) -> bool:
        return self.sparsification is not None


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("linear", None, False, default_normalize=True, default_rescale=False),
        MethodInfo("task_arithmetic", None, False, default_normalize=False, default_rescale=False),
        MethodInfo("ties", "magnitude", True, default_normalize=True, default_rescale=False),
        MethodInfo("dare_ties", "random", True, default_normalize=False, default_rescale=True),
        MethodInfo("dare_linear", "random", False, default_normalize=False, default_rescale=True),
    )
}
if set(METHODS) != set(get_args(MethodName)):  # the Literal (for the spec schema) names exactly these
    raise AssertionError(f"MethodName {get_args(MethodName)} does not list the methods {list(METHODS)}")

DENSITY_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.uses_density)


def method_info(name: str) -> MethodInfo:
    """The method's description; raises MmmoError naming the supported methods for an unknown name."""
    try:
        return METHODS[name]
    except KeyError:
        raise MmmoError(f"unsupported merge method {name!r} (supported: {', '.join(METHODS)})") from None
