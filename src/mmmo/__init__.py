"""mmmo: find the best way to merge fine-tuned LLMs with multi-objective Bayesian optimisation (MM-MO).

`mmmo.search(spec_or_path)` runs a search; `mmmo.resume(run_dir)` continues one; `mmmo.load_spec(path)` validates
a spec; `mmmo.load_run(run_dir)` reads a run folder.

`mmmo.search` is the function `mmmo.api.search`, while `mmmo/search/` is also a subpackage (the search core). Python
binds an imported subpackage as an attribute of its parent, so the subpackage (which imports nothing heavy) is
imported here first and that binding then dropped: `mmmo.search` resolves to the function from then on. The
subpackage's modules stay importable through sys.modules: `from mmmo.search import loop`, `from mmmo.search.loop
import run_loop` and `import mmmo.search.loop` all work; what does not is reaching them as attributes of the
function (`mmmo.search.loop` after `import mmmo`, or `import mmmo.search.loop as loop`).
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

importlib.import_module("mmmo.search")
globals().pop("search", None)  # the subpackage's binding: `search` is the function, resolved by __getattr__


def __getattr__(name: str) -> Any:
    # Lazy: `mmmo --help` and `mmmo validate` should not pay for importing torch and BoTorch.
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mmmo' has no attribute {name!r}")
