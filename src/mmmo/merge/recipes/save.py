"""Write a merged model as a Hugging Face folder, atomically: built in a hidden sibling, renamed at the end."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from mmmo.merge.recipes.recipe import MergeRecipe, to_mergekit_yaml
from mmmo.runtime.dtypes import dtype_name
from mmmo.runtime.errors import MmmoError

DEFAULT_SHARD_BYTES = 2 * 1024**3
# Files of the base copied next to the weights: tokenizer, chat template, generation defaults.
AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def check_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MmmoError(f"output path exists and is not a folder: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise MmmoError(f"output folder is not empty: {out_dir} (pass overwrite / --overwrite to replace it)")


def _shards(state: Mapping[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _prepare(state: Mapping[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    """CPU, contiguous, optionally cast, and no two tensors sharing storage (safetensors refuses that)."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def write_weights(state: Mapping[str, Tensor], folder: Path, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """safetensors weights: one `model.safetensors`, or shards plus `model.safetensors.index.json`."""
    from safetensors.torch import save_file

    shards = _shards(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_config(base: Path, folder: Path, dtype: torch.dtype | None) -> None:
    config = json.loads((base / "config.json").read_text())
    name = dtype_name(dtype) if dtype is not None else None
    if name is not None:
        config["dtype"] = name
        if "torch_dtype" in config:
            config["torch_dtype"] = name
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


CARD_DIGITS = 3  # significant digits of the weights and densities a model card shows


def _for_people(value: float | list[float] | None) -> str:
    """A merge parameter as a model card shows it: rounded to CARD_DIGITS significant digits, lists joined."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(_for_people(v) for v in value)
    return f"{value:.{CARD_DIGITS}g}"


def model_card(recipe: MergeRecipe | None, name: str, yaml_text: str | None, note: str | None = None) -> str:
    """README.md: front matter, what was merged and how (rounded for reading), and the recipe (full precision)."""
    lines = ["---", "library_name: transformers", "tags:", "- merge", "- mmmo"]
    if recipe is not None and recipe.base_model:
        lines += ["base_model:", f"- {recipe.base_model}"]
    lines += ["---", "", f"# {name}", ""]
    if recipe is None:
        lines.append("A merge of pre-trained language models made with mmmo.")
    else:
        lines += [
            f"A merge of pre-trained language models made with mmmo, method **{recipe.method}**"
            + (f" on base `{recipe.base_model}`." if recipe.base_model else "."),
            "",
            "| model | weight | density |",
            "|---|---|---|",
        ]
        for m in recipe.models:
            lines.append(f"| `{m.path}` | {_for_people(m.weight)} | {_for_people(m.density)} |")
        lines += ["", f"Seed for DARE masks: {recipe.seed}."]
        if yaml_text:
            lines.append("Weights and densities are rounded here; the recipe below has them exactly.")
        lines.append("")
    if note:
        lines += [note, ""]
    if yaml_text:
        lines += ["## Recipe (mergekit format)", "", "```yaml", yaml_text.rstrip(), "```", ""]
    return "\n".join(lines)


def save_merged(
    tensors: Mapping[str, Tensor],
    out_dir: str | os.PathLike[str],
    *,
    base_path: str | os.PathLike[str],
    recipe: MergeRecipe | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    note: str | None = None,
) -> Path:
    """Save merged weights (checkpoint name -> tensor) as a loadable Hugging Face folder beside the recipe.

    Writes safetensors (sharded with an index above `max_shard_bytes`), config.json (dtype updated), the base's
    tokenizer and generation files, README.md with the recipe, and mergekit_config.yml. Built in a temporary
    sibling folder and renamed into place, so an interrupted save never leaves a complete-looking folder.
    """
    out = Path(out_dir).expanduser()
    base = Path(base_path).expanduser()
    if not (base / "config.json").is_file():
        raise MmmoError(f"base model folder has no config.json: {base}")
    check_out_dir(out, overwrite=overwrite)
    if not tensors:
        raise MmmoError("nothing to save: the state dict is empty")
    prepared = _prepare(tensors, dtype)
    float_dtypes = {t.dtype for t in prepared.values() if t.is_floating_point()}
    saved_dtype = dtype or (float_dtypes.pop() if len(float_dtypes) == 1 else None)
    yaml_text = to_mergekit_yaml(recipe) if recipe is not None else None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_weights(prepared, tmp, max_shard_bytes=max_shard_bytes)
        _write_config(base, tmp, saved_dtype)
        for fname in AUX_FILES:
            if (base / fname).is_file():
                shutil.copy2(base / fname, tmp / fname)
        (tmp / "README.md").write_text(model_card(recipe, out.name, yaml_text, note))
        if yaml_text is not None:
            (tmp / "mergekit_config.yml").write_text(yaml_text)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`; an existing `out` is moved aside first and deleted only once `tmp` is in place."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)

