"""Which device the live model sits on, and which dtype it is merged and evaluated in."""

from __future__ import annotations

import torch

from mmmo.runtime.dtypes import DTYPES
from mmmo.runtime.errors import MmmoError


def resolve_device(name: str) -> torch.device:
    """`auto` → the current CUDA device when there is one, else CPU; an unavailable device is an MmmoError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MmmoError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MmmoError(
                f"device {name!r} was asked for but CUDA is not available to this torch "
                f"({torch.__version__}); use device: cpu or auto"
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise MmmoError(f"device {name!r}: there is no such GPU (this machine has {count})")
        # Always carry the index, so the device compares equal to a parameter's `.device`.
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MmmoError(f"device {name!r} was asked for but MPS is not available; use device: cpu or auto")
    return device


def default_dtype(device: torch.device, requested: str | None) -> torch.dtype:
    """The requested dtype, or bfloat16 on CUDA (float16 where the GPU lacks bf16) and float32 elsewhere."""
    if requested is not None:
        if requested not in DTYPES:
            raise MmmoError(f"unknown dtype {requested!r}: use one of {', '.join(DTYPES)}")
        dtype = DTYPES[requested]
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise MmmoError(f"{device} does not support bfloat16; use float16 or float32")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if has_native_bf16() else torch.float16
    return torch.float32


def has_native_bf16() -> bool:
    """True when the current GPU computes in bfloat16 natively (Ampere or newer), not by emulation."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation and reports native support only
        return torch.cuda.is_bf16_supported()
