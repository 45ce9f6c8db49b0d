"""Merge recipes: what one merge is (`MergeRecipe`), and that recipe as YAML mergekit 0.1.5 reproduces.

Per-layer-group values travel as mergekit's per-tensor filters. mergekit draws its own DARE masks; mmmo's are
fixed by a seed, written as a `# mmmo-seed: N` comment. Reading mergekit's YAML back: `mmmo.merge.recipes.recipe_reader`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from mmmo.merge.methods.registry import method_info
from mmmo.merge.sources.checkpoint import open_checkpoint
from mmmo.merge.sources.layers import count_layers, layer_group_of, layer_index, layer_prefix
from mmmo.runtime.dtypes import DTYPES
from mmmo.runtime.errors import MmmoError

Value = float | list[float]  # one value, or one per layer group



@dataclass
class RecipeModel:
    """One source model and its merge parameters (a scalar, or one value per layer group)."""

    path: str
    weight: Value = 1.0
    density: Value | None = None


@dataclass
class MergeRecipe:
    """One merge: what mergekit's YAML describes, restricted to what mmmo merges."""

    base_model: str | None
    models: list[RecipeModel]
    method: str
    normalize: bool | None = None
    lambda_: float = 1.0
    rescale: bool | None = None
    dtype: str | None = None  # None: the base model's dtype, as mergekit does
    out_dtype: str | None = None
    seed: int = 0
    int8_mask: bool | None = None  # accepted for mergekit compatibility; no numerical effect
    # method-level parameters (`MethodInfo.parameters`, e.g. slerp's t) by mergekit name; unset: mergekit's default
    parameters: dict[str, Value] = field(default_factory=dict)

    @property
    def layer_groups(self) -> int:
        """Number of layer groups (1 when every parameter is a scalar)."""
        sizes = {len(v) for m in self.models for v in (m.weight, m.density) if isinstance(v, list)}
        sizes |= {len(v) for v in self.parameters.values() if isinstance(v, list)}
        if len(sizes) > 1:
            raise MmmoError(f"per-layer-group parameters have different lengths: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    @property
    def base_path(self) -> str:
        """The base of the task vectors (without a base_model: the first model, whose task vector is then 0)."""
        return self.base_model or self.models[0].path

    @property
    def with_base(self) -> bool:
        """Whether the method merges over base_model (`MergerOptions.with_base`): False without one, and for karcher
        when the base is also listed among the models (it is then one of them)."""
        if self.base_model is None:
            return False
        return method_info(self.method).base != "input" or all(m.path != self.base_model for m in self.models)

    def weights(self) -> torch.Tensor:
        """Weights as a float64 tensor (n_models, layer_groups)."""
        return torch.tensor([_expand(m.weight, self.layer_groups) for m in self.models], dtype=torch.float64)

    def densities(self) -> torch.Tensor | None:
        """Densities (n_models, layer_groups), 1 where unset; None for methods without density."""
        if not method_info(self.method).uses_density:
            return None
        k = self.layer_groups
        rows = [_expand(1.0 if m.density is None else m.density, k) for m in self.models]
        return torch.tensor(rows, dtype=torch.float64)

    def torch_dtype(self) -> torch.dtype:
        """The compute dtype: `dtype`, else the base model's, else float32."""
        if self.dtype:
            return DTYPES[self.dtype]
        try:
            cfg = open_checkpoint(self.base_path, allow_pickle=True).config
        except MmmoError:
            return torch.float32
        name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").removeprefix("torch.")
        return DTYPES.get(name, torch.float32)

    @classmethod
    def from_arrays(
        cls,
        base_model: str | os.PathLike[str],
        models: Sequence[str | os.PathLike[str]],
        method: str,
        weights: torch.Tensor | Sequence[Any],
        densities: torch.Tensor | Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> MergeRecipe:
        """A recipe from (n_models, layer_groups) arrays, as the search produces them."""
        info = method_info(method)
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(len(models), -1)
        d = None
        if info.uses_density and densities is not None:
            d = torch.as_tensor(densities, dtype=torch.float64).reshape(len(models), -1)
        entries = [
            RecipeModel(
                path=str(p),
                weight=collapse(w[i].tolist()),
                density=None if d is None else collapse(d[i].tolist()),
            )
            for i, p in enumerate(models)
        ]
        return cls(base_model=str(base_model), models=entries, method=method, **kwargs)


def _expand(v: Value, k: int) -> list[float]:
    return [float(x) for x in v] if isinstance(v, list) else [float(v)] * k


def collapse(values: list[float]) -> Value:
    """One value where all are equal, else the list."""
    return float(values[0]) if all(v == values[0] for v in values) else [float(v) for v in values]


def base_layout(path: str) -> tuple[list[str], int]:
    """Tensor names and number of layers of a model folder (from headers and config, no weights loaded)."""
    ckpt = open_checkpoint(path, allow_pickle=False)
    names = list(ckpt.shapes())
    return names, count_layers(ckpt.config, names)


def _filter_setting(values: list[float], names: Sequence[str], n_layers: int) -> list[dict[str, Any]]:
    """mergekit's filter form: one entry per layer (`model.layers.{i}.`), one per other tensor, a fallback."""
    k = len(values)
    prefixes: dict[int, str] = {}  # layer -> its name prefix (`model.layers.{i}.`)
    others: list[str] = []
    for n in names:
        i, prefix = layer_index(n), layer_prefix(n)
        if i is None or prefix is None:
            others.append(n)
        else:
            prefixes.setdefault(i, prefix)
    out: list[dict[str, Any]] = []
    for i in sorted(prefixes):
        out.append({"filter": prefixes[i], "value": values[layer_group_of(prefixes[i] + "x", n_layers, k)]})
    for n in others:
        out.append({"filter": n, "value": values[layer_group_of(n, n_layers, k)]})
    out.append({"value": values[k - 1]})
    return out


def to_mergekit_yaml(recipe: MergeRecipe) -> str:
    """The recipe as YAML that mergekit 0.1.5 runs (per-layer-group values as per-layer filters)."""
    info = method_info(recipe.method)
    layout: tuple[list[str], int] | None = None

    def setting(v: Value) -> Any:
        nonlocal layout
        if not isinstance(v, list):
            return float(v)
        if all(x == v[0] for x in v):
            return float(v[0])
        if layout is None:
            layout = base_layout(recipe.base_path)
        return _filter_setting([float(x) for x in v], *layout)

    doc: dict[str, Any] = {"merge_method": info.name}
    if info.name != "linear" and recipe.base_model:
        doc["base_model"] = recipe.base_model
    models = []
    for m in recipe.models:
        params: dict[str, Any] = {"weight": setting(m.weight)} if info.uses_weight else {}
        if info.uses_density and m.density is not None:
            params["density"] = setting(m.density)
        models.append({"model": m.path, "parameters": params})
    doc["models"] = [m if m["parameters"] else {"model": m["model"]} for m in models]
    gparams: dict[str, Any] = {}
    task_vectors = not info.geometric and not info.sce  # they take none of the task-vector parameters
    if recipe.normalize is not None and task_vectors:
        gparams["normalize"] = bool(recipe.normalize)
    if recipe.lambda_ != 1.0 and info.name != "linear" and task_vectors:
        gparams["lambda"] = float(recipe.lambda_)
    if recipe.rescale is not None and info.uses_density:
        gparams["rescale"] = bool(recipe.rescale)
    if recipe.int8_mask is not None and info.name != "linear" and task_vectors:
        gparams["int8_mask"] = bool(recipe.int8_mask)
    for p in info.parameters:
        if p.name in recipe.parameters or p.required:
            v = recipe.parameters.get(p.name, p.default)
            gparams[p.name] = bool(v) if p.kind == "flag" else int(v) if p.kind == "int" else setting(v)
    if gparams:
        doc["parameters"] = gparams
    if recipe.dtype:
        doc["dtype"] = recipe.dtype
    if recipe.out_dtype:
        doc["out_dtype"] = recipe.out_dtype
    header = "# Written by mmmo (mergekit-compatible recipe)."
    if info.sparsification in ("random", "della_magprune"):
        header += (
            "\n# mergekit draws DARE masks from its own random state; mmmo reproduces this merge exactly with:"
        )
    header += f"\n# mmmo-seed: {int(recipe.seed)}\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
