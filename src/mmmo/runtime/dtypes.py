"""Floating-point dtypes by the names specs, mergekit recipes and Hugging Face configs give them: one table."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str | None:
    """The name of `dtype` in DTYPES (None for any other dtype)."""
    return next((name for name, d in DTYPES.items() if d == dtype), None)
