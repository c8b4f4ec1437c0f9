"""Splitting (sample, batch-row) grids into model passes of at most ``chunk_size`` inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch

CPU_CHUNK_SIZE = 512
"""Inputs per model pass on the CPU when ``chunk_size=None`` and the inputs are not floating
point (token ids); floating-point inputs get ``CPU_PASS_ELEMENTS`` / ``CPU_FORWARD_ELEMENTS``."""

CPU_PASS_ELEMENTS = 1 << 19
"""Input elements per model pass with a backward on the CPU, when ``chunk_size=None``; the
rows per pass follow from the size of one input, between ``CPU_MIN_ROWS`` and
``CPU_MAX_ROWS``. Measured on a 2-core Xeon (``benchmarks/models.py``'s small ResNet, 3x32x32,
IG over 400 rows): 128 rows per pass 0.24 s, 512 rows 0.31 s; activations that stay in cache
beat fewer, larger passes. Tiny inputs go in larger passes, where the per-pass overhead of a
small model is the cost (a digits MLP: five passes of 512 rows 0.37 ms, one of 2080 rows 0.19 ms)."""

CPU_FORWARD_ELEMENTS = 1 << 18
"""The same for forward-only passes (the perturbation methods, under no_grad): feature
ablation on the same ResNet, 2056 rows: 64 rows per pass 0.47 s, 512 rows 0.88 s; a digits CNN
(1x8x8) slowed down again at 8192 rows per pass."""

CPU_MIN_ROWS = 16
CPU_MAX_ROWS = 8192

_CUDA_BYTES_PER_INPUT_ELEMENT = 256
"""Rough activation-memory guess per input element, used only for the first auto chunk on
CUDA; an out-of-memory error halves the chunk and retries."""


def check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def auto_chunk_size(chunk_size: int | None, inputs: torch.Tensor, *, forward_only: bool = False) -> int:
    """``chunk_size`` if given, else the automatic size: from free memory on CUDA; on the CPU
    from the size of one input (``CPU_PASS_ELEMENTS``, or ``CPU_FORWARD_ELEMENTS`` for
    ``forward_only`` passes, which keep no activations for a backward)."""
    if chunk_size is not None:
        return chunk_size
    if inputs.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(inputs.device)
        per_input = max(1, inputs[0].numel()) * _CUDA_BYTES_PER_INPUT_ELEMENT
        return int(max(1, min(65536, free // 2 // per_input)))
    if not inputs.is_floating_point() or inputs.dim() == 0:
        # token ids and other integer inputs: their size says nothing of the activations'
        return CPU_CHUNK_SIZE
    per_input = max(1, inputs[0].numel()) if inputs.shape[0] else 1
    budget = CPU_FORWARD_ELEMENTS if forward_only else CPU_PASS_ELEMENTS
    return max(CPU_MIN_ROWS, min(CPU_MAX_ROWS, budget // per_input))


def for_each_block(
    n_samples: int,
    batch: int,
    chunk_size: int,
    body: Callable[[int, int, int, int], None],
    *,
    halve_on_oom: bool = False,
) -> None:
    """Call ``body(sample_start, sample_stop, row_start, row_stop)`` over a grid of
    ``n_samples`` x ``batch`` inputs, each call covering at most ``chunk_size`` inputs.

    Whole batches of samples go together when they fit; otherwise one sample at a time over
    slices of rows. With ``halve_on_oom`` a CUDA out-of-memory error halves the chunk and
    redoes the failed block (``body`` must only commit its work after the model has run).
    """
    sample = 0
    while sample < n_samples:
        rows_per_block = min(batch, chunk_size)
        samples_per_block = max(1, chunk_size // batch) if rows_per_block == batch else 1
        sample_stop = min(n_samples, sample + samples_per_block)
        row = 0
        while row < batch:
            row_stop = min(batch, row + rows_per_block)
            try:
                body(sample, sample_stop, row, row_stop)
            except torch.cuda.OutOfMemoryError:
                if not halve_on_oom or chunk_size == 1:
                    raise
                chunk_size //= 2
                torch.cuda.empty_cache()
                if row == 0:
                    break  # nothing of this block was committed: plan it again
                rows_per_block = min(rows_per_block, chunk_size)
                continue
            row = row_stop
        else:
            sample = sample_stop
