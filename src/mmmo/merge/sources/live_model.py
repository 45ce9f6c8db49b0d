"""The live model a Merger writes each merge into, its tokenizer, and which of its parameters each checkpoint
tensor is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmmo.merge.sources.checkpoint import Checkpoint
from mmmo.runtime.errors import MmmoError, one_line


def load_live_model(base: Checkpoint, dtype: torch.dtype, device: torch.device, *, trust_remote_code: bool) -> Any:
    """The base as an AutoModelForCausalLM in `dtype` on `device`, in eval mode without gradients."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    kwargs["use_safetensors"] = not base.pickled
    if device.type == "cuda":
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base.path), **kwargs)
    except (OSError, ValueError) as err:
        raise MmmoError(f"cannot load base model {base.path}: {one_line(err)}") from None
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(path: Path, *, trust_remote_code: bool) -> tuple[Any, str | None]:
    """The tokenizer of a model folder, or None and why: merging alone needs none, so a failure is reported
    only on use."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code), None
    except (OSError, ValueError, TypeError) as err:
        return None, f"cannot load the tokenizer of {path}: {one_line(err)}"


def map_parameters(model: Any, base: Checkpoint) -> dict[str, torch.nn.Parameter]:
    """Checkpoint name → live floating-point parameter, once per distinct parameter (tied weights are written
    once)."""
    aliases: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
        params[id(p)] = p
    on_disk = set(base.files)
    mapping: dict[str, torch.nn.Parameter] = {}
    for key, names in aliases.items():
        found = next((n for n in names if n in on_disk), None)
        if found is None:
            raise MmmoError(
                f"parameter {names[0]} of the live model has no tensor of that name in {base.path} "
                "(unsupported checkpoint layout)"
            )
        if params[key].dtype.is_floating_point:
            mapping[found] = params[key]
    return mapping
