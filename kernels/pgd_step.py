"""Triton ``pgd_step``: one projected gradient step per sample, clamped to [lower, upper].

x_adv, grad, x_orig: [B, *F] (float32/float16/bfloat16, same dtype); step_size, eps: [B]
float32; returns [B, *F] in x's dtype, computed in float32 in the order of
``fastxai.reference.pgd_step``:

- ``linf``: elementwise; each program owns a tile of a few rows x a block of features.
- ``l2``: one program per row, three loops over the row in blocks: ``||grad||``, then
  ``||d||`` of ``d = x_adv + step * grad / (||grad|| + 1e-10) - x_orig``, then the update.
  The norms are float32 tree sums (another order than torch's); divisions and square roots
  are the correctly rounded ``div_rn`` / ``sqrt_rn``.

Max / min are selects that keep a NaN value being clamped, as torch.maximum / clamp do.
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from ._common import device_guard

_TILE = 1024
_NUM_WARPS = 4
_L2_BLOCK = 1024  # elements of a row per loop iteration (at most)
_L2_DIVISION_EPS = 1e-10  # rounded to float32 in the kernel, as the reference's float32 add does


@triton.jit
def _clamp(value, lower, upper):
    value = tl.where(value < lower, lower, value)
    return tl.where(upper < value, upper, value)


@triton.jit
def _pgd_linf_kernel(
    adv_ptr,
    grad_ptr,
    orig_ptr,
    step_ptr,
    eps_ptr,
    out_ptr,
    lower,
    upper,
    batch,
    features,  # prod(F)
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
    alpha = tl.load(step_ptr + rows, mask=row_ok, other=0.0)[:, None]
    radius = tl.load(eps_ptr + rows, mask=row_ok, other=0.0)[:, None]
    adv = tl.load(adv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    orig = tl.load(orig_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # torch.sign: +0 for +-0 and NaN.
    sign = (grad > 0.0).to(tl.float32) - (grad < 0.0).to(tl.float32)
    delta = (adv + alpha * sign) - orig
    delta = _clamp(delta, -radius, radius)
    result = _clamp(orig + delta, lower, upper)
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pgd_l2_kernel(
    adv_ptr,
    grad_ptr,
    orig_ptr,
    step_ptr,
    eps_ptr,
    out_ptr,
    lower,
    upper,
    features,  # prod(F)
    division_eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = row * features
    cols = tl.arange(0, BLOCK).to(tl.int64)
    grad_sq = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, features, BLOCK):
        offs = start + cols
        mask = offs < features
        grad = tl.load(grad_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        grad_sq += grad * grad
    grad_norm = tl.sqrt_rn(tl.sum(grad_sq, axis=0)) + division_eps
    alpha = tl.load(step_ptr + row)
    delta_sq = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, features, BLOCK):
        offs = start + cols
        mask = offs < features
        adv = tl.load(adv_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        grad = tl.load(grad_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        orig = tl.load(orig_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        delta = (adv + alpha * tl.div_rn(grad, grad_norm)) - orig
        delta_sq += delta * delta
    delta_norm = tl.sqrt_rn(tl.sum(delta_sq, axis=0))
    radius = tl.load(eps_ptr + row)
    factor = tl.where(delta_norm > radius, tl.div_rn(radius, delta_norm), 1.0)
    for start in range(0, features, BLOCK):
        offs = start + cols
        mask = offs < features
        adv = tl.load(adv_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        grad = tl.load(grad_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        orig = tl.load(orig_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        delta = (adv + alpha * tl.div_rn(grad, grad_norm)) - orig
        result = _clamp(orig + delta * factor, lower, upper)
        tl.store(out_ptr + base + offs, result.to(out_ptr.dtype.element_ty), mask=mask)


def _float32_bound(value: float) -> float:
    """``value`` rounded to float32 (ties to even), +-inf beyond float32's range, as torch.clamp rounds it."""
    try:
        rounded: float = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)
    return rounded


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    step_size: torch.Tensor,
    eps: torch.Tensor,
    lower: float,
    upper: float,
    norm: str,
) -> torch.Tensor:
    """One PGD step (``norm`` ``"linf"`` or ``"l2"``) -> [B, *F] in x's dtype.

    x_adv, grad, x_orig: contiguous [B, *F], same dtype; step_size, eps: contiguous [B] float32.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    out = torch.empty_like(x_adv, memory_format=torch.contiguous_format)
    batch = x_adv.shape[0]
    numel = x_adv.numel()
    if numel == 0:
        return out
    features = numel // batch
    lower = _float32_bound(lower)
    upper = _float32_bound(upper)
    with device_guard(x_adv):
        if norm == "linf":
            block_f = min(triton.next_power_of_2(features), _TILE)
            rows_per_program = _TILE // block_f
            n_col_blocks = triton.cdiv(features, block_f)
            grid = (triton.cdiv(batch, rows_per_program) * n_col_blocks,)
            _pgd_linf_kernel[grid](
                x_adv,
                grad,
                x_orig,
                step_size,
                eps,
                out,
                lower,
                upper,
                batch,
                features,
                n_col_blocks,
                ROWS=rows_per_program,
                BLOCK_F=block_f,
                num_warps=_NUM_WARPS,
                enable_fp_fusion=False,
            )
        else:
            _pgd_l2_kernel[(batch,)](
                x_adv,
                grad,
                x_orig,
                step_size,
                eps,
                out,
                lower,
                upper,
                features,
                _L2_DIVISION_EPS,
                BLOCK=min(triton.next_power_of_2(features), _L2_BLOCK),
                num_warps=_NUM_WARPS,
                enable_fp_fusion=False,
            )
    return out
