"""Triton ``weighted_path_accumulate``: in place ``acc[b] += sum_k weights[k, b] * grads[k, b]``.

grads: [K, B, *F] (float32/float16/bfloat16); weights: [K, B] float32; acc: [B, *F] float32.
Each program owns a tile of accumulator elements (a few rows x a block of features, so small
inputs still fill a program) and adds the steps one after another in order, as
``fastxai.reference.weighted_path_accumulate`` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard

_TILE = 1024
_NUM_WARPS = 4


@triton.jit
def _weighted_path_accumulate_kernel(
    grads_ptr,
    weights_ptr,
    acc_ptr,
    n_steps,
    batch,
    features,  # prod(F)
    numel,  # B * prod(F): elements of one step
    n_col_blocks,  # cdiv(features, BLOCK_F)
    ROWS: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    col_block = pid % n_col_blocks
    row_block = pid // n_col_blocks
    rows = row_block * ROWS + tl.arange(0, ROWS).to(tl.int64)
    cols = col_block * BLOCK_F + tl.arange(0, BLOCK_F).to(tl.int64)
    row_ok = rows < batch
    mask = row_ok[:, None] & (cols < features)[None, :]
    offs = rows[:, None] * features + cols[None, :]
    acc = tl.load(acc_ptr + offs, mask=mask, other=0.0)
    grad_ptrs = grads_ptr + offs
    weight_ptrs = weights_ptr + rows
    for _ in range(n_steps):
        weight = tl.load(weight_ptrs, mask=row_ok, other=0.0)
        grad = tl.load(grad_ptrs, mask=mask, other=0.0).to(tl.float32)
        acc += weight[:, None] * grad
        grad_ptrs += numel
        weight_ptrs += batch
    tl.store(acc_ptr + offs, acc, mask=mask)


def weighted_path_accumulate(grads: torch.Tensor, weights: torch.Tensor, acc: torch.Tensor) -> None:
    """In place ``acc[b] += sum_k weights[k, b] * grads[k, b]`` (steps in order).

    grads: contiguous [K, B, *F]; weights: contiguous [K, B] float32; acc: contiguous float32 [B, *F].
    """
    n_steps, batch = grads.shape[0], grads.shape[1]
    numel = acc.numel()
    if n_steps == 0 or numel == 0:
        return
    features = numel // batch
    block_f = min(triton.next_power_of_2(features), _TILE)
    rows_per_program = _TILE // block_f
    n_col_blocks = triton.cdiv(features, block_f)
    grid = (triton.cdiv(batch, rows_per_program) * n_col_blocks,)
    with device_guard(grads):
        _weighted_path_accumulate_kernel[grid](
            grads,
            weights,
            acc,
            n_steps,
            batch,
            features,
            numel,
            n_col_blocks,
            ROWS=rows_per_program,
            BLOCK_F=block_f,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
