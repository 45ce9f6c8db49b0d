"""MM-MO search core: search space, GP surrogates, the paper's batch step, baselines and the loop.

The package is also callable: `mmmo.search(spec_or_path, ...)` runs a search (`mmmo.api.search`).
Names are imported lazily so that `mmmo.search.space` does not pay for importing BoTorch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "AcqBudget": "strategies",
    "Proposal": "strategies",
    "initial_design": "strategies",
    "propose_batch": "strategies",
    "BatchSummary": "loop",
    "LoopResult": "loop",
    "run_loop": "loop",
    "hypervolume": "pareto",
    "infer_ref_point": "pareto",
    "pareto_mask": "pareto",
    "SearchSpace": "space",
}
__all__ = [  # resolved lazily by __getattr__
    "AcqBudget",
    "BatchSummary",
    "LoopResult",
    "Proposal",
    "SearchSpace",
    "hypervolume",
    "infer_ref_point",
    "initial_design",
    "pareto_mask",
    "propose_batch",
    "run_loop",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from mmmo.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
