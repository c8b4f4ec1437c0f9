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

from collections.abc import Callable
from typing import Any

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


class RescaledRelu(torch.autograd.Function):
    """``relu`` / ``leaky_relu`` whose backward is ``backward(grad, x, reference, eps, slope)``, a
    backend's ``rescale_backward`` (this module's for the reference backend). Every backend but
    the native one (a C++ autograd op, ``csrc/relu_rescale.cpp``) builds ``relu_rescale`` on it."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        reference: torch.Tensor,
        eps: float,
        negative_slope: float,
        backward: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, reference)
        ctx.eps, ctx.negative_slope, ctx.rescale = eps, negative_slope, backward
        return torch.nn.functional.leaky_relu(x, negative_slope) if negative_slope != 0 else torch.relu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, reference = ctx.saved_tensors
        tensors = (grad.contiguous(), x.contiguous(), reference.contiguous())
        return ctx.rescale(*tensors, ctx.eps, ctx.negative_slope), None, None, None, None


def relu_rescale(
    x: torch.Tensor, reference: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    """``relu(x)`` (``leaky_relu`` with ``negative_slope``) whose gradient with respect to ``x`` is
    ``rescale_backward(grad, x, reference, eps, negative_slope)``: DeepLIFT's Rescale rule as one
    differentiable op. x, reference: the same shape and dtype; returns x's shape and dtype.

    >>> x = torch.tensor([2.0, -1.0], requires_grad=True)
    >>> relu_rescale(x, torch.tensor([0.0, 1.0]), 1e-10).sum().backward()  # x.grad = [1, 0.5]
    """
    out: torch.Tensor = RescaledRelu.apply(x, reference, eps, negative_slope, rescale_backward)
    return out
