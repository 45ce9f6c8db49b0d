"""Scratch buffers reused from tensor to tensor: large CPU allocations page-fault on every first touch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class Workspace:
    """Flat scratch buffers by key, grown as needed and handed out as views (contents undefined unless zeros)."""

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, key: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A flat buffer of at least `numel` entries (contents undefined)."""
        return self._buffer(key, numel, dtype, device, torch.empty)

    def zeros(self, key: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A flat buffer of `numel` zeros (kept apart from `get`'s buffers, so nothing writes into it)."""
        return self._buffer(f"zeros:{key}", numel, dtype, device, torch.zeros)

    def _buffer(
        self, key: str, numel: int, dtype: torch.dtype, device: torch.device, make: Callable[..., Tensor]
    ) -> Tensor:
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = make(max(numel, 1), dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel]
