"""Triton ``gaussian_perturb``: ``out[s, b] = x[b] + sigma[b] * z`` with Philox normals drawn in-kernel.

x: [B, *F] (float32/float16/bfloat16); sigma: [B] float32; returns [n_samples, B, *F] in x's
dtype, computed in float32. ``z`` for element ``j`` of sample ``s``, row ``b`` is lane ``j % 4``
of the normals of counter ``(j // 4, sample_offset + s, batch_offset + b, 0)`` keyed by
``(seed mod 2**32, seed // 2**32)``, exactly as ``fastxai.reference.gaussian_perturb``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard, int32_bits
from .philox import philox_normal4

# Groups of 4 elements per program: a tile of ROWS (sample, row) pairs x BLOCK_G groups.
_TILE_GROUPS = 512
_NUM_WARPS = 4


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "sample_offset", "batch_offset"])
def _gaussian_perturb_kernel(
    x_ptr,
    sigma_ptr,
    out_ptr,
    n_rows,  # n_samples * B: output rows, row r = s * B + b
    batch,
    features,  # elements per input (F), up to 2**34
    n_group_blocks,  # cdiv(cdiv(F, 4), BLOCK_G)
    seed_lo,  # int32 bit patterns of the key words and counter offsets
    seed_hi,
    sample_offset,
    batch_offset,
    ROWS: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    group_block = pid % n_group_blocks
    row_block = pid // n_group_blocks

    rows = row_block * ROWS + tl.arange(0, ROWS).to(tl.int64)  # [ROWS]
    row_ok = rows < n_rows
    sample = rows // batch
    b = rows - sample * batch

    # Philox once per group of 4 elements: counter (g, sample_offset + s, batch_offset + b, 0).
    groups = group_block * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64)  # [BLOCK_G], < 2**32
    c0 = tl.broadcast_to(groups.to(tl.uint32)[None, :], (ROWS, BLOCK_G))
    c1 = sample_offset.to(tl.uint32, bitcast=True) + sample.to(tl.uint32)
    c2 = batch_offset.to(tl.uint32, bitcast=True) + b.to(tl.uint32)
    c1 = tl.broadcast_to(c1[:, None], (ROWS, BLOCK_G))
    c2 = tl.broadcast_to(c2[:, None], (ROWS, BLOCK_G))
    c3 = tl.zeros((ROWS, BLOCK_G), dtype=tl.uint32)
    k0 = seed_lo.to(tl.uint32, bitcast=True)
    k1 = seed_hi.to(tl.uint32, bitcast=True)
    z0, z1, z2, z3 = philox_normal4(c0, c1, c2, c3, k0, k1)

    # Interleave lanes: [ROWS, BLOCK_G, 2, 2] with (i, k) -> lane 2 * i + k, then flatten row-major.
    z = tl.join(tl.join(z0, z2), tl.join(z1, z3))
    z = tl.reshape(z, (ROWS, BLOCK_G * 4))

    cols = group_block * (BLOCK_G * 4) + tl.arange(0, BLOCK_G * 4).to(tl.int64)  # element index j
    mask = row_ok[:, None] & (cols < features)[None, :]
    sigma = tl.load(sigma_ptr + b, mask=row_ok, other=0.0)
    x = tl.load(x_ptr + (b[:, None] * features + cols[None, :]), mask=mask, other=0.0).to(tl.float32)
    noisy = x + sigma[:, None] * z
    out_offs = rows[:, None] * features + cols[None, :]
    tl.store(out_ptr + out_offs, noisy.to(out_ptr.dtype.element_ty), mask=mask)


def gaussian_perturb(
    x: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    sample_offset: int,
    n_samples: int,
    batch_offset: int = 0,
) -> torch.Tensor:
    """``out[s, b] = x[b] + sigma[b] * N(seed; sample_offset + s, batch_offset + b, j)``: [n_samples, B, *F].

    x: contiguous [B, *F]; sigma: contiguous [B] float32; seed in [0, 2**63).
    """
    batch = x.shape[0]
    out = torch.empty((n_samples, *x.shape), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    features = x.numel() // batch
    groups = triton.cdiv(features, 4)
    block_g = min(triton.next_power_of_2(groups), _TILE_GROUPS)
    rows_per_program = _TILE_GROUPS // block_g
    n_rows = n_samples * batch
    n_group_blocks = triton.cdiv(groups, block_g)
    grid = (triton.cdiv(n_rows, rows_per_program) * n_group_blocks,)
    with device_guard(x):
        _gaussian_perturb_kernel[grid](
            x,
            sigma,
            out,
            n_rows,
            batch,
            features,
            n_group_blocks,
            int32_bits(seed),
            int32_bits(seed >> 32),
            int32_bits(sample_offset),
            int32_bits(batch_offset),
            ROWS=rows_per_program,
            BLOCK_G=block_g,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return out
