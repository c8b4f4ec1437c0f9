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


L2_DIVISION_EPS = 1e-10
"""Added to gradient norms before dividing, as torchattacks' PGDL2 does."""


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
    """One projected gradient step per sample, returned as a new tensor [B, *F] in x's dtype.

    ``linf``: ``x' = x_adv + step_size[b] * sign(grad)``, then
    ``x_orig + clamp(x' - x_orig, -eps[b], eps[b])``.
    ``l2``: ``x' = x_adv + step_size[b] * grad / (||grad[b]||_2 + 1e-10)``, then ``d = x' - x_orig`` is
    scaled by ``min(1, eps[b] / ||d||_2)`` (1 when ``d = 0``). Both end with a clamp to [lower, upper].

    x_adv, grad, x_orig: [B, *F] (same dtype); step_size, eps: [B] float32 (float64 for float64
    inputs). Computed in float32 (float64 for float64 inputs) in the order written above, which
    is torchattacks' order.
    """
    compute_dtype = torch.float64 if x_adv.dtype == torch.float64 else torch.float32
    batch = x_adv.shape[0]
    shape = (batch,) + (1,) * (x_adv.dim() - 1)
    adv = x_adv.to(compute_dtype)
    origin = x_orig.to(compute_dtype)
    gradient = grad.to(compute_dtype)
    alpha = step_size.to(compute_dtype).view(shape)
    radius = eps.to(compute_dtype).view(shape)
    if norm == "linf":
        stepped = adv + alpha * gradient.sign()
        delta = torch.minimum(torch.maximum(stepped - origin, -radius), radius)
    elif norm == "l2":
        grad_norm = gradient.reshape(batch, -1).norm(dim=1).view(shape) + L2_DIVISION_EPS
        stepped = adv + alpha * (gradient / grad_norm)
        delta = stepped - origin
        delta_norm = delta.reshape(batch, -1).norm(dim=1).view(shape)
        # min(1, eps / ||d||), written so that ||d|| = 0 gives 1 rather than 0 / 0.
        delta = delta * torch.where(delta_norm > radius, radius / delta_norm, torch.ones_like(delta_norm))
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return torch.clamp(origin + delta, lower, upper).to(x_adv.dtype)
