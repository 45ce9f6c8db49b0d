"""Decoder layers in tensor names, and the contiguous layer groups that per-group merge parameters follow."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|embed_in|embeddings|wte|wpe)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to (`model.layers.{i}.…`), or None for embeddings, norms and heads."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def layer_prefix(name: str) -> str | None:
    """The name up to and including its layer (`model.layers.3.` of `model.layers.3.mlp.up_proj.weight`)."""
    m = _LAYER.search(name)
    return name[: m.end()] if m else None


def count_layers(config: Mapping[str, Any], names: Iterable[str]) -> int:
    """Decoder layers of a model: its config's `num_hidden_layers`, else one past the highest layer named."""
    n = config.get("num_hidden_layers")
    if isinstance(n, int) and n > 0:
        return n
    found = [i for i in (layer_index(name) for name in names) if i is not None]
    return max(found) + 1 if found else 1


def layer_group_of(name: str, n_layers: int, groups: int) -> int:
    """Group of a tensor: layer i → floor(i·groups/n_layers); embeddings → 0; final norm, head, rest → groups-1."""
    if groups <= 1:
        return 0
    i = layer_index(name)
    if i is not None:
        return min(groups - 1, (i * groups) // max(1, n_layers))
    if _EMBEDDING.search(name):
        return 0
    return groups - 1
