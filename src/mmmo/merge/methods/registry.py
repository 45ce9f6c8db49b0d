"""The merge methods as data: how each sparsifies and combines task vectors, with mergekit 0.1.5's defaults.

The one list of method names: the spec schema (`mmmo.spec.schema`) reads it from here, so this module imports nothing
heavy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from mmmo.runtime.errors import MmmoError

MethodName = Literal[
    "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear",
    "slerp", "nuslerp", "multislerp", "model_stock", "karcher",
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce",
]
# How each task vector is sparsified (`mmmo.merge.methods.sparsify`), by mergekit's names: TIES trim, DARE drop, Model
# Breadcrumbs (drop the smallest and the largest magnitudes), DELLA (keep with a probability rising with magnitude)
Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]
# The search-wide tables a method uses (`mmmo.merge.kernels.tables`): its sparsification's, or SCE's variances across models
TableKind = Literal["magnitude", "random", "magnitude_outliers", "della_magprune", "variance"]


@dataclass(frozen=True)
class MethodParameter:
    """A scalar a method takes once for the whole merge (not per model), e.g. slerp's `t`: mergekit's default and
    the range a search explores when the method is searched."""

    name: str  # mergekit's parameter name
    default: float
    low: float
    high: float
    searched: bool = True  # False: always mergekit's default (a flag, or a value a search should not move)
    kind: Literal["float", "int", "flag"] = "float"  # flag: 0.0 / 1.0 for mergekit's false / true
    required: bool = False  # mergekit has no default (a recipe must give it); `default` is then the search's start
    per_model: bool = False  # mergekit takes one value per model (a recipe's models must agree: mmmo shares one)

    def check(self, value: float, where: str) -> float:
        """`value` as this parameter takes it; MmmoError naming `where` for a flag not 0/1 or a fractional int."""
        v = float(value)
        if self.kind == "flag" and v not in (0.0, 1.0):
            raise MmmoError(f"{where}: {self.name} is true or false, got {value!r}")
        if self.kind == "int" and not v.is_integer():
            raise MmmoError(f"{where}: {self.name} is a whole number, got {value!r}")
        if v != v or v in (float("inf"), float("-inf")):
            raise MmmoError(f"{where}: {self.name} must be a finite number, got {value!r}")
        return v


@dataclass(frozen=True)
class MethodInfo:
    """How a method sparsifies and combines task vectors, and its mergekit defaults."""

    name: MethodName
    sparsification: Sparsification | None
    consensus: bool  # TIES sign election
    default_normalize: bool
    default_rescale: bool
    parameters: tuple[MethodParameter, ...] = ()  # method-level scalars, in the order a search space lists them
    # Methods that interpolate the models (`mmmo.merge.methods.interpolate`) rather than sum task vectors:
    geometric: bool = False
    uses_weight: bool = True  # a weight per model (slerp, model_stock and karcher have none)
    base: Literal["required", "optional", "input"] = "required"  # input: a base_model is one more model averaged
    min_models: int = 1  # models besides the base (karcher: all its inputs)
    max_models: int | None = None
    # sce: SCE's select-calculate-erase (`mmmo.merge.kernels.sce`) instead of the weighted sum of task vectors
    sce: bool = False

    @property
    def table_kind(self) -> TableKind | None:
        """Which search-wide tables speed this method up (None: none)."""
        return "variance" if self.sce else self.sparsification

    @property
    def uses_density(self) -> bool:
        return self.sparsification is not None

    @property
    def searchable(self) -> bool:
        """Whether a search has anything to move (else the method is scored once, as a reference point)."""
        return self.uses_weight or self.uses_density or any(p.searched for p in self.parameters)

    def parameter(self, name: str) -> MethodParameter:
        """The method-level parameter `name`; MmmoError naming the method's parameters for another name."""
        for p in self.parameters:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.parameters) or "none"
        raise MmmoError(f"{self.name} has no parameter {name!r} (its parameters: {known})")

    def check_models(self, n_models: int, with_base: bool) -> None:
        """MmmoError naming the method when it cannot merge `n_models` models (besides a base when `with_base`)."""
        if self.base == "required" and not with_base:
            raise MmmoError(f"{self.name} needs a base_model")
        count = n_models + (1 if with_base and self.base == "input" else 0)
        if count < self.min_models or (self.max_models is not None and count > self.max_models):
            want = (f"exactly {self.min_models}" if self.max_models == self.min_models
                    else f"at least {self.min_models}" if self.max_models is None
                    else f"{self.min_models} to {self.max_models}")
            what = "models, the base included" if self.base == "input" else "models besides the base"
            raise MmmoError(f"{self.name} merges {want} {what}, got {count}")


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("linear", None, False, default_normalize=True, default_rescale=False),
        MethodInfo("task_arithmetic", None, False, default_normalize=False, default_rescale=False),
        MethodInfo("ties", "magnitude", True, default_normalize=True, default_rescale=False),
        MethodInfo("dare_ties", "random", True, default_normalize=False, default_rescale=True),
        MethodInfo("dare_linear", "random", False, default_normalize=False, default_rescale=True),
        # Interpolations (mergekit 0.1.5's slerp.py, nuslerp.py, multislerp.py, model_stock.py, karcher.py):
        MethodInfo("slerp", None, False, False, False, geometric=True, uses_weight=False, max_models=1,
                   parameters=(MethodParameter("t", 0.5, 0.0, 1.0, required=True),)),
        MethodInfo("nuslerp", None, False, False, False, geometric=True, base="optional", min_models=2,
                   max_models=2, parameters=(
                       MethodParameter("nuslerp_row_wise", 0.0, 0.0, 1.0, searched=False, kind="flag"),
                       MethodParameter("nuslerp_flatten", 1.0, 0.0, 1.0, searched=False, kind="flag"))),
        MethodInfo("multislerp", None, False, False, False, geometric=True, base="optional", parameters=(
            MethodParameter("normalize_weights", 1.0, 0.0, 1.0, searched=False, kind="flag"),
            MethodParameter("eps", 1e-8, 1e-8, 1e-8, searched=False))),
        MethodInfo("model_stock", None, False, False, False, geometric=True, uses_weight=False, min_models=2,
                   parameters=(MethodParameter("filter_wise", 0.0, 0.0, 1.0, searched=False, kind="flag"),)),
        MethodInfo("karcher", None, False, False, False, geometric=True, uses_weight=False, base="input",
                   parameters=(MethodParameter("max_iter", 10.0, 10.0, 10.0, searched=False, kind="int"),
                               MethodParameter("tol", 1e-5, 1e-5, 1e-5, searched=False))),
        # Task arithmetic with other sparsifications (mergekit 0.1.5's registry.py and sce.py). mergekit takes
        # gamma and epsilon per model; a search shares one value across models.
        MethodInfo("breadcrumbs", "magnitude_outliers", False, default_normalize=False, default_rescale=False,
                   parameters=(MethodParameter("gamma", 0.01, 0.0, 0.1, per_model=True),)),
        MethodInfo("breadcrumbs_ties", "magnitude_outliers", True, default_normalize=False, default_rescale=False,
                   parameters=(MethodParameter("gamma", 0.01, 0.0, 0.1, per_model=True),)),
        MethodInfo("della", "della_magprune", True, default_normalize=True, default_rescale=True,
                   parameters=(MethodParameter("epsilon", 0.15, 0.0, 0.3, per_model=True),)),
        MethodInfo("della_linear", "della_magprune", False, default_normalize=False, default_rescale=True,
                   parameters=(MethodParameter("epsilon", 0.15, 0.0, 0.3, per_model=True),)),
        MethodInfo("sce", None, True, False, False, uses_weight=False, sce=True,
                   parameters=(MethodParameter("select_topk", 1.0, 0.05, 1.0),)),
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
