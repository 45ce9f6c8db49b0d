"""mmmo: find the best way to merge fine-tuned LLMs with multi-objective Bayesian optimisation (MM-MO).

`mmmo.search(spec_or_path)` runs a search; `mmmo.resume(run_dir)` continues one; `mmmo.load_spec(path)` validates
a spec; `mmmo.load_run(run_dir)` reads a run folder.

The sub-packages draw the pipeline: `spec` → `optimizer` → `evaluation` → `merge` / `objectives` → `run` →
`results`, with `runtime` beside them (ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from mmmo.runtime.errors import MmmoError

__version__ = "0.1.0"
__all__ = ["search", "resume", "load_spec", "load_run", "SearchResult", "MmmoError"]

# Where each lazily exported name is defined.
_HOMES = {
    "search": "mmmo.api",
    "resume": "mmmo.api",
    "SearchResult": "mmmo.api",
    "load_run": "mmmo.results.summary",
    "load_spec": "mmmo.spec.schema",
}


def __getattr__(name: str) -> Any:
    # Lazy: `mmmo --help` and `mmmo validate` should not pay for importing torch and BoTorch.
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mmmo' has no attribute {name!r}")
