"""Triton ``occlude``: copies of the inputs with one sliding window each taken from the baselines.

inputs, baselines: contiguous [B, *F] (float32/float16/bfloat16); window, strides: one entry per
feature dimension; returns [B, count, *F] ([count, B, *F] with ``copy_major``: only the output
offsets differ) where copy ``p`` has window ``start + p`` (row-major over the window positions)
from baselines, as ``fastxai.reference.occlude``. Elements are selected, never computed, so the
result is exact.

The kernel handles up to four feature dimensions. Before launching, dimensions are simplified
without changing the result: size-1 dimensions are dropped, and a dimension that every window
covers whole is merged into the one before it. Each program reads a block of one input once and
writes it for a run of consecutive windows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_guard

_BLOCK = 1024
_NUM_WARPS = 4
_TARGET_PROGRAMS = 1024
_MAX_DIMS = 4


@triton.jit
def _inside(coord, k, size_stride, window):
    low = k * size_stride
    return (coord >= low) & (coord < low + window)


@triton.jit
def _occlude_kernel(
    inputs_ptr,
    baselines_ptr,
    out_ptr,
    out_batch_stride,  # elements of out between inputs b and b + 1
    out_copy_stride,  # elements of out between copies p and p + 1 of one input
    features,  # prod(F)
    count,
    start,
    n_col_blocks,
    windows_per_program,
    size0,
    size1,
    size2,
    size3,
    window0,
    window1,
    window2,
    window3,
    stride0,
    stride1,
    stride2,
    stride3,
    positions1,
    positions2,
    positions3,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_col_blocks
    cols = (pid % n_col_blocks) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = cols < features
    values = tl.load(inputs_ptr + row * features + cols, mask=valid, other=0.0)
    replacement = tl.load(baselines_ptr + row * features + cols, mask=valid, other=0.0)
    coord3 = cols % size3
    rest = cols // size3
    coord2 = rest % size2
    rest = rest // size2
    coord1 = rest % size1
    coord0 = rest // size1
    p_begin = tl.program_id(1).to(tl.int64) * windows_per_program
    p_end = tl.minimum(p_begin + windows_per_program, count)
    for p in range(p_begin, p_end):
        number = start + p
        k3 = number % positions3
        number = number // positions3
        k2 = number % positions2
        number = number // positions2
        k1 = number % positions1
        k0 = number // positions1
        inside = _inside(coord0, k0, stride0, window0) & _inside(coord1, k1, stride1, window1)
        inside = inside & _inside(coord2, k2, stride2, window2) & _inside(coord3, k3, stride3, window3)
        result = tl.where(inside, replacement, values)
        tl.store(out_ptr + row * out_batch_stride + p * out_copy_stride + cols, result, mask=valid)


def simplify_geometry(
    shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]
) -> list[tuple[int, int, int]]:
    """(size, window, stride) per dimension, with size-1 dimensions dropped and every dimension that
    windows cover whole (window == size) merged into the previous one. The windows, their numbering
    and the elements they cover over the flattened input are unchanged."""
    dims: list[tuple[int, int, int]] = []
    for size, width, stride in zip(shape, window, strides, strict=True):
        if size == 1:
            continue  # one position, covering the whole dimension
        if width == size and dims:
            prev_size, prev_width, prev_stride = dims[-1]
            dims[-1] = (prev_size * size, prev_width * size, prev_stride * size)
        else:
            dims.append((size, width, stride))
    return dims


def occlude(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    window: list[int],
    strides: list[int],
    start: int,
    count: int,
    *,
    copy_major: bool = False,
) -> torch.Tensor:
    """[B, *F] -> [B, count, *F] ([count, B, *F] with ``copy_major``): copy ``p`` has window
    ``start + p`` taken from baselines."""
    batch = inputs.shape[0]
    copies = (count, batch) if copy_major else (batch, count)
    out = torch.empty((*copies, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
    if out.numel() == 0:
        return out
    features = out.numel() // (batch * count)
    dims = simplify_geometry(tuple(inputs.shape[1:]), tuple(window), tuple(strides))
    if len(dims) > _MAX_DIMS:
        raise ValueError(
            f"the triton occlude handles windows over at most {_MAX_DIMS} feature dimensions, got "
            f"inputs of shape {tuple(inputs.shape)} with window {tuple(window)}: use backend='native' "
            "or 'reference'"
        )
    dims = [(1, 1, 1)] * (_MAX_DIMS - len(dims)) + dims
    sizes = [d[0] for d in dims]
    widths = [d[1] for d in dims]
    strides_ = [d[2] for d in dims]
    positions = [(size - width) // stride + 1 for size, width, stride in dims]
    n_col_blocks = triton.cdiv(features, _BLOCK)
    element_programs = batch * n_col_blocks
    chunks = max(1, min(count, _TARGET_PROGRAMS // element_programs, 65535))
    windows_per_program = triton.cdiv(count, chunks)
    grid = (element_programs, triton.cdiv(count, windows_per_program))
    with device_guard(inputs):
        _occlude_kernel[grid](
            inputs,
            baselines,
            out,
            features if copy_major else count * features,
            batch * features if copy_major else features,
            features,
            count,
            start,
            n_col_blocks,
            windows_per_program,
            *sizes,
            *widths,
            *strides_,
            *positions[1:],
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
        )
    return out
