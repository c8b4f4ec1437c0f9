"""Relevance handlers for the parameter-free steps of the graph, one per ``Step.kind``.

Each handler maps the relevance ``R`` of a node's output onto its input nodes:

- element-wise activations, dropout, casts (``pass``): ``R_in = R``;
- reshape / permute / transpose / getitem / cat / stack: the same elements moved back;
- sums ``x + y`` (and ``x - y``, ``x + bias``): in proportion to the contributions,
  ``R_x = x R / (z + eps sign0(z))`` (a constant addend absorbs its share, like a bias);
- ``x * c``, ``x / c`` with ``c`` constant: ``R_x = R``; ``x * y`` of two input-dependent
  tensors: ``R/2`` each (AttnLRP's uniform rule); ``x / g`` with ``g`` an input-dependent
  normaliser (a divisor shared by a group of elements: a row sum, linear attention's
  denominator) is ``x / c``, ``g`` a constant of the pass (``_errors.division_refusal``);
- matmul: the epsilon rule on ``z = A @ B``; when both depend on the input the two shares are
  halved (AttnLRP, Achtibat et al. 2024, "bilinear 50/50");
- mean / sum reductions and average pooling: the epsilon rule;
- max pooling: winner-take-all (or, with ``maxpool="average"``, as average pooling);
- softmax (AttnLRP): ``R_x = x * (R - y sum(R))``;
- LayerNorm (AttnLRP): ``1/std`` is a constant, the remaining affine map gets the epsilon
  rule: ``q = (w / std) R / (y + eps sign0(y))``, ``R_x = x * (q - mean(q))``;
- LocalResponseNorm (Binder et al. 2016, first-order Taylor): ``R_x = x * J^T (R / (J x))``
  with ``J`` the layer's Jacobian at ``x`` (computed with torch.func; a rarely used layer);
- copies and selections (``repeat_interleave``, ``tile``, ``unfold``, ``amax``, non-constant
  padding), maps affine in the input (``interpolate``, ``nn.Upsample``, functional convolutions
  with computed weights, ``addcmul``, ``einsum``) and powers: ``fastxai.lrp._maps``;
- ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (Arras et al. 2017, gates as constants): ``fastxai.lrp._recurrent``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from fastxai import ops
from fastxai.lrp import _linear, _maps, _recurrent, _structure
from fastxai.lrp._errors import division_refusal
from fastxai.lrp._forward import run_node
from fastxai.lrp._graph import Step, UnsupportedLayerError
from fastxai.lrp.rules import Pass, ZBox

Contributions = list[tuple[Any, torch.Tensor]]


@dataclass
class Context:
    env: dict[fx.Node, Any]
    dtype: torch.dtype
    stabilizer: float
    backend: str | None
    nonnegative: set[fx.Node]
    indices: dict[fx.Node, tuple[torch.Tensor, torch.Size]] = field(default_factory=dict)  # max pooling
    # a recurrent module's final states' relevance, from the getitems that read them (_recurrent)
    states: dict[fx.Node, torch.Tensor] = field(default_factory=dict)

    def value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, (tuple, list, slice, dict)):  # e.g. x[:, :H] with H a shape node
            return fx.node.map_arg(arg, self.env.__getitem__)
        return arg

    def wide(self, arg: Any) -> torch.Tensor:
        value = self.value(arg)
        return value.to(self.dtype) if isinstance(value, torch.Tensor) else value

    def variable(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg in self.steps

    steps: dict[fx.Node, Step] = field(default_factory=dict)

    def divide(self, relevance: torch.Tensor, z: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        eps = self.stabilizer if eps is None else eps
        return ops.lrp_divide(relevance, z.to(self.dtype), eps, backend=self.backend)

    def product(self, activation: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return ops.lrp_product(activation.to(self.dtype), c, backend=self.backend)


def argument(node: fx.Node, position: int, name: str, default: Any = None) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def unbroadcast(relevance: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Sum ``relevance`` over the dimensions that broadcasting added to a tensor of ``shape``."""
    if tuple(relevance.shape) == tuple(shape):
        return relevance
    extra = relevance.dim() - len(shape)
    if extra:
        relevance = relevance.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and relevance.shape[i] != 1)
    return relevance.sum(dim=dims, keepdim=True) if dims else relevance


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


# -- linear layers ----------------------------------------------------------------------------


def linear(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    source = step.source if step.source is not None else step.node.args[0]
    assert isinstance(source, fx.Node) and step.layer is not None and step.rule is not None
    inputs = ctx.wide(source)
    if isinstance(step.rule, ZBox):
        low = torch.as_tensor(step.rule.low, dtype=inputs.dtype, device=inputs.device)
        high = torch.as_tensor(step.rule.high, dtype=inputs.dtype, device=inputs.device)
        if bool((inputs < low).any()) or bool((inputs > high).any()):
            raise ValueError(
                f"inputs of {step.name!r} must lie in the ZBox rule's [low, high] "
                f"(low={step.rule.low}, high={step.rule.high}); set low and high to the data's range"
            )
    output = ctx.wide(step.node) if step.node in ctx.env else None  # dropped when the rule needs none
    result = _linear.propagate(
        step.layer, step.rule, inputs, output, relevance,
        nonnegative=source in ctx.nonnegative, backend=ctx.backend,
    )  # fmt: skip
    return [(source, result)]


def batchnorm(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    """A BatchNorm with no Linear/Conv before it: an element-wise affine map, epsilon rule."""
    source = step.node.args[0]
    assert isinstance(source, fx.Node) and step.module is not None
    if isinstance(step.rule, Pass):
        return [(source, relevance)]
    inputs = ctx.wide(source)
    weight = inputs.new_ones(inputs.shape[1])
    scale, _ = _linear.merge_batchnorm(weight.view(-1, 1), weight.new_zeros(weight.shape), step.module)
    s = ctx.divide(relevance, ctx.value(step.node), step.rule.stabilizer if step.rule else None)
    c = s * scale.view(1, -1, *([1] * (inputs.dim() - 2)))
    return [(source, ctx.product(inputs, c))]


def functional_linear(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    source, weight = node.args[0], argument(node, 1, "weight")
    if ctx.variable(weight):
        raise UnsupportedLayerError(f"F.linear with an input-dependent weight (node {node.name!r})")
    s = ctx.divide(relevance, ctx.value(node))
    return [(source, ctx.product(ctx.wide(source), s.matmul(ctx.wide(weight))))]


# -- moving elements ----------------------------------------------------------------------------


def passthrough(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    return [(step.node.args[0], relevance)]


def reshape(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    source = step.node.args[0]
    return [(source, relevance.reshape(ctx.value(source).shape))]


def transpose(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    if node.target is getattr:
        if node.args[1] == "mT":
            return [(node.args[0], relevance.transpose(-2, -1))]
        return [(node.args[0], relevance.permute(*reversed(range(relevance.dim()))))]
    dim0, dim1 = argument(node, 1, "dim0"), argument(node, 2, "dim1")
    return [(node.args[0], relevance.transpose(dim0, dim1))]


def permute(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    dims = node.args[1:] if len(node.args) > 2 else argument(node, 1, "dims")
    dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else list(dims)
    dims = [d % relevance.dim() for d in dims]
    inverse = sorted(range(len(dims)), key=dims.__getitem__)
    return [(node.args[0], relevance.permute(*inverse))]


def getitem(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    source, index = node.args[0], ctx.value(node.args[1])
    pieces = ctx.value(source)
    if isinstance(pieces, (tuple, list)):
        return _structure.tuple_item(step, ctx, relevance, pieces)
    parts = index if isinstance(index, tuple) else (index,)
    if any(not (part is None or part is Ellipsis or isinstance(part, (int, slice))) for part in parts):
        raise UnsupportedLayerError(f"indexing with tensors or lists (node {node.name!r}); use slices")
    result = torch.zeros_like(ctx.wide(source))
    result[index] += relevance
    return [(source, result)]


def cat(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    tensors, dim = argument(node, 0, "tensors"), argument(node, 1, "dim", 0)
    if step.kind == "stack":
        pieces = relevance.unbind(dim)
    else:
        pieces = relevance.split([ctx.value(t).shape[dim] for t in tensors], dim)
    return [(t, piece) for t, piece in zip(tensors, pieces, strict=True) if ctx.variable(t)]


# -- sums, products, matmul, reductions ------------------------------------------------------


def add(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    if "alpha" in node.kwargs or len(node.args) > 2:
        raise UnsupportedLayerError(f"add/sub with alpha (node {node.name!r})")
    operands = [node.args[0], argument(node, 1, "other")]
    z = ctx.value(node)
    s = ctx.divide(relevance, z)
    results: Contributions = []
    for position, operand in enumerate(operands):
        if not ctx.variable(operand):
            continue
        value = ctx.wide(operand)
        if step.kind == "sub" and position == 1:
            value = -value
        share = ctx.product(value.expand(z.shape), s)
        results.append((operand, unbroadcast(share, value.shape)))
    return results


def mul(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    operands = [node.args[0], argument(node, 1, "other")]
    variable = [op for op in operands if ctx.variable(op)]
    if step.kind == "div" and ctx.variable(operands[1]):
        numerator = ctx.value(operands[0])
        reason = division_refusal(
            ctx.variable(operands[0]), getattr(numerator, "shape", torch.Size()), ctx.value(operands[1]).shape
        )
        if reason is not None:
            raise UnsupportedLayerError(f"{reason} (node {node.name!r})")
        return [(operands[0], unbroadcast(relevance, numerator.shape))]  # the normaliser: a constant
    share = relevance if len(variable) == 1 else relevance * 0.5
    return [(op, unbroadcast(share, ctx.value(op).shape)) for op in variable]


def matmul(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    left, right = node.args[0], argument(node, 1, "other", argument(node, 1, "mat2"))
    a, b = ctx.wide(left), ctx.wide(right)
    if a.dim() < 2 or b.dim() < 2:
        raise UnsupportedLayerError(f"matmul with a 1-d operand (node {node.name!r})")
    s = ctx.divide(relevance, ctx.value(node))
    both = ctx.variable(left) and ctx.variable(right)
    results: Contributions = []
    if ctx.variable(left):
        c = unbroadcast(s.matmul(b.transpose(-2, -1)), a.shape)
        results.append((left, ctx.product(a, c * 0.5 if both else c)))
    if ctx.variable(right):
        c = unbroadcast(a.transpose(-2, -1).matmul(s), b.shape)
        results.append((right, ctx.product(b, c * 0.5 if both else c)))
    return results


def reduction(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    source = node.args[0]
    inputs = ctx.wide(source)
    dim, keepdim = argument(node, 1, "dim"), argument(node, 2, "keepdim", False)
    dims = tuple(range(inputs.dim())) if dim is None else _tuple(dim, 1)
    dims = tuple(d % inputs.dim() for d in dims)
    s = ctx.divide(relevance, ctx.value(node))
    if not keepdim:
        for d in sorted(dims):
            s = s.unsqueeze(d)
    if step.kind == "mean":
        count = 1
        for d in dims:
            count *= inputs.shape[d]
        s = s / count
    return [(source, ctx.product(inputs, s.expand(inputs.shape)))]


# -- pooling ------------------------------------------------------------------------------------

_AVGPOOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_MAXPOOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def pool_arguments(step: Step, names: Sequence[str]) -> dict[str, Any]:
    if step.module is not None:
        return {name: getattr(step.module, name) for name in names if hasattr(step.module, name)}
    node = step.node
    return {
        name: argument(node, i + 1, name)
        for i, name in enumerate(names)
        if argument(node, i + 1, name) is not None
    }


def _avgpool_vjp(s: torch.Tensor, inputs: torch.Tensor, args: dict[str, Any]) -> torch.Tensor:
    dims = inputs.dim() - 2
    kernel = _tuple(args["kernel_size"], dims)
    stride = _tuple(args.get("stride") or kernel, dims)
    padding = _tuple(args.get("padding", 0), dims)
    ceil_mode, include_pad = bool(args.get("ceil_mode", False)), bool(args.get("count_include_pad", True))
    divisor = args.get("divisor_override")
    if dims == 1:
        return torch.ops.aten.avg_pool2d_backward(
            s.unsqueeze(-2), inputs.unsqueeze(-2), (1, *kernel), (1, *stride), (0, *padding), ceil_mode,
            include_pad, divisor,
        ).squeeze(-2)  # fmt: skip
    backward = torch.ops.aten.avg_pool2d_backward if dims == 2 else torch.ops.aten.avg_pool3d_backward
    return backward(s, inputs, kernel, stride, padding, ceil_mode, include_pad, divisor)


def avgpool(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    source = step.node.args[0]
    inputs = ctx.wide(source)
    s = ctx.divide(relevance, ctx.value(step.node), _eps(step))
    c = _avgpool_vjp(s, inputs, pool_arguments(step, _AVGPOOL_ARGS))
    return [(source, ctx.product(inputs, c))]


def adaptive_avgpool(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    source = step.node.args[0]
    inputs = ctx.wide(source)
    s = ctx.divide(relevance, ctx.value(step.node), _eps(step))
    dims = inputs.dim() - 2
    if dims == 1:
        c = torch.ops.aten._adaptive_avg_pool2d_backward(s.unsqueeze(-2), inputs.unsqueeze(-2)).squeeze(-2)
    elif dims == 2:
        c = torch.ops.aten._adaptive_avg_pool2d_backward(s, inputs)
    else:
        c = torch.ops.aten._adaptive_avg_pool3d_backward(s, inputs)
    return [(source, ctx.product(inputs, c))]


def maxpool(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    source = step.node.args[0]
    if step.extra.get("mode") == "average":
        inputs = ctx.wide(source)
        args = pool_arguments(step, _MAXPOOL_ARGS)
        if _tuple(args.get("dilation", 1), inputs.dim() - 2) != (1,) * (inputs.dim() - 2):
            raise UnsupportedLayerError(f"maxpool='average' for the dilated max pooling {step.name!r}")
        args.update(count_include_pad=True, divisor_override=None)
        pool: Any = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[inputs.dim() - 3]
        kernel = args["kernel_size"]
        z = pool(
            inputs, kernel, args.get("stride") or kernel, args.get("padding", 0), args.get("ceil_mode", False)
        )
        c = _avgpool_vjp(ctx.divide(relevance, z, _eps(step)), inputs, args)
        return [(source, ctx.product(inputs, c))]
    indices, shape = ctx.indices.pop(step.node)
    if _linear.is_channels_last(relevance, indices):
        # the layout of the pass (see ``lrp``): scatter over [B, H*W, C] views, no layout copies
        batch, channels = shape[0], shape[1]
        result = relevance.new_zeros(batch, math.prod(shape[2:]), channels)
        result.scatter_add_(
            1,
            indices.permute(0, 2, 3, 1).reshape(batch, -1, channels),
            relevance.permute(0, 2, 3, 1).reshape(batch, -1, channels),
        )
        return [(source, result.view(batch, *shape[2:], channels).permute(0, 3, 1, 2))]
    result = relevance.new_zeros(shape[0], shape[1], math.prod(shape[2:]))
    result.scatter_add_(2, indices.flatten(2), relevance.flatten(2))
    return [(source, result.view(shape))]


def _eps(step: Step) -> float | None:
    return None if step.rule is None else step.rule.stabilizer


# -- attention and normalisation ------------------------------------------------------------


def softmax(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    dim = step.module.dim if step.module is not None else argument(node, 1, "dim")
    if dim is None:
        raise UnsupportedLayerError(f"softmax without an explicit dim (node {node.name!r})")
    output = ctx.wide(node)
    c = relevance - output * relevance.sum(dim, keepdim=True)
    return [(node.args[0], ctx.product(ctx.wide(node.args[0]), c))]


def layer_norm(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    source = node.args[0]
    inputs = ctx.wide(source)
    if step.module is not None:
        shape, weight, eps = step.module.normalized_shape, step.module.weight, step.module.eps
    else:
        shape, weight = argument(node, 1, "normalized_shape"), ctx.value(argument(node, 2, "weight"))
        eps = argument(node, 4, "eps", 1e-5)
        if ctx.variable(argument(node, 2, "weight")) or ctx.variable(argument(node, 3, "bias")):
            raise UnsupportedLayerError(
                f"layer_norm with input-dependent weight or bias (node {node.name!r})"
            )
    dims = tuple(range(inputs.dim() - len(_tuple(shape, 1)), inputs.dim()))
    std = torch.sqrt(inputs.var(dims, unbiased=False, keepdim=True) + eps)
    q = ctx.divide(relevance, ctx.value(node)) / std
    if weight is not None:
        q = q * weight.detach().to(ctx.dtype)
    return [(source, ctx.product(inputs, q - q.mean(dims, keepdim=True)))]


def group_norm(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    """GroupNorm as LayerNorm over each group (AttnLRP): ``1/std`` per sample and group is a
    constant, ``q = (w / std) R / (y + eps sign0(y))``, ``R_x = x * (q - mean_group(q))``."""
    node = step.node
    source = node.args[0]
    inputs = ctx.wide(source)
    if step.module is not None:
        groups, weight, eps = step.module.num_groups, step.module.weight, step.module.eps
    else:
        groups, weight = argument(node, 1, "num_groups"), ctx.value(argument(node, 2, "weight"))
        eps = argument(node, 4, "eps", 1e-5)
        if ctx.variable(argument(node, 2, "weight")) or ctx.variable(argument(node, 3, "bias")):
            raise UnsupportedLayerError(
                f"group_norm with input-dependent weight or bias (node {node.name!r})"
            )
    shape = inputs.shape
    grouped = inputs.reshape(shape[0], groups, -1)
    std = torch.sqrt(grouped.var(-1, unbiased=False, keepdim=True) + eps)
    q = ctx.divide(relevance, ctx.value(node))
    if weight is not None:
        q = q * weight.detach().to(ctx.dtype).view(1, -1, *([1] * (inputs.dim() - 2)))
    q = q.reshape(shape[0], groups, -1) / std
    return [(source, ctx.product(inputs, (q - q.mean(-1, keepdim=True)).reshape(shape)))]


def lrn(step: Step, ctx: Context, relevance: torch.Tensor) -> Contributions:
    node = step.node
    source = node.args[0]
    inputs = ctx.wide(source)
    if step.module is not None:
        module = step.module
        size, alpha, beta, k = module.size, module.alpha, module.beta, module.k
    else:
        size = argument(node, 1, "size")
        alpha, beta, k = (
            argument(node, 2, "alpha", 1e-4),
            argument(node, 3, "beta", 0.75),
            argument(node, 4, "k", 1.0),
        )

    def layer(x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, size, alpha, beta, k)

    z = torch.func.jvp(layer, (inputs,), (inputs,))[1]  # z = J x: the first-order Taylor terms' sum
    s = ctx.divide(relevance, z)
    vjp = torch.func.vjp(layer, inputs)[1]
    return [(source, ctx.product(inputs, vjp(s)[0]))]


HANDLERS: dict[str, Callable[[Step, Context, torch.Tensor], Contributions]] = {
    "linear": linear, "batchnorm": batchnorm, "functional_linear": functional_linear,
    "pass": passthrough, "reshape": reshape, "transpose": transpose, "permute": permute,
    "getitem": getitem, "cat": cat, "stack": cat, "add": add, "sub": add, "mul": mul, "div": mul,
    "matmul": matmul, "mean": reduction, "sum": reduction, "avgpool": avgpool,
    "adaptive_avgpool": adaptive_avgpool, "maxpool": maxpool, "adaptive_maxpool": maxpool,
    "softmax": softmax, "layer_norm": layer_norm, "group_norm": group_norm, "lrn": lrn,
    **_structure.HANDLERS, **_maps.HANDLERS, **_recurrent.HANDLERS,
}  # fmt: skip


__all__ = ["HANDLERS", "Context", "run_node"]
