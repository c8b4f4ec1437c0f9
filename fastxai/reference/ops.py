"""Reference implementations of the fused ops: plain PyTorch, written to be read.

These define what every backend must compute. Shapes use ``B`` for the batch, ``F`` for
the feature dimensions of one input (any number of them), ``n`` for a block of noise
samples and ``K`` for a block of path steps. Callers (``fastxai.ops``) validate and pass
contiguous tensors; the functions here assume that.

Accumulators are float32 for float32/float16/bfloat16 inputs and float64 for float64
inputs. Noise is always drawn in float32 (see ``fastxai.reference.philox``).
"""

from __future__ import annotations

import torch

from fastxai.reference.philox import philox_normal


def gaussian_perturb(
    x: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    sample_offset: int,
    n_samples: int,
    batch_offset: int = 0,
) -> torch.Tensor:
    """``out[s, b] = x[b] + sigma[b] * N(seed; sample_offset + s, batch_offset + b, j)``.

    x: [B, *F] floating; sigma: [B] float32; returns [n_samples, B, *F] in x's dtype. The
    normal for element ``j`` (row-major index inside one input) of sample ``s`` of batch
    row ``b`` comes from the Philox counter (j // 4, s, b, 0) keyed by ``seed``, so a block
    of samples drawn at any offset equals the same rows of one large draw.
    """
    batch = x.shape[0]
    features = x[0].numel() if batch else 0
    element = torch.arange(features, dtype=torch.int64, device=x.device).view(1, 1, features)
    sample = torch.arange(n_samples, dtype=torch.int64, device=x.device).view(-1, 1, 1) + sample_offset
    row = torch.arange(batch, dtype=torch.int64, device=x.device).view(1, -1, 1) + batch_offset
    noise = philox_normal(element, sample, row, seed)  # [n, B, features], float32
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    noisy = x.reshape(1, batch, features).to(compute_dtype) + sigma.to(compute_dtype).view(1, -1, 1) * noise
    return noisy.to(x.dtype).reshape(n_samples, *x.shape)


def moment_accumulate(
    values: torch.Tensor,
    total: torch.Tensor,
    total_sq: torch.Tensor | None = None,
    multiplier: torch.Tensor | None = None,
) -> None:
    """In place: ``total += sum_s a_s``, ``total_sq += sum_s a_s**2``, ``a_s = values[s] * multiplier[s]``.

    values, multiplier: [n, B, *F]; total, total_sq: [B, *F] accumulators (float32, float64
    for float64 values). Samples are added one after another in order, so splitting a run
    into blocks changes nothing.
    """
    for index in range(values.shape[0]):
        term = values[index].to(total.dtype)
        if multiplier is not None:
            term = term * multiplier[index].to(total.dtype)
        total.add_(term)
        if total_sq is not None:
            total_sq.add_(term * term)


def path_points(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``out[k, b] = baseline[b] + alphas[k] * (x[b] - baseline[b])``.

    x, baseline: [B, *F]; alphas: [K] float32 (float64 for float64 inputs); returns
    [K, B, *F] in x's dtype, computed in float32 (float64 for float64 inputs).
    """
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    start = baseline.to(compute_dtype).unsqueeze(0)
    step = (x.to(compute_dtype) - baseline.to(compute_dtype)).unsqueeze(0)
    shape = (-1,) + (1,) * x.dim()
    return (start + alphas.to(compute_dtype).view(shape) * step).to(x.dtype)


def weighted_path_accumulate(grads: torch.Tensor, weights: torch.Tensor, acc: torch.Tensor) -> None:
    """In place: ``acc[b] += sum_k weights[k, b] * grads[k, b]``, steps added in order.

    grads: [K, B, *F]; weights: [K, B] float32 (float64 for float64 grads); acc: [B, *F]
    accumulator.
    """
    shape = (-1,) + (1,) * (acc.dim() - 1)
    for index in range(grads.shape[0]):
        acc.add_(weights[index].to(acc.dtype).view(shape) * grads[index].to(acc.dtype))
