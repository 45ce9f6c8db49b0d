"""The merge engine: merge methods of one tensor, the in-memory Merger, mergekit recipes and Hugging Face export.

Sub-packages, from the math up: `methods` (the maths as mergekit defines it, methods as data), `kernels` (the
fast path per tensor), `sources` (checkpoints, task vectors, the live model) and `recipes` (mergekit YAML in and
out, saving). Beside them the Merger (`merger`) and its memory rules (`memory`: the placement policy; `memory_plan`:
what a run needs, known before loading).

The names below are loaded on first use, so importing `mmmo.merge.methods.registry` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "METHODS": "mmmo.merge.methods.registry",
    "MethodInfo": "mmmo.merge.methods.registry",
    "method_info": "mmmo.merge.methods.registry",
    "MergePlan": "mmmo.merge.methods.plan",
    "merge_into": "mmmo.merge.kernels.fast_merge",
    "merge_tensor": "mmmo.merge.kernels.fast_merge",
    "layer_group_of": "mmmo.merge.sources.layers",
    "Merger": "mmmo.merge.merger",
    "MergerOptions": "mmmo.merge.merger",
    "MergeRecipe": "mmmo.merge.recipes.recipe",
    "RecipeModel": "mmmo.merge.recipes.recipe",
    "to_mergekit_yaml": "mmmo.merge.recipes.recipe",
    "load_mergekit_recipe": "mmmo.merge.recipes.recipe_reader",
    "run_recipe": "mmmo.merge.recipes.recipe_run",
    "save_merged": "mmmo.merge.recipes.save",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mmmo.merge' has no attribute {name!r}")
