"""How alike two explanations are, per sample: rank correlation, top-k overlap, cosine.

All take two attribution tensors of the same shape [B, *F] and return [B] (fp32): the
comparison of sample b of ``a`` with sample b of ``b`` over its flattened features.

>>> from fastxai.evaluation import similarity
>>> rho = similarity.rank_correlation(a.abs(), b.abs())
"""

from __future__ import annotations

import torch


def _pair(a: object, b: object) -> tuple[torch.Tensor, torch.Tensor]:
    for name, tensor in (("a", a), ("b", b)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() < 2:
            raise ValueError(f"{name} must be [batch, features...], got shape {tuple(tensor.shape)}")
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1).to(a.device)


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 along dim 1 with ties given their average rank (as scipy.stats.rankdata - 1)."""
    n = values.shape[1]
    sorted_values, order = values.sort(dim=1, stable=True)
    positions = torch.arange(n, device=values.device, dtype=torch.float64).expand_as(sorted_values)
    # Runs of equal values: each run gets the mean of its positions.
    new_run = torch.ones_like(sorted_values, dtype=torch.bool)
    new_run[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    run_id = new_run.cumsum(dim=1) - 1
    run_sum = torch.zeros_like(positions).scatter_add_(1, run_id, positions)
    run_count = torch.zeros_like(positions).scatter_add_(1, run_id, torch.ones_like(positions))
    mean_rank = (run_sum / run_count.clamp(min=1)).gather(1, run_id)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation per sample (ties take their average rank): [B] in [-1, 1], fp64.

    A sample whose features are all equal in ``a`` or ``b`` has no ranking: its correlation is
    NaN, as in scipy.
    """
    a2, b2 = _pair(a, b)
    ra, rb = _average_ranks(a2.double()), _average_ranks(b2.double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    return (ra * rb).sum(dim=1) / denominator


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the ``k`` largest features of ``a`` that are also among the ``k`` largest of
    ``b`` (Ghorbani et al. 2019): [B] in [0, 1]. Compare magnitudes by passing ``a.abs()``."""
    a2, b2 = _pair(a, b)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= a2.shape[1]:
        raise ValueError(f"k must be an int in [1, {a2.shape[1]}], got {k!r}")
    top_a = torch.zeros_like(a2, dtype=torch.bool).scatter_(1, a2.topk(k, dim=1).indices, True)
    top_b = torch.zeros_like(b2, dtype=torch.bool).scatter_(1, b2.topk(k, dim=1).indices, True)
    return (top_a & top_b).sum(dim=1).float() / k


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per sample: [B]; 0 where either explanation is all zeros."""
    a2, b2 = _pair(a, b)
    a2, b2 = a2.float(), b2.float()
    denominator = a2.norm(dim=1) * b2.norm(dim=1)
    return torch.where(denominator > 0, (a2 * b2).sum(dim=1) / denominator.clamp(min=1e-30), 0.0)
