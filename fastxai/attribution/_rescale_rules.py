"""DeepLIFT's Rescale rule per nonlinearity: which calls it covers and their autograd functions.

Each function runs on the inputs' pass ``x`` (which needs a gradient) and is given what the same
call saw in the baselines' pass (``x_ref``, and the outputs there): its backward passes
``g * m`` instead of ``g * f'(x)``, with the multiplier

    m = (f(x) - f(x_ref)) / (x - x_ref)        (f'(x) where |x - x_ref| < eps)

(Shrikumar et al. 2017). See ``fastxai.attribution._rescale`` for how calls are paired.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fastxai import ops

Tensor = torch.Tensor

RELU = {F.relu, torch.relu, Tensor.relu}
SIGMOID = {torch.sigmoid, Tensor.sigmoid}
TANH = {torch.tanh, Tensor.tanh}
ELEMENTWISE: set[Any] = {
    *RELU,
    *SIGMOID,
    *TANH,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.softplus,
    F.hardtanh,
    F.relu6,
    F.hardsigmoid,
    F.hardswish,
    F.softsign,
    F.logsigmoid,
}
IN_PLACE: dict[Any, Any] = {
    torch.relu_: torch.relu,
    Tensor.relu_: torch.relu,
    torch.sigmoid_: torch.sigmoid,
    Tensor.sigmoid_: torch.sigmoid,
    torch.tanh_: torch.tanh,
    Tensor.tanh_: torch.tanh,
    F.elu_: F.elu,
    F.leaky_relu_: F.leaky_relu,
    F.hardtanh_: F.hardtanh,
    torch.selu_: F.selu,
    torch.celu_: F.celu,
}
MAX_POOL: dict[Any, tuple[int, Callable[..., tuple[Tensor, Tensor]]]] = {}
for _dims, _with_indices in (
    (1, F.max_pool1d_with_indices),
    (2, F.max_pool2d_with_indices),
    (3, F.max_pool3d_with_indices),
):
    for _func in (getattr(F, f"max_pool{_dims}d"), _with_indices, getattr(torch, f"max_pool{_dims}d")):
        MAX_POOL[_func] = (_dims, _with_indices)
POOL_ARGUMENTS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
SOFTMAX = {
    F.softmax: False,
    torch.softmax: False,
    Tensor.softmax: False,
    F.log_softmax: True,
    torch.log_softmax: True,
    Tensor.log_softmax: True,
}

# Dtypes the fused relu path takes (fastxai.ops.rescale_backward's); others keep the PyTorch one.
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Pre-activations of a model run under autocast (``dtype=``): the multipliers of the rules
below are computed from them in float32, as ``rescale_backward`` computes relu's; in half
precision ``f(x) - f(x_ref)`` of two nearby values keeps few of its bits (a sigmoid near 0.5
is spaced 2**-9 in bfloat16)."""


def _widened(x: Tensor) -> Tensor:
    return x.float() if x.dtype in HALF_DTYPES else x


_inplace_position: dict[Any, int | None] = {}


def out_of_place(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[[Tensor], Tensor], bool]:
    """``func`` applied out of place to a new first argument, and whether the call was in place."""
    if func in IN_PLACE:
        base, rest = IN_PLACE[func], args[1:]
        return (lambda t: base(t, *rest, **kwargs)), True
    if func not in _inplace_position:  # where a Python function takes ``inplace``, found once
        try:
            names = list(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            names = []
        _inplace_position[func] = names.index("inplace") if "inplace" in names else None
    position = _inplace_position[func]
    inplace = bool(kwargs.get("inplace", False))
    if position is not None and len(args) > position:
        inplace = bool(args[position])
        args = (*args[:position], False, *args[position + 1 :])
    if "inplace" in kwargs:
        kwargs = {**kwargs, "inplace": False}
    rest = args[1:]
    return (lambda t: func(t, *rest, **kwargs)), inplace


def _derivative(func: Any, call: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """``f'(x)`` for the rows where the Rescale quotient is undefined (``y = f(x)``)."""
    if func in RELU:
        return x > 0  # a bool mask: torch.where promotes it, one quarter of the memory
    if func in SIGMOID:
        return y * (1 - y)
    if func in TANH:
        return 1 - y * y
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(call(leaf).sum(), leaf)
    return grad


class ReluRescale(torch.autograd.Function):
    """relu and leaky_relu (``f(v) = v`` for ``v > 0``, else ``negative_slope * v``): the forward
    keeps the pre-activations ``x`` and ``x_ref``, the backward is one fused elementwise pass,
    ``fastxai.ops.rescale_backward`` (multiplier with its ``f'`` fallback, times the gradient).
    ``in_place``: the in-place form of the call, for an in-place call: x is copied for the
    backward and overwritten (no new output and no copy back)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        x_ref: Tensor,
        call: Callable[[Tensor], Tensor],
        negative_slope: float,
        eps: float,
        in_place: Callable[[Tensor], Tensor] | None,
    ) -> Tensor:
        ctx.negative_slope, ctx.eps = negative_slope, eps
        if in_place is None:
            ctx.save_for_backward(x, x_ref)
            return call(x)
        ctx.save_for_backward(x.clone(), x_ref)
        ctx.mark_dirty(x)
        return in_place(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, x_ref = ctx.saved_tensors
        if grad.is_contiguous() and x.is_contiguous() and x_ref.is_contiguous():
            # The arguments are the op's own form by construction (same shape, dtype, device; eps
            # and slope checked when the rule was set up): skip the public op's checks.
            unchecked = ops._unchecked("rescale_backward", None, grad)
            return unchecked(grad, x, x_ref, ctx.eps, ctx.negative_slope), None, None, None, None, None
        return ops.rescale_backward(grad, x, x_ref, ctx.eps, ctx.negative_slope), None, None, None, None, None


def relu_in_place(func: Any, negative_slope: float) -> Callable[[Tensor], Tensor]:
    """The in-place form of a relu / leaky_relu call (the same values, signed zeros included)."""
    if func in (F.leaky_relu, F.leaky_relu_):
        return lambda t: F.leaky_relu_(t, negative_slope)
    return torch.relu_


def relu_slope(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    """The negative slope of a relu / leaky_relu call (0 for relu), None for other functions."""
    if func in RELU or func in (torch.relu_, Tensor.relu_):
        return 0.0
    if func in (F.leaky_relu, F.leaky_relu_):
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        if isinstance(slope, (int, float)) and not isinstance(slope, bool) and math.isfinite(slope):
            return float(slope)
    return None


class ElementwiseRescale(torch.autograd.Function):
    """``y = f(x)``; backward ``g * m``, ``m = (y - y_ref) / (x - x_ref)`` (``f'(x)`` where close)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        x_ref: Tensor,
        y_ref: Tensor,
        func: Any,
        call: Callable[[Tensor], Tensor],
        eps: float,
    ) -> Tensor:
        y = call(x)
        if x.dtype in HALF_DTYPES:  # the multiplier in float32, from the same half-precision pair
            x, x_ref = x.float(), x_ref.float()
            y_ref = call(x_ref)
            with torch.no_grad():
                y_wide = call(x)
        else:
            y_wide = y
        if func in RELU:
            # (relu(a) - relu(b)) / (a - b) is the share of [min, max] above zero:
            # clamp(max(a, b) / |a - b|, 0, 1), which is also relu's derivative where a = b
            # (+-inf clamps to 1 or 0; 0/0 at a = b = 0 becomes 0). No torch.where, which is
            # ten times slower than this arithmetic on a CPU.
            gap = torch.sub(x, x_ref).abs_()
            multiplier = torch.maximum(x, x_ref).div_(gap).clamp_(0, 1).nan_to_num_(0.0)
        else:
            gap = torch.sub(x, x_ref)
            multiplier = torch.sub(y_wide, y_ref).div_(gap)
            gap.abs_()
        small = gap.lt_(eps)  # 1.0 where |a - b| < eps: there the multiplier is f'(a)
        if x.is_cuda or bool(small.max() > 0):  # rare on a CPU, where torch.where is slow
            derivative = _derivative(func, call, x.detach(), y_wide.detach())
            multiplier = torch.where(small.bool(), derivative, multiplier)
        ctx.save_for_backward(multiplier)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (multiplier,) = ctx.saved_tensors
        return grad * multiplier, None, None, None, None, None


class MaxPoolRescale(torch.autograd.Function):
    """Max pooling with Captum's DeepLIFT rule: for pooled outputs ``y`` (input) and ``y_ref``
    (baseline) and ``top = max(y, y_ref)``, the input's arg-max receives ``g * (top - y_ref)``
    and the baseline's arg-max ``g * (y - top)``; the multiplier is that sum over the input
    difference."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        x_ref: Tensor,
        y_ref: Tensor,
        index_ref: Tensor,
        dims: int,
        pool: Callable[..., tuple[Tensor, Tensor]],
        params: tuple[Any, ...],
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        y, indices = pool(x, *params)
        top = torch.maximum(y, y_ref)
        ctx.save_for_backward(x - x_ref, indices, index_ref, top - y_ref, y - top)
        ctx.dims, ctx.eps = dims, eps
        ctx.mark_non_differentiable(indices)
        return y, indices

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_indices: Any) -> tuple[Tensor | None, ...]:
        delta, index, index_ref, up, down = ctx.saved_tensors
        planes = delta.shape[: delta.dim() - ctx.dims].numel()
        delta_flat = delta.reshape(planes, -1)
        index, index_ref = index.reshape(planes, -1), index_ref.reshape(planes, -1)
        spread = torch.zeros_like(delta_flat)
        spread.scatter_add_(1, index, (grad * up).reshape(planes, -1))
        spread.scatter_add_(1, index_ref, (grad * down).reshape(planes, -1))
        multiplied = spread.div_(delta_flat)
        small = delta_flat.abs().lt_(ctx.eps)  # there: max pooling's plain gradient
        if grad.is_cuda or bool(small.max() > 0):
            plain = torch.zeros_like(delta_flat).scatter_add_(1, index, grad.reshape(planes, -1))
            multiplied = torch.where(small.bool(), plain, multiplied)
        return multiplied.reshape(delta.shape), None, None, None, None, None, None, None


class SoftmaxRescale(torch.autograd.Function):
    """(log-)softmax along ``dim`` as ``u = z - log(sum exp z)`` (then ``y = exp u`` for
    softmax), Rescale on each elementary step (``exp``, the sum, ``log``). With
    ``c_j = (dlog S / dS)(de_j / dz_j)`` (``e = exp z``, ``S = sum e``) and ``a_i = dy_i / du_i``
    (1 for log_softmax), all as differences over the pair, the backward is
    ``g_j a_j - c_j sum_i g_i a_i``: the summation is exact, and it tends to the true Jacobian
    as the pair's difference goes to zero."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, x_ref: Tensor, dim: int, log: bool, eps: float) -> Tensor:
        y = F.log_softmax(x, dim) if log else F.softmax(x, dim)
        y_out, x, x_ref = y, _widened(x), _widened(x_ref)  # the slopes in float32 for half precision
        if x.dtype != y.dtype:
            y = F.log_softmax(x, dim) if log else F.softmax(x, dim)
        # dlog S / dS times de_j is invariant to a common shift of both exponents, which keeps
        # them finite (the smaller side may underflow to 0, its share negligible).
        shift = torch.maximum(x.amax(dim, keepdim=True), x_ref.amax(dim, keepdim=True))
        exp_in, exp_ref = (x - shift).exp(), (x_ref - shift).exp()
        sum_in = exp_in.sum(dim, keepdim=True)
        delta_sum = sum_in - exp_ref.sum(dim, keepdim=True)
        delta_log = x.logsumexp(dim, keepdim=True) - x_ref.logsumexp(dim, keepdim=True)
        log_slope = torch.where(delta_sum.abs() < eps, 1 / sum_in, delta_log / delta_sum)
        # equal on both sides counts as no difference: masked scores (-inf in both passes, whose
        # difference is nan) take the derivative, exp(-inf) = 0, instead of 0 / nan
        delta_in = x - x_ref
        same_in = (delta_in.abs() < eps) | (x == x_ref)
        exp_slope = torch.where(same_in, exp_in, (exp_in - exp_ref) / delta_in)
        outer = None
        if not log:
            y_ref = F.softmax(x_ref, dim)
            u, u_ref = F.log_softmax(x, dim), F.log_softmax(x_ref, dim)
            delta_u = u - u_ref
            outer = torch.where((delta_u.abs() < eps) | (u == u_ref), y, (y - y_ref) / delta_u)
        ctx.save_for_backward(exp_slope * log_slope, outer)
        ctx.dim = dim
        return y_out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        share, outer = ctx.saved_tensors
        if outer is not None:
            grad = grad * outer
        return grad - share * grad.sum(ctx.dim, keepdim=True), None, None, None, None
