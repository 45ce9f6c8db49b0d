"""mmmo: find the best way to merge fine-tuned LLMs with multi-objective Bayesian optimisation (MM-MO).

`mmmo.search(spec_or_path)` runs a search (the `mmmo.search` subpackage is callable for that, see
`mmmo/search/__init__.py`); `mmmo.resume(run_dir)` continues one; `mmmo.load_spec(path)` validates a spec.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["search", "resume", "load_spec", "load_run", "SearchResult", "MmmoError"]

from mmmo.errors import MmmoError


def __getattr__(name: str) -> Any:
    # Lazy: `mmmo --help` and `mmmo validate` should not pay for importing torch and BoTorch.
    if name in ("resume", "load_run", "SearchResult"):
        from mmmo import api

        return getattr(api, name)
    if name == "load_spec":
        from mmmo.config import load_spec

        return load_spec
    if name == "search":
        import mmmo.search as search_pkg

        return search_pkg
    raise AttributeError(f"module 'mmmo' has no attribute {name!r}")
