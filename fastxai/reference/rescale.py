"""Reference implementation of DeepLIFT's Rescale rule on the ReLU family, applied to a gradient.

DeepLIFT runs the model on the inputs and on their baselines. A nonlinearity ``y = f(x)`` sees an
input's pre-activation ``a`` and its baseline's ``b`` (the same element of the baseline's pass),
and its backward passes ``g * m`` instead of ``g * f'(a)``, with the multiplier

    m = (f(a) - f(b)) / (a - b)        (f'(a) where |a - b| < eps)

(Shrikumar et al., "Learning important features through propagating activation differences",
ICML 2017). For ``f(v) = v if v > 0 else negative_slope * v`` (``relu``: slope 0, ``leaky_relu``)
``f'(a)`` is the mask ``1 if a > 0 else negative_slope``, so the whole backward is one
elementwise pass over ``grad``, ``x`` and ``reference``. Computed in float32 (float64 for float64
inputs; ``negative_slope`` and ``eps`` rounded to float32 otherwise) and returned in grad's dtype.
"""

from __future__ import annotations

import torch


def rescale_backward(
    grad: torch.Tensor, x: torch.Tensor, reference: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    """``out = grad * m`` elementwise, ``m`` as in the module docstring with ``a = x``, ``b = reference``.

    grad, x, reference: the same shape and dtype; eps > 0. Returns grad's shape and dtype.

    >>> x, reference = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0])
    >>> rescale_backward(torch.ones(2), x, reference, 1e-10)  # m = [1, 0.5]
    tensor([1.0000, 0.5000])
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    slope = torch.tensor(negative_slope, dtype=compute, device=x.device)
    threshold = torch.tensor(eps, dtype=compute, device=x.device)
    a, b = x.to(compute), reference.to(compute)
    f_a = torch.where(a > 0, a, a * slope)
    f_b = torch.where(b > 0, b, b * slope)
    gap = a - b
    derivative = torch.where(a > 0, torch.ones_like(a), slope)
    multiplier = torch.where(gap.abs() < threshold, derivative, (f_a - f_b) / gap)
    return (grad.to(compute) * multiplier).to(grad.dtype)
