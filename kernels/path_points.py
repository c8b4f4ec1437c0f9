"""Triton ``path_points``: ``out[k, b] = baseline[b] + alphas[k] * (x[b] - baseline[b])``.

x, baseline: [B, *F] (float32/float16/bfloat16); alphas: [K] float32; returns [K, B, *F] in
x's dtype, computed in float32 as ``fastxai.reference.path_points``. Each program reads a block
of x and baseline once and writes it for a run of consecutive steps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard

_BLOCK = 1024
_NUM_WARPS = 4
_TARGET_PROGRAMS = 1024  # split the steps over programs only while the element blocks are few


@triton.jit
def _path_points_kernel(
    x_ptr,
    baseline_ptr,
    alphas_ptr,
    out_ptr,
    numel,  # B * prod(F)
    n_steps,
    steps_per_program,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    start = tl.load(baseline_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    step = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - start
    k_begin = tl.program_id(1) * steps_per_program
    k_end = tl.minimum(k_begin + steps_per_program, n_steps)
    out_ptrs = out_ptr + (k_begin.to(tl.int64) * numel + offs)
    for k in range(k_begin, k_end):
        alpha = tl.load(alphas_ptr + k)
        tl.store(out_ptrs, (start + alpha * step).to(out_ptr.dtype.element_ty), mask=mask)
        out_ptrs += numel


def path_points(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``baseline[b] + alphas[k] * (x[b] - baseline[b])`` -> [K, B, *F] in x's dtype.

    x, baseline: contiguous [B, *F], same dtype; alphas: contiguous [K] float32.
    """
    n_steps = alphas.shape[0]
    out = torch.empty((n_steps, *x.shape), dtype=x.dtype, device=x.device)
    numel = x.numel()
    if out.numel() == 0:
        return out
    element_blocks = triton.cdiv(numel, _BLOCK)
    step_chunks = max(1, min(n_steps, _TARGET_PROGRAMS // element_blocks, 65535))
    steps_per_program = triton.cdiv(n_steps, step_chunks)
    grid = (element_blocks, triton.cdiv(n_steps, steps_per_program))
    with device_guard(x):
        _path_points_kernel[grid](
            x,
            baseline,
            alphas,
            out,
            numel,
            n_steps,
            steps_per_program,
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return out
