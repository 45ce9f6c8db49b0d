"""The merge engine: merge methods of one tensor, the in-memory Merger, mergekit recipes and Hugging Face export.

Modules, from the math up:

- `registry`: the methods as data (light: the spec schema reads it); `plan`: one merge's method and parameters;
- `sparsify`: TIES trim and DARE drop as mergekit does them; `reference`: the whole recipe, step by step;
- the fast path: `tensor_setup` (per-tensor decisions), `selection` (TIES thresholds), `tables` (search-wide
  lookups), `chunked` (the eager elementwise pass), `fused` (the compiled kernel), and `fast_merge`
  (`merge_into`, and `merge_tensor` by method name);
- sources: `checkpoint` (files on disk), `layers` (layer groups), `memory` (the budget), `task_vectors`,
  `live_model`, and `merger` (the Merger);
- recipes: `recipe` (the record and its mergekit YAML), `recipe_reader`, `recipe_run`; `save` (the folder).

The names below are loaded on first use, so importing `mmmo.merge.registry` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "METHODS": "mmmo.merge.registry",
    "MethodInfo": "mmmo.merge.registry",
    "method_info": "mmmo.merge.registry",
    "MergePlan": "mmmo.merge.plan",
    "merge_into": "mmmo.merge.fast_merge",
    "merge_tensor": "mmmo.merge.fast_merge",
    "layer_group_of": "mmmo.merge.layers",
    "Merger": "mmmo.merge.merger",
    "MergerOptions": "mmmo.merge.merger",
    "MergeRecipe": "mmmo.merge.recipe",
    "RecipeModel": "mmmo.merge.recipe",
    "to_mergekit_yaml": "mmmo.merge.recipe",
    "load_mergekit_recipe": "mmmo.merge.recipe_reader",
    "run_recipe": "mmmo.merge.recipe_run",
    "save_merged": "mmmo.merge.save",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mmmo.merge' has no attribute {name!r}")
