"""AttnLRP as a modified gradient: the rules of ``fastxai.lrp._nodes`` in the form
``R = value * gradient``, installed op by op while the model's own forward runs.

For a step ``z = f(a)`` whose relevance is ``R_z = z * g_z``, each LRP rule of the relevance pass
is a backward pass of ``f`` that gives ``R_a = a * g_a`` (Achtibat et al. 2024, "AttnLRP",
section 3; the "efficient" formulation). ``RuleMode`` (a ``TorchFunctionMode``, active during
the forward only) replaces these calls, whoever makes them (modules, functional calls, tensor
methods):

- linear maps (``F.linear``, convolutions, average pooling, ``interpolate``, ``fold``,
  ``matmul``/``bmm``/``addmm``/``einsum``, ``grouped_mm``: a mixture of experts' per-expert
  linear layers), epsilon rule
  ``R_a = a * W^T (R_z / (z + eps sign0(z)))``: the gradient of ``z`` is scaled by
  ``z / (z + eps sign0(z))`` (``fastxai.ops.lrp_divide``) before the op's own backward;
  ``eps`` is the Linear/Conv module's Epsilon rule, else the composite's stabiliser;
- a product of two relevance-carrying tensors (``q @ k^T``, ``attention @ v``, ``gate * up``):
  the uniform rule, each factor half: the gradient of the product is also halved;
- element-wise nonlinearities (relu, gelu, silu, tanh, sigmoid, powers with a constant
  exponent, ...), ``F.rms_norm``: the identity rule ``R_a = R_z``, i.e. the backward
  ``g_a = g_z * f(a) / a`` (0 where a = 0, and where ``f(a) / a`` overflows: ``sigmoid(a) / a``
  for a subnormal ``a``);
- ``F.layer_norm``: ``1/std`` a constant, the epsilon rule on the remaining affine map:
  ``q = g_z * (w / std) * y / (y + eps sign0(y))``, ``g_a = q - mean(q)``;
- softmax: AttnLRP's rule ``R_a = a * (R_z - y sum R_z)``, which is the plain gradient;
- ``F.scaled_dot_product_attention``: run as plain ops (``fastxai.lrp._attention``) so the
  rules above apply; boolean and causal masks become additive ``finfo.min`` masks (a row with
  every key masked then stays finite, as in the fused kernel);
- sums and differences (``x + y``, also with a constant: a bias, a position embedding, a
  mask), ``sum``, ``mean``, ``index_add`` (a mixture of experts adding each expert's rows): in
  proportion to the summands, stabilised as in the traced engine,
  ``R_x = x R_z / (z + eps sign0(z))``: the gradient scaled by ``z / (z + eps sign0(z))``,
  ``eps`` the composite's stabiliser (with ``R = z * g`` the plain gradient is this rule with
  ``eps = 0``; the stabiliser keeps the two engines' results equal);
- quotients by a normaliser (a relevance-carrying divisor shared by a group of elements, as
  Mixtral's router divides its top-k weights by their sum): the divisor is detached, a constant
  of the pass (``_errors.division_refusal``; other divisions are refused);
- ``F.batch_norm`` (eval mode; merged into the Linear/Conv module before it, as in the traced
  engine), ``F.group_norm``, max pooling, norms and standard deviations (constants of the pass),
  ``F.normalize``: ``fastxai.lrp._gradient_norms``;
- products and quotients by constants, moves and selections (view, cat, indexing, ``topk``,
  ``amax``, ``max`` / ``min`` (winner-take-all), ``unfold``, ...), dropout: the plain gradient.

Any other differentiable call on a relevance-carrying tensor raises ``UnsupportedLayerError``
naming the model's source line. "Relevance-carrying" is ``requires_grad``: the pass freezes the
parameters, so only values computed from the start layer require gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fastxai import ops
from fastxai.lrp import _attention, _gradient_norms
from fastxai.lrp._errors import UnsupportedLayerError, call_site, division_refusal

Tensor = torch.Tensor

LEDGER: ContextVar[list[Tensor] | None] = ContextVar("fastxai_lrp_ledger", default=None)
"""When a list: each softmax appends the relevance its rule absorbs, ``sum R_out - sum R_in``
per sample [B] (AttnLRP's softmax rule is not conservative); for conservation checks."""


def variables(value: Any) -> list[Tensor]:
    """The tensors in ``value`` (nested tuples, lists, dicts) that carry relevance."""
    if isinstance(value, Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in variables(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in variables(item)]
    return []


def _scale_gradient(z: Tensor, factor: Tensor | float) -> Tensor:
    if not z.requires_grad:  # e.g. computed under torch.no_grad() by the model
        return z
    z.register_hook(lambda grad: grad * factor)  # fires for z's own version, also after in-place ops
    return z


class _Identity(torch.autograd.Function):
    """``y = call(a)`` with the identity rule's backward ``g * y / a`` (0 where a = 0)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, call: Callable[[Tensor], Tensor], backend: str | None) -> Tensor:
        a = a.detach()  # the forward may run under RuleMode (from a module hook): plain ops here
        y = call(a)
        if y.shape != a.shape:
            raise UnsupportedLayerError(
                f"the identity rule needs an element-wise step, got {tuple(a.shape)} -> {tuple(y.shape)}"
            )
        ratio = ops.lrp_divide(y.to(a.dtype), a, 0.0, backend=backend)
        # f(a) / a overflows where a is subnormal and f(a) is not small (sigmoid(1e-39) / 1e-39:
        # squeeze-excitation gates of a faded channel); inf * 0 would make the whole relevance NaN:
        # those elements pass no relevance (R_a = a * g_a, with a ~ 0, could take next to none)
        ctx.save_for_backward(torch.where(torch.isfinite(ratio), ratio, 0.0))
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (ratio,) = ctx.saved_tensors
        return grad.to(ratio.dtype) * ratio, None, None


class _LayerNorm(torch.autograd.Function):
    """``F.layer_norm`` with AttnLRP's rule (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None,
        eps: float, stabilizer: float, backend: str | None,
    ) -> Tensor:  # fmt: skip
        a = a.detach()
        y = F.layer_norm(a, shape, weight, bias, eps)
        dims = tuple(range(a.dim() - len(shape), a.dim()))
        std = torch.sqrt(a.var(dims, unbiased=False, keepdim=True) + eps)
        factor = ops.lrp_divide(y, y, stabilizer, backend=backend) / std
        ctx.dims = dims
        ctx.save_for_backward(factor if weight is None else factor * weight)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (factor,) = ctx.saved_tensors
        q = grad * factor
        return (q - q.mean(ctx.dims, keepdim=True), *(None,) * 6)


class _Softmax(torch.autograd.Function):
    """Softmax with its plain gradient written out, recording what the rule absorbs (``LEDGER``)."""

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, dim: int, call: Callable[[Tensor], Tensor], ledger: list[Tensor]
    ) -> Tensor:
        y = call(a.detach())
        ctx.dim, ctx.ledger = dim, ledger
        ctx.save_for_backward(a, y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, y = ctx.saved_tensors
        grad_a = (y * (grad - (y * grad).sum(ctx.dim, keepdim=True))).to(a.dtype)
        relevance_in = torch.where(grad_a == 0, 0.0, a * grad_a)  # masked scores: finfo.min * 0
        ctx.ledger.append((y * grad).flatten(1).sum(1) - relevance_in.flatten(1).sum(1))
        return grad_a, None, None, None


def _functions(*names: str, modules: tuple[Any, ...] = (torch, Tensor, F)) -> set[Any]:
    """The functions ``names`` of torch, torch.Tensor and torch.nn.functional, where they exist."""
    return {getattr(module, name) for name in names for module in modules if hasattr(module, name)}


_LINEAR = _functions("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                     "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate", "fold",
                     modules=(F, torch))  # fmt: skip
# grouped_mm: a mixture of experts' per-expert linear layers, one matmul per group of rows
_MATMUL = _functions("matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "addmm", "baddbmm", "einsum",
                     "grouped_mm", "_grouped_mm")  # fmt: skip
_ADD_MATMUL = _functions("addmm", "baddbmm")  # the first argument is an addend, not a factor
_MUL = _functions("mul", "multiply", "__mul__", "__rmul__", "__imul__", "mul_")
_DIV = _functions("div", "divide", "true_divide", "__truediv__", "__itruediv__", "div_")
_RDIV = _functions("__rtruediv__", "__rdiv__")
_ELEMENTWISE = _functions(
    "relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "selu", "celu", "mish", "softplus",
    "hardtanh", "relu6", "hardswish", "hardsigmoid", "softsign", "rms_norm", "pow", "__pow__", "square",
)  # fmt: skip
_IN_PLACE: dict[Any, Any] = {
    getattr(module, name + "_"): getattr(torch, name)
    for name in ("relu", "tanh", "sigmoid")
    for module in (torch, Tensor)
    if hasattr(module, name + "_")
}
_SOFTMAX = _functions("softmax")
_PLAIN = _functions(
    # moves and copies
    "view", "view_as", "reshape", "reshape_as", "transpose", "swapaxes", "permute", "movedim", "t",
    "contiguous", "expand", "expand_as", "flatten", "unflatten", "squeeze", "unsqueeze", "__getitem__",
    "__setitem__", "split", "split_with_sizes", "tensor_split", "chunk", "unbind", "cat", "concat",
    "concatenate", "stack", "narrow", "select", "index_select", "gather", "roll", "flip", "repeat",
    "repeat_interleave", "tile", "pad", "to", "type", "type_as", "float", "double", "half", "bfloat16",
    "clone", "detach", "requires_grad_", "masked_fill", "masked_fill_", "where", "index_put_",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "neg", "negative", "__neg__", "__pos__", "cumsum", "topk", "as_strided", "amax", "unfold",
    "amin", "max", "min", "maximum", "minimum",
    "_pack_padded_sequence",  # reorders the rows; a recurrent module then refuses the packed input
)  # fmt: skip
_SUMS = _functions(
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "subtract", "__sub__", "__rsub__",
    "__isub__", "sum", "mean", "index_add", "index_add_",
)  # fmt: skip
_SDPA = F.scaled_dot_product_attention


def _name(func: Any) -> str:
    module = getattr(func, "__module__", None) or "torch.Tensor"
    return f"{module}.{getattr(func, '__name__', repr(func))}"


def _refusal(func: Any, reason: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"LRP (gradient engine) has no rule for {_name(func)} {reason}, called at {call_site()}. "
        "Rules exist for Linear/Conv/matmul (epsilon), products of two activations (uniform), "
        "element-wise activations and RMSNorm (identity), LayerNorm, GroupNorm, eval-mode BatchNorm, "
        "max pooling, norms as constants, softmax, scaled_dot_product_attention, sums and moves; "
        "compute this step from constants (e.g. under torch.no_grad()) "
        "or keep it out of the path from the start layer (layer=) to the output"
    )


class RuleMode(TorchFunctionMode):
    """Installs the rules on the calls of one forward pass (see the module docstring).

    ``stabilizer``: the epsilon of parameter-free steps and of linear ops outside a Linear/Conv
    module; ``epsilons``: the stack of the Linear/Conv modules being run (their Epsilon rule),
    pushed and popped by the engine's module hooks."""

    def __init__(self, stabilizer: float, backend: str | None = None) -> None:
        super().__init__()
        self.stabilizer, self.backend = stabilizer, backend
        self.epsilons: list[float] = []
        self.ledger = LEDGER.get()
        self.linear_outputs = _gradient_norms.LinearOutputs()  # for BatchNorm merging
        # torch turns a TypeError (UnsupportedLayerError is one) raised in a binary operator
        # (``x / y``) into NotImplemented and then "unsupported operand": the engine re-raises this
        self.failure: UnsupportedLayerError | None = None

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        try:
            hashable = hash(func) is not None
        except TypeError:
            hashable = False
        if not hashable or not (variables(args) or variables(kwargs)):
            return func(*args, **kwargs)
        output = self._rule(func, args, kwargs)
        self.linear_outputs.count(args, kwargs, output)
        return output

    def _rule(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if func in _PLAIN or (func in _SOFTMAX and self.ledger is None):
            return func(*args, **kwargs)
        if func in _LINEAR:
            eps = self.epsilons[-1] if self.epsilons else self.stabilizer  # the running Linear/Conv's
            product = len(variables(args[:2])) > 1
            if self.epsilons and not product:  # a Linear/Conv module's op: a BatchNorm may merge into it
                return self.linear_outputs.epsilon(func(*args, **kwargs), eps, self.backend)
            return self._epsilon(func(*args, **kwargs), eps, product)
        if func in _gradient_norms.RULES:  # normalisations, max pooling: their own module
            return _gradient_norms.RULES[func](self, func, args, kwargs)
        if func in _MATMUL:
            factors = args[1:3] if func in _ADD_MATMUL else args[1:] if func is torch.einsum else args[:2]
            return self._epsilon(func(*args, **kwargs), self.stabilizer, len(variables(factors)) > 1)
        if func in _SUMS:
            return self._epsilon(func(*args, **kwargs), self.stabilizer, False)
        if func in _MUL:
            output = func(*args, **kwargs)
            return _scale_gradient(output, 0.5) if len(variables(args[:2])) > 1 else output
        if func in _DIV or func in _RDIV:
            divisor = args[0] if func in _RDIV else args[1] if len(args) > 1 else kwargs.get("other")
            if not isinstance(divisor, Tensor) or not variables(divisor):
                return func(*args, **kwargs)
            if func in _RDIV:
                raise self.refuse(func, "of a constant by a relevance-carrying tensor")
            numerator = getattr(args[0], "shape", torch.Size())
            reason = division_refusal(bool(variables(args[0])), numerator, divisor.shape)
            if reason is not None:
                raise self.refuse(func, f"({reason})")
            constant = divisor.detach()  # the normaliser: a constant of the pass
            if len(args) > 1:
                return func(args[0], constant, *args[2:], **kwargs)
            return func(args[0], **{**kwargs, "other": constant})
        if func in _ELEMENTWISE or func in _IN_PLACE:
            return self._identity(func, args, kwargs)
        if func is F.layer_norm:
            return self._layer_norm(func, *args, **kwargs)
        if func in _SOFTMAX:
            dim = args[1] if len(args) > 1 else kwargs["dim"]
            rest = {key: value for key, value in kwargs.items() if key != "dim"}
            return _Softmax.apply(args[0], dim, lambda a: func(a, dim, *args[2:], **rest), self.ledger)
        if func is _SDPA:
            return self._attention(*args, **kwargs)
        output = func(*args, **kwargs)
        if variables(output) and getattr(func, "__name__", "") != "__get__":  # .T, .mT are moves
            raise self.refuse(func, "on a relevance-carrying tensor")
        return output

    def refuse(self, func: Any, reason: str) -> UnsupportedLayerError:
        self.failure = _refusal(func, reason)
        return self.failure

    def _epsilon(self, z: Tensor, eps: float, product: bool) -> Tensor:
        if not z.requires_grad:
            return z
        factor = ops.lrp_divide(z.detach(), z.detach(), eps, backend=self.backend)
        return _scale_gradient(z, factor * 0.5 if product else factor)

    def _identity(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        if variables(args[1:]) or variables(kwargs):
            raise self.refuse(func, "with a relevance-carrying parameter")
        base, rest = _IN_PLACE.get(func, func), list(args[1:])
        if "inplace" in kwargs:  # computed out of place: the model reads the returned tensor
            kwargs = {**kwargs, "inplace": False}
        elif base in (F.relu, F.leaky_relu, F.elu, F.selu, F.celu, F.hardtanh, F.relu6, F.hardswish,
                      F.hardsigmoid, F.silu, F.mish) and rest and isinstance(rest[-1], bool):  # fmt: skip
            rest[-1] = False  # the positional inplace flag, always these functions' last argument
        return _Identity.apply(args[0], lambda a: base(a, *rest, **kwargs), self.backend)

    def _layer_norm(
        self, func: Any, a: Tensor, shape: Any, weight: Tensor | None = None, bias: Tensor | None = None,
        eps: float = 1e-5,
    ) -> Tensor:  # fmt: skip
        if variables([weight, bias]):
            raise self.refuse(func, "with a relevance-carrying weight or bias")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return _LayerNorm.apply(a, shape, weight, bias, eps, self.stabilizer, self.backend)

    def _attention(
        self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
        dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:  # fmt: skip
        if enable_gqa and key.size(-3) != query.size(-3):  # query head h reads key head h // groups
            groups = query.size(-3) // key.size(-3)
            key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
        masked = None
        if is_causal:
            masked = query.new_ones((query.size(-2), key.size(-2)), dtype=torch.bool).tril().logical_not()
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            masked = attn_mask.logical_not() if masked is None else masked | attn_mask.logical_not()
            attn_mask = None
        if masked is not None:
            low = torch.finfo(query.dtype).min
            base = query.new_zeros(()) if attn_mask is None else attn_mask
            attn_mask = torch.where(masked, low, base)  # not base + low: that overflows to -inf
        with self:  # the plain ops, each under its rule
            return _attention.scaled_dot_product_attention(
                query, key, value, attn_mask, dropout_p, False, scale, False
            )


def identity_rule(a: Tensor, output: Tensor, backend: str | None = None) -> Tensor:
    """``output`` (computed from ``a`` by an element-wise module, without gradients) as the
    result of the identity rule: relevance passes to ``a`` unchanged."""
    return _Identity.apply(a, lambda _: output, backend)


__all__ = ["LEDGER", "RuleMode", "identity_rule", "variables"]
