"""Triton ``rescale_backward``: DeepLIFT's Rescale rule for the ReLU family, applied to a gradient.

grad, x, reference: contiguous, the same shape and dtype (float32/float16/bfloat16). For each
element, ``a = x[i]`` (the input's pre-activation) and ``b = reference[i]`` (its baseline's), the
multiplier ``m = (f(a) - f(b)) / (a - b)`` (``f(v) = v if v > 0 else negative_slope * v``),
``f'(a)`` where ``|a - b| < eps``, scales ``grad[i]``. Computed in float32 with a correctly rounded
division, as ``fastxai.reference.rescale_backward``; returns grad's shape and dtype. One program
per block of elements: each tensor is read once, the output written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard, float32_value

_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _rescale_backward_kernel(grad_ptr, x_ptr, reference_ptr, out_ptr, slope, eps, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    a = tl.load(x_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    b = tl.load(reference_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    f_a = tl.where(a > 0.0, a, a * slope)
    f_b = tl.where(b > 0.0, b, b * slope)
    gap = a - b
    close = (gap < eps) & (gap > -eps)
    # The quotient where it is used; a harmless 1 as divisor elsewhere (no 0 / 0 computed).
    quotient = tl.div_rn(f_a - f_b, tl.where(close, 1.0, gap))
    multiplier = tl.where(close, tl.where(a > 0.0, 1.0, slope), quotient)
    tl.store(out_ptr + offs, (grad * multiplier).to(out_ptr.dtype.element_ty), mask=mask)


def rescale_backward(
    grad: torch.Tensor, x: torch.Tensor, reference: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    """``grad`` times the Rescale multiplier of each pair ``(x, reference)``, in grad's dtype."""
    out = torch.empty_like(grad, memory_format=torch.contiguous_format)
    numel = grad.numel()
    if numel == 0:
        return out
    with device_guard(grad):
        _rescale_backward_kernel[(triton.cdiv(numel, _BLOCK),)](
            grad,
            x,
            reference,
            out,
            float32_value(negative_slope),
            float32_value(eps),
            numel,
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return out
