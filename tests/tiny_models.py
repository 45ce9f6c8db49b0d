"""Tiny random Llama folders (safetensors + a char-level tokenizer) for tests: a base and perturbed "experts".

Only torch, transformers, safetensors and tokenizers are needed. Everything is seeded, so the same call gives the
same bytes. Experts are the base with each weight scaled by (1 + noise), |noise| <= 0.4: subtracting the base is
then exact in floating point (Sterbenz), so base + (expert - base) reproduces the expert bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?'\n-+=()"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def make_tokenizer() -> Any:
    """A character-level PreTrainedTokenizerFast over CHARS (one token per character; <s> prepended)."""
    from mmmo.demo import make_tokenizer as char_tokenizer

    return char_tokenizer(CHARS, 64)


VOCAB_SIZE = len(SPECIALS) + len(CHARS)


ARCHITECTURES = ("llama", "qwen2")  # qwen2: biases on q/k/v, tied embeddings (no lm_head tensor)


def tiny_config(architecture: str = "llama", **overrides: Any) -> Any:
    """A config of `architecture` (ARCHITECTURES) small enough to build and run in milliseconds (overrides win)."""
    from transformers import LlamaConfig, Qwen2Config

    kwargs: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }
    if architecture == "qwen2":
        kwargs["tie_word_embeddings"] = True
    kwargs.update(overrides)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture](**kwargs)


def _save(model: Any, tokenizer: Any, path: Path, shard_size: str | int | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if shard_size is not None:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(str(path), **kwargs)
    tokenizer.save_pretrained(str(path))
    return path


def make_base(
    path: str | Path,
    *,
    seed: int = 0,
    shard_size: str | int | None = None,
    dtype: torch.dtype = torch.float32,
    **config_overrides: Any,
) -> Path:
    """Save a random tiny Llama (or `architecture=`, see `tiny_config`) (weights ~ N(0, 0.02), norms ~ 1 ± 0.1)
    with its tokenizer to `path`."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(**config_overrides)
    model = (Qwen2ForCausalLM if config.model_type == "qwen2" else LlamaForCausalLM)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.02)
    model = model.to(dtype)
    return _save(model, make_tokenizer(), Path(path), shard_size)


def make_expert(
    base: str | Path,
    path: str | Path,
    *,
    seed: int,
    scale: float = 0.1,
    fraction: float = 1.0,
    shard_size: str | int | None = None,
) -> Path:
    """Save `base` with each weight w → w·(1 + ε), ε ~ scale·N(0,1) clipped to ±0.4, on `fraction` of entries."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = (scale * torch.randn(p.shape, generator=gen)).clamp_(-0.4, 0.4)
            if fraction < 1:
                noise *= torch.rand(p.shape, generator=gen) < fraction
            p.mul_((1 + noise).to(p.dtype))
    tokenizer = make_tokenizer()
    return _save(model, tokenizer, Path(path), shard_size)


def make_family(
    root: str | Path,
    n_experts: int = 2,
    *,
    seed: int = 0,
    shard_size: str | int | None = None,
    scales: Sequence[float] | None = None,
    **config_overrides: Any,
) -> tuple[Path, list[Path]]:
    """A base under `root/base` and `n_experts` perturbed copies under `root/expert{i}`."""
    root = Path(root)
    base = make_base(root / "base", seed=seed, shard_size=shard_size, **config_overrides)
    experts = [
        make_expert(
            base, root / f"expert{i}", seed=seed * 1000 + i + 1,
            scale=(scales[i] if scales else 0.1), shard_size=shard_size,
        )
        for i in range(n_experts)
    ]
    return base, experts


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved folder (single file or sharded), by name."""
    from safetensors.torch import load_file

    p = Path(path)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(p / f)))
    return out
