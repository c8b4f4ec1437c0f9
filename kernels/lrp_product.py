"""Triton ``lrp_product``: ``activation * c``, or ``activation * (alpha * c - beta * c_neg)``.

activation, c, c_neg: contiguous, same shape and dtype (float32/float16/bfloat16); alpha and
beta are rounded to float32. Computed in float32 in the order of ``fastxai.reference.lrp_product``
(no fused multiply-add); returns activation's shape and dtype. One program per block of elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard, float32_value

_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _lrp_product_kernel(
    activation_ptr, c_ptr, c_neg_ptr, out_ptr, alpha, beta, numel, HAS_NEG: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    activation = tl.load(activation_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_NEG:
        c_neg = tl.load(c_neg_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        c = alpha * c - beta * c_neg
    tl.store(out_ptr + offs, (activation * c).to(out_ptr.dtype.element_ty), mask=mask)


def lrp_product(
    activation: torch.Tensor,
    c: torch.Tensor,
    c_neg: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> torch.Tensor:
    """``activation * c`` (``c_neg`` None) or ``activation * (alpha * c - beta * c_neg)``."""
    out = torch.empty_like(activation, memory_format=torch.contiguous_format)
    numel = activation.numel()
    if numel == 0:
        return out
    with device_guard(activation):
        _lrp_product_kernel[(triton.cdiv(numel, _BLOCK),)](
            activation,
            c,
            c if c_neg is None else c_neg,
            out,
            float32_value(alpha),
            float32_value(beta),
            numel,
            HAS_NEG=c_neg is not None,
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return out
