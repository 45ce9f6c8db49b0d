"""MM-MO search core: search space, GP surrogates, the paper's batch step, baselines and the loop.

The search itself is `mmmo.search(...)`, a function (see `mmmo/__init__.py`): reach this package's modules with
`from mmmo.search import loop` or `from mmmo.search.loop import run_loop`.
Names are imported lazily so that `mmmo.search.space` does not pay for importing BoTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS = {
    "AcqBudget": "mmmo.search.acquisition",
    "budget_for": "mmmo.search.acquisition",
    "History": "mmmo.search.history",
    "Proposal": "mmmo.search.strategies",
    "initial_design": "mmmo.search.strategies",
    "propose_batch": "mmmo.search.strategies",
    "BatchSummary": "mmmo.search.loop",
    "LoopObserver": "mmmo.search.loop",
    "LoopOptions": "mmmo.search.loop",
    "LoopResult": "mmmo.search.loop",
    "NullObserver": "mmmo.search.loop",
    "run_loop": "mmmo.search.loop",
    "hypervolume": "mmmo.search.pareto",
    "infer_ref_point": "mmmo.search.pareto",
    "pareto_mask": "mmmo.search.pareto",
    "SearchSpace": "mmmo.search.space",
}
__all__ = sorted(_EXPORTS)  # resolved lazily by __getattr__


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
