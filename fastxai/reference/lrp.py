"""Reference implementations of the LRP ops: the stabilised division and the final product.

An LRP rule redistributes the relevance ``R`` of a layer's outputs onto its inputs ``a``:
``z = layer(a)`` (with the rule's modified weights), ``s = R / (z + eps * sign0(z))``,
``c = layer^T(s)`` (the gradient of ``z`` against ``a`` applied to ``s``), ``R_in = a * c``.
These two functions are the elementwise ends of that sandwich; the transposed layer op in the
middle is autograd's. Shapes: any (``[N, *]`` in practice), elementwise.

Computed in float32 (float64 for float64 inputs) and returned in the inputs' dtype.

Bach et al., "On pixel-wise explanations for non-linear classifier decisions by layer-wise
relevance propagation", PLoS ONE 2015; Montavon et al., "Layer-wise relevance propagation:
an overview", 2019.
"""

from __future__ import annotations

import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lrp_divide(relevance: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``s = relevance / (z + eps * sign0(z))``; ``s = 0`` where that denominator is exactly 0.

    ``sign0(z) = +1`` where ``z >= 0`` (also ``-0.0``), else ``-1`` (also NaN); ``eps`` is rounded
    to float32 for inputs other than float64. relevance, z: same shape and dtype; returns that
    shape and dtype. The denominator is 0 only when ``eps == 0`` and ``z == 0``.

    >>> s = lrp_divide(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 0.0]]), 1.0)
    >>> s  # tensor([[1., 1.]])
    """
    compute_dtype = _compute_dtype(z.dtype)
    z_wide = z.to(compute_dtype)
    sign = torch.where(z_wide >= 0, 1.0, -1.0).to(compute_dtype)
    denominator = z_wide + eps * sign
    quotient = relevance.to(compute_dtype) / denominator
    return torch.where(denominator == 0, torch.zeros_like(quotient), quotient).to(relevance.dtype)


def lrp_product(
    activation: torch.Tensor,
    c: torch.Tensor,
    c_neg: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> torch.Tensor:
    """``activation * c``, or ``activation * (alpha * c - beta * c_neg)`` when ``c_neg`` is given.

    The second form is the alpha-beta rule's combination of the positive and negative parts.
    activation, c, c_neg: same shape and dtype; returns that shape and dtype. ``alpha`` and
    ``beta`` are rounded to float32 for inputs other than float64; the arithmetic is in the
    order written (no fused multiply-add).

    >>> lrp_product(torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([1.0]), 2.0, 1.0)
    >>> # tensor([10.])
    """
    compute_dtype = _compute_dtype(activation.dtype)
    a = activation.to(compute_dtype)
    if c_neg is None:
        return (a * c.to(compute_dtype)).to(activation.dtype)
    combined = alpha * c.to(compute_dtype) - beta * c_neg.to(compute_dtype)
    return (a * combined).to(activation.dtype)
