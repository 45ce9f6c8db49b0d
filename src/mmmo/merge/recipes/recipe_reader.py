"""Read a mergekit YAML recipe (`mmmo merge RECIPE OUT`) into a `MergeRecipe`.

Supported: `models:` with per-model `weight` / `density` (a scalar, or mergekit's filter form when the values
follow mmmo's layer groups), `base_model`, `merge_method` (every method of `mmmo.merge.methods.registry`), global
`parameters` (normalize, lambda, rescale, int8_mask, weight/density defaults, and each method's own parameters,
e.g. slerp's `t`, which may take the filter form too), `dtype` and `out_dtype`. Anything else (`slices:`,
gradient lists, other methods or parameters) is a one-line MmmoError naming it. The DARE seed is read from a `# mmmo-seed: N` comment (0 without one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mmmo.merge.methods.registry import METHODS, MethodInfo, method_info
from mmmo.merge.recipes.recipe import DTYPES, MergeRecipe, RecipeModel, Value, base_layout, collapse
from mmmo.merge.sources.layers import layer_group_of
from mmmo.runtime.errors import MmmoError

_SEED_COMMENT = re.compile(r"^#\s*mmmo-seed:\s*(-?\d+)\s*$", re.MULTILINE)
_TOP_KEYS = {"models", "base_model", "merge_method", "parameters", "dtype", "out_dtype", "tokenizer_source"}
_MODEL_PARAMS = ("weight", "density")
_GLOBAL_PARAMS = ("normalize", "lambda", "rescale", "int8_mask", "weight", "density")

Entry = tuple[str, dict[str, Any]]  # a model's resolved path and its `parameters:` mapping


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
    info, dtypes = _method_and_dtypes(data)
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise MmmoError("models: needs a list of at least one model")
    base = data.get("base_model")
    base_path = _resolve_path(base, root, "base_model") if base is not None else None
    if base_path is None and info.name != "linear" and info.base == "required":
        raise MmmoError(f"base_model: required by {info.name}")
    gparams = data.get("parameters") or {}
    if not isinstance(gparams, dict):
        raise MmmoError("parameters: expected a mapping")
    # The interpolations take their own parameters and a weight default where they have weights, nothing else.
    shared_keys = ({"weight"} if info.uses_weight else set()) if info.geometric else set(_GLOBAL_PARAMS)
    if info.sce:  # SCE takes no weight, density, normalize, lambda or rescale
        shared_keys = {"int8_mask"}
    allowed = {p.name for p in info.parameters} | shared_keys
    for key in gparams:
        if key not in allowed:
            raise MmmoError(f"parameters.{key}: not supported by mmmo for {info.name}")
    own = tuple(p.name for p in info.parameters if p.per_model)
    base_path, entries = _without_base(
        info, base_path, [_model_entry(m, i, root, own) for i, m in enumerate(models_raw)]
    )
    fixed, varying = _method_settings(info, gparams)
    fixed.update(_shared_per_model_values(info, entries, gparams))
    scalars = _model_values(info, entries, gparams, base_path, varying)
    models = [
        RecipeModel(path=p, weight=scalars.get((i, "weight"), 1.0), density=scalars.get((i, "density")))
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
    recipe = MergeRecipe(
        base_model=base_path,
        models=models,
        method=info.name,
        normalize=shared("normalize", bool),
        lambda_=1.0 if lam is None else lam,
        rescale=shared("rescale", bool) if info.uses_density else None,
        dtype=dtypes["dtype"],
        out_dtype=dtypes["out_dtype"],
        seed=int(seed_m.group(1)) if seed_m else 0,
        int8_mask=shared("int8_mask", bool),
        parameters={**fixed, **{name: scalars[(-1, name)] for _, name in varying}},
    )
    if info.geometric:
        info.check_models(len(models), recipe.with_base)
    return recipe


def _method_and_dtypes(data: Mapping[str, Any]) -> tuple[MethodInfo, dict[str, str | None]]:
    """The top-level keys checked; the method, and `dtype` / `out_dtype` by name (None where unset)."""
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
    return method_info(method), dtypes


def _model_entry(m: Any, i: int, root: Path, own: Sequence[str] = ()) -> Entry:
    """One item of `models:` (a path, or a mapping with `model` and `parameters`, which may also set the method's
    per-model parameters `own`), checked."""
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
        if key not in _MODEL_PARAMS and key not in own:
            raise MmmoError(f"{where}.parameters.{key}: not supported by mmmo")
    return mpath, params


def _shared_per_model_values(info: MethodInfo, entries: list[Entry], gparams: Mapping[str, Any]) -> dict[str, float]:
    """The method parameters mergekit takes per model (Breadcrumbs' gamma, DELLA's epsilon) that the models set:
    mmmo merges with one value for all, so the models' values (theirs, else the global one, else the default)
    must agree."""
    out: dict[str, float] = {}
    for p in info.parameters:
        if not p.per_model or all(p.name not in params for _, params in entries):
            continue
        values = set()
        for i, (_, params) in enumerate(entries):
            where = f"models[{i}].parameters.{p.name}" if p.name in params else f"parameters.{p.name}"
            v = params.get(p.name, gparams.get(p.name, p.default))
            if _is_filter_form(v):
                raise MmmoError(f"{where}: per-tensor filters are not supported for {p.name}")
            values.add(p.check(_number(v, where), where))
        if len(values) > 1:
            raise MmmoError(
                f"models[*].parameters.{p.name}: the models' values differ ({', '.join(map(str, sorted(values)))}); "
                f"mmmo merges with one {p.name} for all models"
            )
        out[p.name] = values.pop()
    return out


def _without_base(info: MethodInfo, base_path: str | None, entries: list[Entry]) -> tuple[str | None, list[Entry]]:
    """The base of the task vectors and the models merged over it, as mergekit treats a listed base."""
    if base_path is None:
        return None, entries
    if info.base == "input":  # karcher: the base is one more input, where the recipe lists it or else last
        return base_path, entries
    if info.name == "linear":
        # linear averages its inputs and mergekit adds an unlisted base as one more input (weighted by the
        # global weight); mmmo's origin of task vectors is then irrelevant and taken from the first model.
        if all(p != base_path for p, _ in entries):
            entries = [*entries, (base_path, {})]
        return None, entries
    # For task-vector methods a listed base is the base itself (its task vector is zero): drop it.
    return base_path, [(p, prm) for p, prm in entries if p != base_path] or entries


def _method_settings(
    info: MethodInfo, gparams: Mapping[str, Any]
) -> tuple[dict[str, Value], dict[tuple[int, str], tuple[str, Any]]]:
    """The method's own parameters: those set once (by name), and the filter forms by (-1, name) slot."""
    fixed: dict[str, Value] = {}
    varying: dict[tuple[int, str], tuple[str, Any]] = {}
    for p in info.parameters:
        where = f"parameters.{p.name}"
        if p.name not in gparams:
            if p.required:
                raise MmmoError(f"{where}: required by {info.name}")
            continue
        v = gparams[p.name]
        if p.kind == "flag":
            fixed[p.name] = float(_flag(v, where))
        elif p.kind == "float" and _is_filter_form(v):
            varying[(-1, p.name)] = (where, v)
        else:
            fixed[p.name] = p.check(_number(v, where), where)
    return fixed, varying


def _model_values(
    info: MethodInfo, entries: list[Entry], gparams: Mapping[str, Any], base_path: str | None,
    method_settings: Mapping[tuple[int, str], tuple[str, Any]] | None = None,
) -> dict[tuple[int, str], Value]:
    """Every model's weight (and density) by (model index, key), and the method's filter-form parameters by
    (-1, name): scalars directly, filter forms per layer group (one layer grouping for all)."""
    settings: dict[tuple[int, str], tuple[str, Any]] = dict(method_settings or {})
    for i, (_, params) in enumerate(entries):
        for key in _MODEL_PARAMS:
            if key == "density" and not info.uses_density:
                continue
            if key == "weight" and not info.uses_weight:
                if key in params:
                    raise MmmoError(f"models[{i}].parameters.weight: {info.name} takes no per-model weight")
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
        scalars.update(_filtered_values(filtered, base_path or entries[0][0]))
    return scalars


def _filtered_values(
    filtered: dict[tuple[int, str], tuple[str, Any]], layout_path: str
) -> dict[tuple[int, str], Value]:
    """Filter-form settings as per-layer-group values, over the tensor names of the model at `layout_path`."""
    names, n_layers = base_layout(layout_path)
    per_name: dict[str, dict[str, float]] = {}
    for slot, (where, v) in filtered.items():
        values = _resolve_filters(v, names, where)
        missing = [n for n, x in values.items() if x is None]
        if missing:
            raise MmmoError(f"{where}: no filter matches tensor {missing[0]} (add an entry without filter)")
        per_name[f"{where}@{slot[0]}"] = {n: float(x) for n, x in values.items() if x is not None}
    _k, fitted = _fit_groups(per_name, names, n_layers)
    return {slot: collapse(fitted[f"{where}@{slot[0]}"]) for slot, (where, _v) in filtered.items()}
