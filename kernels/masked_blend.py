"""Triton ``masked_blend``: ``out[b, p, i] = base[b, i] + keep[b, p, mask[i]] * (inputs[b, i] - base[b, i])``.

``base`` stands for the baselines. inputs, baselines: contiguous [B, *F] (float32/float16/bfloat16);
feature_mask: contiguous int64 [*F] or [B, *F] with values in [0, M); keep: contiguous [B, P, M]
float32. Returns [B, P, *F] in the inputs' dtype, computed in float32 as
``fastxai.reference.masked_blend``, or [P, B, *F] with ``copy_major`` (only the output offsets
differ). Each program reads a block of one input (and its mask) once and writes it for a run of
consecutive perturbations.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard

_BLOCK = 1024
_NUM_WARPS = 4
_TARGET_PROGRAMS = 1024  # split the perturbations over programs only while the element blocks are few


@triton.jit
def _masked_blend_kernel(
    inputs_ptr,
    baselines_ptr,
    mask_ptr,
    keep_ptr,
    out_ptr,
    out_batch_stride,  # elements of out between inputs b and b + 1
    out_copy_stride,  # elements of out between perturbations p and p + 1 of one input
    features,  # prod(F)
    n_perturbations,
    n_groups,
    mask_batch_stride,  # features for a per-input mask, 0 for a shared one
    n_col_blocks,
    perturbations_per_program,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_col_blocks
    cols = (pid % n_col_blocks) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = cols < features
    start = tl.load(baselines_ptr + row * features + cols, mask=valid, other=0.0).to(tl.float32)
    step = tl.load(inputs_ptr + row * features + cols, mask=valid, other=0.0).to(tl.float32) - start
    group = tl.load(mask_ptr + row * mask_batch_stride + cols, mask=valid, other=0)
    p_begin = tl.program_id(1).to(tl.int64) * perturbations_per_program
    p_end = tl.minimum(p_begin + perturbations_per_program, n_perturbations)
    for p in range(p_begin, p_end):
        bp = row * n_perturbations + p
        weight = tl.load(keep_ptr + bp * n_groups + group, mask=valid, other=0.0)
        result = start + weight * step
        out_offset = row * out_batch_stride + p * out_copy_stride
        tl.store(out_ptr + out_offset + cols, result.to(out_ptr.dtype.element_ty), mask=valid)


def masked_blend(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    feature_mask: torch.Tensor,
    keep: torch.Tensor,
    *,
    copy_major: bool = False,
) -> torch.Tensor:
    """Perturbed copies [B, P, *F] ([P, B, *F] with ``copy_major``):
    ``baselines + keep[b, p, mask] * (inputs - baselines)``."""
    batch, n_perturbations, n_groups = keep.shape
    copies = (n_perturbations, batch) if copy_major else (batch, n_perturbations)
    out = torch.empty((*copies, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
    if out.numel() == 0:
        return out
    features = out.numel() // (batch * n_perturbations)
    out_batch_stride = features if copy_major else n_perturbations * features
    out_copy_stride = batch * features if copy_major else features
    per_input = feature_mask.dim() == inputs.dim()
    n_col_blocks = triton.cdiv(features, _BLOCK)
    element_programs = batch * n_col_blocks
    p_chunks = max(1, min(n_perturbations, _TARGET_PROGRAMS // element_programs, 65535))
    perturbations_per_program = triton.cdiv(n_perturbations, p_chunks)
    grid = (element_programs, triton.cdiv(n_perturbations, perturbations_per_program))
    with device_guard(inputs):
        _masked_blend_kernel[grid](
            inputs,
            baselines,
            feature_mask,
            keep,
            out,
            out_batch_stride,
            out_copy_stride,
            features,
            n_perturbations,
            n_groups,
            features if per_input else 0,
            n_col_blocks,
            perturbations_per_program,
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return out
