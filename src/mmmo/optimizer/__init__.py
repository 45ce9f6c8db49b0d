"""The optimiser a search runs: search space, GP surrogates, the paper's batch step, baselines and the loop.

A whole search (spec in, run folder out) is `mmmo.search(...)` (`mmmo.api`); this package is its core, with no file
or spec of its own. Names are imported lazily so that `mmmo.optimizer.space` does not pay for importing BoTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS = {
    "AcqBudget": "mmmo.optimizer.acquisition",
    "budget_for": "mmmo.optimizer.acquisition",
    "History": "mmmo.optimizer.history",
    "Proposal": "mmmo.optimizer.strategies",
    "initial_design": "mmmo.optimizer.strategies",
    "propose_batch": "mmmo.optimizer.strategies",
    "BatchSummary": "mmmo.optimizer.loop",
    "LoopObserver": "mmmo.optimizer.loop",
    "LoopOptions": "mmmo.optimizer.options",
    "LoopResult": "mmmo.optimizer.loop",
    "NullObserver": "mmmo.optimizer.loop",
    "run_loop": "mmmo.optimizer.loop",
    "hypervolume": "mmmo.optimizer.pareto",
    "infer_ref_point": "mmmo.optimizer.pareto",
    "pareto_mask": "mmmo.optimizer.pareto",
    "SearchSpace": "mmmo.optimizer.space",
}
__all__ = sorted(_EXPORTS)  # resolved lazily by __getattr__


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
