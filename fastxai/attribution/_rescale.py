"""DeepLIFT's Rescale rule on every nonlinearity a forward pass applies, modules and functional calls.

The forward pass runs on ``2N`` rows: ``N`` inputs, then their ``N`` baselines in the same
order. Each nonlinearity ``y = f(x)`` sees both halves at once, ``x = [x_a; x_b]``, and its
backward passes ``g * m`` instead of ``g * f'(x)``, where the multiplier is

    m = (f(x_a) - f(x_b)) / (x_a - x_b)        (f'(x_a) where |x_a - x_b| < eps)

(Shrikumar et al. 2017, the Rescale rule). The chain of multipliers then satisfies DeepLIFT's
summation-to-delta: ``sum_i m_i (x_i - x'_i) = f_target(x) - f_target(x')`` exactly for a
network of linear maps and the nonlinearities below.

Which calls. A ``torch.overrides.TorchFunctionMode`` (active only for the forward pass)
replaces every call of the nonlinear functions below, whoever makes it: ``nn.ReLU`` and the
other activation modules (they call these functions), functional calls (``torch.relu``,
``F.relu``, ``x.relu()``, in-place forms), and a module applied several times, each call
paired with its own baseline rows. Captum hooks modules instead and so misses functional
ReLUs and raises on reused modules (its issues 199, 578, 1082).

- elementwise: relu and leaky_relu (their whole backward is one fused op,
  ``fastxai.ops.rescale_backward``, on the saved pre-activation), elu, selu, celu, gelu,
  silu, mish, softplus, sigmoid, tanh, hardtanh, relu6, hardsigmoid, hardswish, softsign,
  logsigmoid;
- max pooling (1d/2d/3d): Captum's rule, the difference of the pooled outputs split between
  the input's and the baseline's arg-max positions (overlapping windows add up where Captum's
  unpooling keeps one write);
- softmax and log_softmax: Rescale applied to their elementary steps (``exp``, the sum, the
  ``log`` of the sum), which keeps the summation exact. Captum instead treats softmax as
  elementwise and subtracts a mean taken over the whole tensor, all rows of the batch
  together (so an example's attribution depends on the others in its batch).

Any other operation passes its plain gradient; the rows of a batch must not interact
(BatchNorm in training mode would mix inputs with baselines).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fastxai import ops

Tensor = torch.Tensor

_RELU = {F.relu, torch.relu, Tensor.relu}
_SIGMOID = {torch.sigmoid, Tensor.sigmoid}
_TANH = {torch.tanh, Tensor.tanh}
_ELEMENTWISE: set[Any] = {
    *_RELU,
    *_SIGMOID,
    *_TANH,
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
_IN_PLACE: dict[Any, Any] = {
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
_MAX_POOL: dict[Any, tuple[int, Callable[..., tuple[Tensor, Tensor]]]] = {}
for _dims, _with_indices in (
    (1, F.max_pool1d_with_indices),
    (2, F.max_pool2d_with_indices),
    (3, F.max_pool3d_with_indices),
):
    for _func in (getattr(F, f"max_pool{_dims}d"), _with_indices, getattr(torch, f"max_pool{_dims}d")):
        _MAX_POOL[_func] = (_dims, _with_indices)
_POOL_ARGUMENTS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_SOFTMAX = {
    F.softmax: False,
    torch.softmax: False,
    Tensor.softmax: False,
    F.log_softmax: True,
    torch.log_softmax: True,
    Tensor.log_softmax: True,
}

# Dtypes the fused relu path takes (fastxai.ops.rescale_backward's); others keep the PyTorch one.
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_inplace_position: dict[Any, int | None] = {}


def _out_of_place(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[[Tensor], Tensor], bool]:
    """``func`` applied out of place to a new first argument, and whether the call was in place."""
    if func in _IN_PLACE:
        base, rest = _IN_PLACE[func], args[1:]
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
    if func in _RELU:
        return x > 0  # a bool mask: torch.where promotes it, one quarter of the memory
    if func in _SIGMOID:
        return y * (1 - y)
    if func in _TANH:
        return 1 - y * y
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(call(leaf).sum(), leaf)
    return grad


class _ReluRescale(torch.autograd.Function):
    """relu and leaky_relu (``f(v) = v`` for ``v > 0``, else ``negative_slope * v``): the forward
    keeps the pre-activation ``x``, the backward is one fused elementwise pass,
    ``fastxai.ops.rescale_backward`` (multiplier with its ``f'`` fallback, times the gradient,
    both halves), instead of building and storing the multiplier in several passes.
    ``in_place``: the in-place form of the call, for an in-place call: x is copied for the
    backward and overwritten (no new output and no copy back)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        call: Callable[[Tensor], Tensor],
        negative_slope: float,
        eps: float,
        in_place: Callable[[Tensor], Tensor] | None,
    ) -> Tensor:
        ctx.negative_slope, ctx.eps = negative_slope, eps
        if in_place is None:
            ctx.save_for_backward(x)
            return call(x)
        ctx.save_for_backward(x.clone())
        ctx.mark_dirty(x)
        return in_place(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return ops.rescale_backward(grad, x, ctx.eps, ctx.negative_slope), None, None, None, None


def _relu_in_place(func: Any, negative_slope: float) -> Callable[[Tensor], Tensor]:
    """The in-place form of a relu / leaky_relu call (the same values, signed zeros included)."""
    if func in (F.leaky_relu, F.leaky_relu_):
        return lambda t: F.leaky_relu_(t, negative_slope)
    return torch.relu_


def _relu_slope(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    """The negative slope of a relu / leaky_relu call (0 for relu), None for other functions."""
    if func in _RELU or func in (torch.relu_, Tensor.relu_):
        return 0.0
    if func in (F.leaky_relu, F.leaky_relu_):
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        if isinstance(slope, (int, float)) and not isinstance(slope, bool) and math.isfinite(slope):
            return float(slope)
    return None


class _ElementwiseRescale(torch.autograd.Function):
    """``y = f(x)``; backward ``g * m`` with each half's rows using the pair's multiplier."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, func: Any, call: Callable[[Tensor], Tensor], eps: float) -> Tensor:
        y = call(x)
        x_in, x_ref = x.chunk(2)
        if func in _RELU:
            # (relu(a) - relu(b)) / (a - b) is the share of [min, max] above zero:
            # clamp(max(a, b) / |a - b|, 0, 1), which is also relu's derivative where a = b
            # (+-inf clamps to 1 or 0; 0/0 at a = b = 0 becomes 0). No torch.where, which is
            # ten times slower than this arithmetic on a CPU.
            gap = torch.sub(x_in, x_ref).abs_()
            multiplier = torch.maximum(x_in, x_ref).div_(gap).clamp_(0, 1).nan_to_num_(0.0)
        else:
            y_in, y_ref = y.chunk(2)
            gap = torch.sub(x_in, x_ref)
            multiplier = torch.sub(y_in, y_ref).div_(gap)
            gap.abs_()
        small = gap.lt_(eps)  # 1.0 where |a - b| < eps: there the multiplier is f'(a)
        if x.is_cuda or bool(small.max() > 0):  # rare on a CPU, where torch.where is slow
            derivative = _derivative(func, call, x_in, y.chunk(2)[0])
            multiplier = torch.where(small.bool(), derivative, multiplier)
        ctx.save_for_backward(multiplier)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (multiplier,) = ctx.saved_tensors
        return (grad.unflatten(0, (2, -1)) * multiplier).flatten(0, 1), None, None, None


class _MaxPoolRescale(torch.autograd.Function):
    """Max pooling with Captum's DeepLIFT rule: for pooled outputs ``y`` (input) and ``y'``
    (baseline) and ``top = max(y, y')``, the input's arg-max receives ``g * (top - y')`` and the
    baseline's arg-max ``g * (y - top)``; the multiplier is that sum over the input difference."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        dims: int,
        pool: Callable[..., tuple[Tensor, Tensor]],
        params: tuple[Any, ...],
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        y, indices = pool(x, *params)
        x_in, x_ref = x.chunk(2)
        y_in, y_ref = y.chunk(2)
        top = torch.maximum(y_in, y_ref)
        index_in, index_ref = indices.chunk(2)
        ctx.save_for_backward(x_in - x_ref, index_in, index_ref, top - y_ref, y_in - top)
        ctx.dims, ctx.eps = dims, eps
        ctx.mark_non_differentiable(indices)
        return y, indices

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_indices: Any) -> tuple[Tensor | None, ...]:
        delta_in, index_in, index_ref, up, down = ctx.saved_tensors
        grad_in = grad.chunk(2)[0]
        planes = delta_in.shape[: delta_in.dim() - ctx.dims].numel()
        delta_flat = delta_in.reshape(planes, -1)
        index_in, index_ref = index_in.reshape(planes, -1), index_ref.reshape(planes, -1)
        spread = torch.zeros_like(delta_flat)
        spread.scatter_add_(1, index_in, (grad_in * up).reshape(planes, -1))
        spread.scatter_add_(1, index_ref, (grad_in * down).reshape(planes, -1))
        multiplied = spread.div_(delta_flat)
        small = delta_flat.abs().lt_(ctx.eps)  # there: max pooling's plain gradient
        if grad.is_cuda or bool(small.max() > 0):
            plain = torch.zeros_like(delta_flat).scatter_add_(1, index_in, grad_in.reshape(planes, -1))
            multiplied = torch.where(small.bool(), plain, multiplied)
        multiplied = multiplied.reshape(delta_in.shape)
        return torch.cat([multiplied, multiplied]), None, None, None, None


class _SoftmaxRescale(torch.autograd.Function):
    """(log-)softmax along ``dim`` as ``u = z - log(sum exp z)`` (then ``y = exp u`` for
    softmax), Rescale on each elementary step (``exp``, the sum, ``log``). With
    ``c_j = (dlog S / dS)(de_j / dz_j)`` (``e = exp z``, ``S = sum e``) and ``a_i = dy_i / du_i``
    (1 for log_softmax), all as differences over the pair, the backward is
    ``g_j a_j - c_j sum_i g_i a_i``: the summation is exact, and it tends to the true Jacobian
    as the pair's difference goes to zero."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, log: bool, eps: float) -> Tensor:
        y = F.log_softmax(x, dim) if log else F.softmax(x, dim)
        x_in, x_ref = x.chunk(2)
        # dlog S / dS times de_j is invariant to a common shift of both halves' exponents,
        # which keeps them finite (the smaller half may underflow to 0, its share negligible).
        shift = torch.maximum(x_in.amax(dim, keepdim=True), x_ref.amax(dim, keepdim=True))
        exp_in, exp_ref = (x_in - shift).exp(), (x_ref - shift).exp()
        sum_in = exp_in.sum(dim, keepdim=True)
        delta_sum = sum_in - exp_ref.sum(dim, keepdim=True)
        delta_log = x_in.logsumexp(dim, keepdim=True) - x_ref.logsumexp(dim, keepdim=True)
        log_slope = torch.where(delta_sum.abs() < eps, 1 / sum_in, delta_log / delta_sum)
        delta_in = x_in - x_ref
        exp_slope = torch.where(delta_in.abs() < eps, exp_in, (exp_in - exp_ref) / delta_in)
        outer = None
        if not log:
            y_in, y_ref = y.chunk(2)
            delta_u = F.log_softmax(x_in, dim) - F.log_softmax(x_ref, dim)
            outer = torch.where(delta_u.abs() < eps, y_in, (y_in - y_ref) / delta_u)
        ctx.save_for_backward(exp_slope * log_slope, outer)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        share, outer = ctx.saved_tensors
        grad_in = grad.chunk(2)[0]
        if outer is not None:
            grad_in = grad_in * outer
        multiplied = grad_in - share * grad_in.sum(ctx.dim, keepdim=True)
        return torch.cat([multiplied, multiplied]), None, None, None


class RescaleMode(TorchFunctionMode):
    """While active, every supported nonlinearity applied to a tensor that needs a gradient
    runs with its DeepLIFT rule. ``rows`` is the model batch (inputs then baselines): a
    nonlinearity's argument must have a multiple of it as first dimension (a batch-major
    layout), or the halves would not pair inputs with baselines. Counts the calls."""

    def __init__(self, rows: int, eps: float) -> None:
        super().__init__()
        self.rows, self.eps = rows, eps
        self.calls = 0

    def _eps(self, x: Tensor) -> float:
        # At least the dtype's smallest normal number: a half-precision eps of 1e-10 would
        # round to 0 and leave 0/0 where the pair's values are equal.
        return max(self.eps, torch.finfo(x.dtype).tiny)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        elementwise = func in _ELEMENTWISE or func in _IN_PLACE
        if not (elementwise or func in _MAX_POOL or func in _SOFTMAX):
            return func(*args, **kwargs)
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor) or not x.requires_grad:
            return func(*args, **kwargs)
        if x.dim() == 0 or x.shape[0] % self.rows:
            name = getattr(func, "__name__", str(func))
            raise ValueError(
                f"model applies {name} to a tensor of shape {tuple(x.shape)} whose first dimension is not "
                f"a multiple of the model batch ({self.rows} rows: inputs, then baselines); DeepLIFT "
                "pairs each input row with its baseline row, so the batch must stay the first dimension"
            )
        self.calls += 1
        if elementwise:
            call, inplace = _out_of_place(func, args, kwargs)
            slope = _relu_slope(func, args, kwargs)
            if slope is not None and x.dtype in _FUSED_DTYPES:
                in_place = _relu_in_place(func, slope) if inplace else None
                return _ReluRescale.apply(x, call, slope, self._eps(x), in_place)  # x itself if in place
            else:
                output = _ElementwiseRescale.apply(x, func, call, self._eps(x))
            return x.copy_(output) if inplace else output
        if func in _MAX_POOL:
            return self._max_pool(func, x, args, kwargs)
        return self._softmax(func, x, args, kwargs)

    def _max_pool(self, func: Any, x: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        dims, pool = _MAX_POOL[func]
        given = {**dict(zip(_POOL_ARGUMENTS, args[1:], strict=False)), **kwargs}
        return_indices = bool(given.pop("return_indices", False)) or func is pool
        params = (
            given["kernel_size"],
            given.get("stride") or None,
            given.get("padding", 0),
            given.get("dilation", 1),
            bool(given.get("ceil_mode", False)),
        )
        output, indices = _MaxPoolRescale.apply(x, dims, pool, params, self._eps(x))
        return (output, indices) if return_indices else output

    def _softmax(self, func: Any, x: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        dtype = args[2] if len(args) > 2 and isinstance(args[2], torch.dtype) else kwargs.get("dtype")
        if dim is None:  # PyTorch's implicit choice for a softmax without dim
            dim = 0 if x.dim() in (0, 1, 3) else 1
        dim = dim % x.dim()
        if dim == 0:
            raise ValueError(
                "model applies softmax across the batch (dim 0): DeepLIFT needs rows that do not interact"
            )
        if dtype is not None:
            x = x.to(dtype)
        return _SoftmaxRescale.apply(x, dim, _SOFTMAX[func], self._eps(x))
