"""The merge engine: pure merge methods, the in-memory Merger, mergekit recipes and Hugging Face export."""

from __future__ import annotations

from mmmo.merge.merger import Merger, layer_group_of
from mmmo.merge.methods import METHODS, MethodInfo, merge_delta, merge_tensor, method_info
from mmmo.merge.recipe import MergeRecipe, RecipeModel, load_mergekit_recipe, run_recipe, to_mergekit_yaml
from mmmo.merge.save import save_merged

__all__ = [
    "METHODS",
    "MergeRecipe",
    "Merger",
    "MethodInfo",
    "RecipeModel",
    "layer_group_of",
    "load_mergekit_recipe",
    "merge_delta",
    "merge_tensor",
    "method_info",
    "run_recipe",
    "save_merged",
    "to_mergekit_yaml",
]
