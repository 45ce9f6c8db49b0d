"""Small, fast search specs over the demo models, for the tests that run whole searches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmmo.demo import DemoPaths
from mmmo.testing import search_spec_for


def write_demo_spec(demo: DemoPaths, folder: Path, *, limit: int = 10, **sections: dict[str, Any]) -> Path:
    """A small, fast search spec over the demo models (few examples per task, a short budget) in `folder`."""
    small: dict[str, Any] = {
        "optimizer": {"initial": 4, "batches": 1, "candidates": 4, "batch_size": 2, "seed": 0},
        "evaluation": {"device": "cpu", "batch_size": 16, "evaluate_sources": False},
        "output": {"dir": str(folder / "run"), "export": "none"},
    }
    for key, patch in sections.items():  # the caller's sections patch the small ones
        small[key] = {**small[key], **patch} if isinstance(patch, dict) and key in small else patch
    data = search_spec_for(demo, limit=limit, **small)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
