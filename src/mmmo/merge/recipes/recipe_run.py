"""`mmmo merge RECIPE OUT`: merge a mergekit recipe with mmmo and save it as a Hugging Face folder."""

from __future__ import annotations

import os
from pathlib import Path

from mmmo.merge.merger import ONE_MERGE_FUSE_MIN_PARAMS, Merger, MergerOptions
from mmmo.merge.recipes.recipe_reader import load_mergekit_recipe
from mmmo.merge.recipes.save import check_out_dir, save_merged
from mmmo.runtime.dtypes import DTYPES


def run_recipe(
    recipe_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    overwrite: bool = False,
) -> Path:
    """Merge a mergekit recipe with mmmo and save the result as a Hugging Face folder; returns its path."""
    recipe = load_mergekit_recipe(recipe_path)
    if seed is not None:
        recipe.seed = seed
    check_out_dir(Path(out_dir), overwrite=overwrite)
    options = MergerOptions(
        method=recipe.method,
        dtype=recipe.torch_dtype(),
        device=device,
        layer_groups=recipe.layer_groups,
        seed=recipe.seed,
        normalize=recipe.normalize,
        lambda_=recipe.lambda_,
        rescale=recipe.rescale,
        allow_pickle=allow_pickle,
        # One merge: sorting for search-wide tables costs more than the one selection it replaces.
        precompute=False,
        fuse_min_params=ONE_MERGE_FUSE_MIN_PARAMS,
        with_base=recipe.with_base,
    )
    merger = Merger(recipe.base_path, [m.path for m in recipe.models], options)
    merger.apply(recipe.weights(), recipe.densities(), recipe.parameters)
    out_dtype = DTYPES[recipe.out_dtype] if recipe.out_dtype else None
    return save_merged(
        merger.live_state_dict(), out_dir, base_path=recipe.base_path, recipe=recipe, overwrite=overwrite,
        dtype=out_dtype,
    )
