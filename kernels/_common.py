"""Launch helpers shared by the Triton kernels (no Triton code here)."""

from __future__ import annotations

import contextlib

import torch

_MASK32 = 0xFFFFFFFF


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s GPU the current one for the launch (Triton launches on the current device)."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def int32_bits(value: int) -> int:
    """The low 32 bits of ``value`` as a signed int32, so Triton always types the argument as i32.

    Kernels reinterpret it with ``.to(tl.uint32, bitcast=True)``; passing seeds and offsets
    this way keeps one compiled kernel for every value (no i32/i64 split at 2**31).
    """
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value
