"""Merge recipes in mergekit's YAML: read one (`mmmo merge RECIPE OUT`), write one mergekit 0.1.5 reproduces.

Supported: `models:` with per-model `weight` / `density` (a scalar, or mergekit's filter form when the values
follow mmmo's layer groups), `base_model`, `merge_method` (linear, task_arithmetic, ties, dare_ties,
dare_linear), global `parameters` (normalize, lambda, rescale, int8_mask, and weight/density defaults), `dtype`
and `out_dtype`. Anything else (`slices:`, gradient lists, other methods or parameters) is a one-line MmmoError
naming it. mergekit draws its own DARE masks; mmmo's are fixed by a seed, written as a `# mmmo-seed: N` comment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mmmo.errors import MmmoError
from mmmo.merge.merger import layer_group_of, layer_index, open_checkpoint
from mmmo.merge.methods import METHODS, method_info

Value = float | list[float]  # one value, or one per layer group

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
_SEED_COMMENT = re.compile(r"^#\s*mmmo-seed:\s*(-?\d+)\s*$", re.MULTILINE)
_TOP_KEYS = {"models", "base_model", "merge_method", "parameters", "dtype", "out_dtype", "tokenizer_source"}
_MODEL_PARAMS = ("weight", "density")
_GLOBAL_PARAMS = ("normalize", "lambda", "rescale", "int8_mask", "weight", "density")


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

    @property
    def layer_groups(self) -> int:
        """Number of layer groups (1 when every parameter is a scalar)."""
        sizes = {len(v) for m in self.models for v in (m.weight, m.density) if isinstance(v, list)}
        if len(sizes) > 1:
            raise MmmoError(f"per-layer-group parameters have different lengths: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    @property
    def base_path(self) -> str:
        """The base of the task vectors (for linear without a base: the first model, which cancels out)."""
        return self.base_model or self.models[0].path

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
                weight=_collapse(w[i].tolist()),
                density=None if d is None else _collapse(d[i].tolist()),
            )
            for i, p in enumerate(models)
        ]
        return cls(base_model=str(base_model), models=entries, method=method, **kwargs)


def _expand(v: Value, k: int) -> list[float]:
    return [float(x) for x in v] if isinstance(v, list) else [float(v)] * k


def _collapse(values: list[float]) -> Value:
    return float(values[0]) if all(v == values[0] for v in values) else [float(v) for v in values]


# --------------------------------------------------------------------------------------------------------------
# Reading


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            raise MmmoError(f"{where}: gradient lists are not supported (use a scalar or per-layer filters)")
        raise MmmoError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _flag(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise MmmoError(f"{where}: expected true or false, got {v!r}")
    return v


def _is_filter_form(v: Any) -> bool:
    items = v if isinstance(v, list) else [v]
    return bool(items) and all(isinstance(x, dict) for x in items)


def _resolve_filters(setting: Any, names: Sequence[str], where: str) -> dict[str, float | None]:
    """mergekit's rule per tensor name: the first entry whose filter is absent, '*', or a substring of it."""
    items = setting if isinstance(setting, list) else [setting]
    for it in items:
        unknown = set(it) - {"filter", "value"}
        if unknown or "value" not in it:
            raise MmmoError(f"{where}: filter entries need 'value' (and optional 'filter'), got keys {sorted(it)}")
    out: dict[str, float | None] = {}
    for n in names:
        out[n] = None
        for it in items:
            f = it.get("filter")
            if f is None or f == "*" or (n and str(f) in n):
                out[n] = _number(it["value"], where)
                break
    return out


def _fit_groups(
    per_name: dict[str, dict[str, float]], names: Sequence[str], n_layers: int
) -> tuple[int, dict[str, list[float]]]:
    """The fewest layer groups under which every per-tensor setting is constant within each group."""
    for k in range(1, max(1, n_layers) + 1):
        group = {n: layer_group_of(n, n_layers, k) for n in names}
        fitted: dict[str, list[float]] = {}
        ok = True
        for where, values in per_name.items():
            slots: list[float | None] = [None] * k
            for n, v in values.items():
                g = group[n]
                if slots[g] is None:
                    slots[g] = v
                elif slots[g] != v:
                    ok = False
                    break
            if not ok:
                break
            if any(s is None for s in slots):
                ok = False
                break
            fitted[where] = [float(s) for s in slots if s is not None]
        if ok:
            return k, fitted
    first = next(iter(per_name))
    raise MmmoError(
        f"{first}: per-tensor filters that do not follow layer groups (contiguous blocks of layers; embeddings "
        "with the first, final norm and head with the last) are not supported"
    )


def _base_layout(path: str) -> tuple[list[str], int]:
    """Tensor names and number of layers of a model folder (from headers and config, no weights loaded)."""
    ckpt = open_checkpoint(path, allow_pickle=False)
    names = list(ckpt.shapes())
    n = ckpt.config.get("num_hidden_layers")
    if not (isinstance(n, int) and n > 0):
        idx = [i for i in (layer_index(x) for x in names) if i is not None]
        n = max(idx) + 1 if idx else 1
    return names, n


def _resolve_path(ref: Any, root: Path, where: str) -> str:
    if not isinstance(ref, str) or not ref:
        raise MmmoError(f"{where}: expected a model path, got {ref!r}")
    p = Path(ref).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise MmmoError(f"{where}: model folder not found: {p} (mmmo merges local folders only)")
    return str(p.resolve())


def load_mergekit_recipe(path: str | os.PathLike[str]) -> MergeRecipe:
    """Read a mergekit YAML recipe; model paths are resolved against the recipe's folder."""
    path = Path(path)
    if not path.is_file():
        raise MmmoError(f"recipe not found: {path}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MmmoError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(data, dict):
        raise MmmoError(f"{path}: a recipe must be a YAML mapping")
    return recipe_from_dict(data, root=path.parent.resolve(), seed_text=text)


def recipe_from_dict(data: Mapping[str, Any], *, root: Path, seed_text: str = "") -> MergeRecipe:
    """Validate a parsed mergekit recipe (see `load_mergekit_recipe`)."""
    for key in ("slices", "modules"):
        if key in data:
            raise MmmoError(f"{key}: not supported by mmmo (only `models:` merges of whole models)")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise MmmoError(f"{unknown[0]}: not supported by mmmo")
    if "merge_method" not in data:
        raise MmmoError("merge_method: required field is missing")
    method = data["merge_method"]
    if method not in METHODS:
        raise MmmoError(f"merge_method: {method!r} is not supported (supported: {', '.join(METHODS)})")
    info = method_info(method)
    ts = data.get("tokenizer_source")
    if ts not in (None, "base"):
        raise MmmoError(f"tokenizer_source: {ts!r} is not supported (mmmo keeps the base tokenizer)")
    dtypes: dict[str, str | None] = {}
    for key in ("dtype", "out_dtype"):
        v = data.get(key)
        if v is not None:
            v = str(v).removeprefix("torch.")
            if v not in DTYPES:
                raise MmmoError(f"{key}: {data[key]!r} is not supported (use {', '.join(DTYPES)})")
        dtypes[key] = v

    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise MmmoError("models: needs a list of at least one model")
    base = data.get("base_model")
    base_path = _resolve_path(base, root, "base_model") if base is not None else None
    if base_path is None and info.name != "linear":
        raise MmmoError(f"base_model: required by {info.name}")

    gparams = data.get("parameters") or {}
    if not isinstance(gparams, dict):
        raise MmmoError("parameters: expected a mapping")
    for key in gparams:
        if key not in _GLOBAL_PARAMS:
            raise MmmoError(f"parameters.{key}: not supported by mmmo")

    entries: list[tuple[str, dict[str, Any]]] = []
    for i, m in enumerate(models_raw):
        where = f"models[{i}]"
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict) or "model" not in m:
            raise MmmoError(f"{where}: expected a mapping with 'model'")
        extra = sorted(set(m) - {"model", "parameters"})
        if extra:
            raise MmmoError(f"{where}.{extra[0]}: not supported by mmmo")
        mpath = _resolve_path(m["model"], root, f"{where}.model")
        params = m.get("parameters") or {}
        if not isinstance(params, dict):
            raise MmmoError(f"{where}.parameters: expected a mapping")
        for key in params:
            if key not in _MODEL_PARAMS:
                raise MmmoError(f"{where}.parameters.{key}: not supported by mmmo")
        entries.append((mpath, params))

    if base_path is not None:
        if info.name == "linear":
            # linear averages its inputs and mergekit adds an unlisted base as one more input (weighted by the
            # global weight); mmmo's origin of task vectors is then irrelevant and taken from the first model.
            if all(p != base_path for p, _ in entries):
                entries.append((base_path, {}))
            base_path = None
        else:
            # For task-vector methods a listed base is the base itself (its task vector is zero): drop it.
            entries = [(p, prm) for p, prm in entries if p != base_path] or entries

    # Resolve every weight/density setting: scalars directly, filter forms per tensor name.
    settings: dict[tuple[int, str], Any] = {}
    for i, (_, params) in enumerate(entries):
        for key in _MODEL_PARAMS:
            if key == "density" and not info.uses_density:
                continue
            if key in params:
                settings[(i, key)] = (f"models[{i}].parameters.{key}", params[key])
            elif key in gparams:
                settings[(i, key)] = (f"parameters.{key}", gparams[key])
            elif key == "weight":
                raise MmmoError(f"models[{i}].parameters.weight: required by {info.name}")
    scalars: dict[tuple[int, str], Value] = {}
    filtered: dict[tuple[int, str], tuple[str, Any]] = {}
    for slot, (where, v) in settings.items():
        if _is_filter_form(v):
            filtered[slot] = (where, v)
        else:
            scalars[slot] = _number(v, where)
    if filtered:
        names, n_layers = _base_layout(base_path or entries[0][0])
        per_name: dict[str, dict[str, float]] = {}
        for slot, (where, v) in filtered.items():
            values = _resolve_filters(v, names, where)
            missing = [n for n, x in values.items() if x is None]
            if missing:
                raise MmmoError(f"{where}: no filter matches tensor {missing[0]} (add an entry without filter)")
            per_name[f"{where}@{slot[0]}"] = {n: float(x) for n, x in values.items() if x is not None}
        _k, fitted = _fit_groups(per_name, names, n_layers)
        for slot, (where, _v) in filtered.items():
            scalars[slot] = _collapse(fitted[f"{where}@{slot[0]}"])

    models = [
        RecipeModel(path=p, weight=scalars[(i, "weight")], density=scalars.get((i, "density")))
        for i, (p, _) in enumerate(entries)
    ]

    def shared(key: str, kind: type) -> Any:
        if key not in gparams:
            return None
        v = gparams[key]
        if _is_filter_form(v):
            raise MmmoError(f"parameters.{key}: per-tensor filters are not supported here")
        return _flag(v, f"parameters.{key}") if kind is bool else _number(v, f"parameters.{key}")

    lam = shared("lambda", float)
    seed_m = _SEED_COMMENT.search(seed_text)
    return MergeRecipe(
        base_model=base_path,
        models=models,
        method=info.name,
        normalize=shared("normalize", bool),
        lambda_=1.0 if lam is None else lam,
        rescale=shared("rescale", bool) if info.uses_density and info.sparsification == "random" else None,
        dtype=dtypes["dtype"],
        out_dtype=dtypes["out_dtype"],
        seed=int(seed_m.group(1)) if seed_m else 0,
        int8_mask=shared("int8_mask", bool),
    )


# --------------------------------------------------------------------------------------------------------------
# Writing


def _filter_setting(values: list[float], names: Sequence[str], n_layers: int) -> list[dict[str, Any]]:
    """mergekit's filter form: one entry per layer (`model.layers.{i}.`), one per other tensor, a fallback."""
    k = len(values)
    layer_prefix: dict[int, str] = {}
    others: list[str] = []
    for n in names:
        i = layer_index(n)
        if i is None:
            others.append(n)
        else:
            m = re.search(rf"^(.*?(?:^|\.)(?:layers|h|blocks)\.{i}\.)", n)
            layer_prefix.setdefault(i, m.group(1) if m else f"layers.{i}.")
    out: list[dict[str, Any]] = []
    for i in sorted(layer_prefix):
        out.append({"filter": layer_prefix[i], "value": values[layer_group_of(layer_prefix[i] + "x", n_layers, k)]})
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
            layout = _base_layout(recipe.base_path)
        return _filter_setting([float(x) for x in v], *layout)

    doc: dict[str, Any] = {"merge_method": info.name}
    if info.name != "linear" and recipe.base_model:
        doc["base_model"] = recipe.base_model
    models = []
    for m in recipe.models:
        params: dict[str, Any] = {"weight": setting(m.weight)}
        if info.uses_density and m.density is not None:
            params["density"] = setting(m.density)
        models.append({"model": m.path, "parameters": params})
    doc["models"] = models
    gparams: dict[str, Any] = {}
    if recipe.normalize is not None:
        gparams["normalize"] = bool(recipe.normalize)
    if recipe.lambda_ != 1.0 and info.name != "linear":
        gparams["lambda"] = float(recipe.lambda_)
    if recipe.rescale is not None and info.sparsification == "random":
        gparams["rescale"] = bool(recipe.rescale)
    if recipe.int8_mask is not None and info.name != "linear":
        gparams["int8_mask"] = bool(recipe.int8_mask)
    if gparams:
        doc["parameters"] = gparams
    if recipe.dtype:
        doc["dtype"] = recipe.dtype
    if recipe.out_dtype:
        doc["out_dtype"] = recipe.out_dtype
    header = "# Written by mmmo (mergekit-compatible recipe)."
    if info.sparsification == "random":
        header += (
            "\n# mergekit draws DARE masks from its own random state; mmmo reproduces this merge exactly with:"
        )
    header += f"\n# mmmo-seed: {int(recipe.seed)}\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------------------------
# Running


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
    from mmmo.merge.merger import ONE_MERGE_FUSE_MIN_PARAMS, Merger
    from mmmo.merge.save import check_out_dir, save_merged

    recipe = load_mergekit_recipe(recipe_path)
    if seed is not None:
        recipe.seed = seed
    check_out_dir(Path(out_dir), overwrite=overwrite)
    merger = Merger(
        recipe.base_path,
        [m.path for m in recipe.models],
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
    )
    merger.apply(recipe.weights(), recipe.densities())
    out_dtype = DTYPES[recipe.out_dtype] if recipe.out_dtype else None
    return save_merged(merger, out_dir, base_path=recipe.base_path, recipe=recipe, overwrite=overwrite, dtype=out_dtype)
