"""Reference implementation of DeepLIFT's Rescale rule on the ReLU family, applied to a gradient.

DeepLIFT runs the model on ``2N`` rows, ``N`` inputs then their ``N`` baselines. A nonlinearity
``y = f(x)`` sees an input's pre-activation ``a = x[i]`` and its baseline's ``b = x[N + i]``, and
its backward passes ``g * m`` to both rows instead of ``g * f'(x)``, with the multiplier

    m = (f(a) - f(b)) / (a - b)        (f'(a) where |a - b| < eps)

(Shrikumar et al., "Learning important features through propagating activation differences",
ICML 2017). For ``f(v) = v if v > 0 else negative_slope * v`` (``relu``: slope 0, ``leaky_relu``)
``f'(a)`` is the mask ``1 if a > 0 else negative_slope``, so the whole backward is one
elementwise pass over ``grad`` and ``x``. Computed in float32 (float64 for float64 inputs;
``negative_slope`` and ``eps`` rounded to float32 otherwise) and returned in grad's dtype.
"""

from __future__ import annotations

import torch


def rescale_backward(
    grad: torch.Tensor, x: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    """``out[i] = grad[i] * m_i``, ``out[N + i] = grad[N + i] * m_i`` for ``i < N``.

    grad, x: [2N, *F], same dtype; ``m_i`` as in the module docstring with ``a = x[i]``,
    ``b = x[N + i]``; eps > 0. Returns [2N, *F] in grad's dtype.

    >>> x = torch.tensor([[2.0, -1.0], [0.0, 1.0]])   # an input row, then its baseline row
    >>> rescale_backward(torch.ones(2, 2), x, 1e-10)  # m = [1, 0.5]
    tensor([[1.0000, 0.5000],
            [1.0000, 0.5000]])
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    slope = torch.tensor(negative_slope, dtype=compute, device=x.device)
    threshold = torch.tensor(eps, dtype=compute, device=x.device)
    a, b = x.to(compute).chunk(2)
    f_a = torch.where(a > 0, a, a * slope)
    f_b = torch.where(b > 0, b, b * slope)
    gap = a - b
    derivative = torch.where(a > 0, torch.ones_like(a), slope)
    multiplier = torch.where(gap.abs() < threshold, derivative, (f_a - f_b) / gap)
    out = grad.to(compute).unflatten(0, (2, -1)) * multiplier
    return out.flatten(0, 1).to(grad.dtype)
