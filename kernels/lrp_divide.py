"""Triton ``lrp_divide``: ``s = relevance / (z + eps * sign0(z))``, 0 where the denominator is 0.

relevance, z: contiguous, same shape and dtype (float32/float16/bfloat16); eps >= 0 is rounded
to float32. Computed in float32 with a correctly rounded division (``div_rn``), as
``fastxai.reference.lrp_divide``; returns relevance's shape and dtype. One program per block of
elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard, float32_value

_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _lrp_divide_kernel(relevance_ptr, z_ptr, out_ptr, eps, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    relevance = tl.load(relevance_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    # sign0(z) = +1 for z >= 0 (and -0.0), else -1 (also NaN): z + eps or z - eps, exactly as z + eps * sign.
    denominator = tl.where(z >= 0.0, z + eps, z - eps)
    safe = tl.where(denominator == 0.0, 1.0, denominator)
    quotient = tl.where(denominator == 0.0, 0.0, tl.div_rn(relevance, safe))
    tl.store(out_ptr + offs, quotient.to(out_ptr.dtype.element_ty), mask=mask)


def lrp_divide(relevance: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``relevance / (z + eps * sign0(z))`` (0 where that denominator is 0), in relevance's dtype."""
    out = torch.empty_like(relevance, memory_format=torch.contiguous_format)
    numel = relevance.numel()
    if numel == 0:
        return out
    with device_guard(relevance):
        _lrp_divide_kernel[(triton.cdiv(numel, _BLOCK),)](
            relevance,
            z,
            out,
            float32_value(eps),
            numel,
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return out
