"""Launch helpers shared by the Triton kernels (no Triton code here)."""

from __future__ import annotations

import contextlib
import struct

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


def float32_value(value: float) -> float:
    """``value`` rounded to float32 (ties to even), as a float32 kernel argument holds it.

    Triton types a Python float argument as float32; rounding here makes every launcher agree
    with the reference's float32 arithmetic whatever the conversion path. Callers pass finite
    values within float32's range (``fastxai.ops`` checks).
    """
    rounded: float = struct.unpack("f", struct.pack("f", value))[0]
    return rounded
