"""Triton ``moment_accumulate``: in place ``total += sum_s a_s``, ``total_sq += sum_s a_s**2``.

``a_s = float32(values[s]) * float32(multiplier[s])`` (no multiplier: ``a_s = values[s]``).
values, multiplier: [n, B, *F] (float32/float16/bfloat16, same dtype); total, total_sq: [B, *F]
float32. Each program owns a block of accumulator elements and adds the samples one after
another in order, as ``fastxai.reference.moment_accumulate`` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard

_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _moment_accumulate_kernel(
    values_ptr,
    multiplier_ptr,
    total_ptr,
    total_sq_ptr,
    n_samples,
    numel,  # B * prod(F): elements of one sample
    HAS_SQ: tl.constexpr,
    HAS_MULT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    total = tl.load(total_ptr + offs, mask=mask, other=0.0)
    if HAS_SQ:
        total_sq = tl.load(total_sq_ptr + offs, mask=mask, other=0.0)
    else:
        total_sq = tl.zeros((BLOCK,), dtype=tl.float32)
    value_ptrs = values_ptr + offs
    multiplier_ptrs = multiplier_ptr + offs
    for _ in range(n_samples):
        term = tl.load(value_ptrs, mask=mask, other=0.0).to(tl.float32)
        if HAS_MULT:
            term = term * tl.load(multiplier_ptrs, mask=mask, other=0.0).to(tl.float32)
            multiplier_ptrs += numel
        total += term
        if HAS_SQ:
            total_sq += term * term
        value_ptrs += numel
    tl.store(total_ptr + offs, total, mask=mask)
    if HAS_SQ:
        tl.store(total_sq_ptr + offs, total_sq, mask=mask)


def moment_accumulate(
    values: torch.Tensor,
    total: torch.Tensor,
    total_sq: torch.Tensor | None = None,
    multiplier: torch.Tensor | None = None,
) -> None:
    """In place ``total += sum_s a_s``, ``total_sq += sum_s a_s**2``, ``a_s = values[s] * multiplier[s]``.

    values, multiplier: contiguous [n, B, *F]; total, total_sq: contiguous float32 [B, *F].
    """
    n_samples = values.shape[0]
    numel = total.numel()
    if n_samples == 0 or numel == 0:
        return
    grid = (triton.cdiv(numel, _BLOCK),)
    with device_guard(values):
        _moment_accumulate_kernel[grid](
            values,
            multiplier if multiplier is not None else values,
            total,
            total_sq if total_sq is not None else total,
            n_samples,
            numel,
            HAS_SQ=total_sq is not None,
            HAS_MULT=multiplier is not None,
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
