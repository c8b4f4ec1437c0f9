"""Relevance handlers that run the op again, on its own inputs, to move the relevance back
through it with the op's own backward (``J^T``): for ops whose rule is fixed by their algebra,
so no formula per op is needed.

- ``move`` (copies and selections that never mix values: ``repeat_interleave``, ``repeat``,
  ``tile``, ``flip``, ``Tensor.unfold``, ``F.unfold`` / ``nn.Unfold``, ``amax`` / ``amin``,
  ``max`` / ``min`` (``extremum``), an assignment ``x[index] = value`` into input-dependent data):
  ``R_x = J^T R``. Each copy's relevance returns to the element it copies (summed over the
  copies; overlapping windows alike), a maximum's to the element that won (ties share it, as
  the gradient does; winner-take-all, as for max pooling), an assigned element's to the value
  written there and the other elements' to the target: the total is conserved exactly, as for
  ``expand`` and max pooling.
- ``affine`` (maps affine in the input-dependent arguments with constant coefficients:
  ``F.interpolate`` / ``nn.Upsample`` in every mode, a functional convolution whose weight is
  computed from parameters, as NFNet's weight standardisation and TResNet's blur filter compute
  it, ``addcmul`` with one input-dependent tensor, ``einsum``): the epsilon rule of a linear
  layer, ``R_x = x * J_x^T (R / (z + eps sign0(z)))``; a constant term (a bias, ``addcmul``'s
  addend) absorbs its share. Where two operands depend on the input (``einsum`` of two
  activations, as ``matmul``), each takes half (AttnLRP's uniform rule for bilinear maps).
  Nearest and integer-scale upsampling are copies, for which this is ``move`` up to epsilon.

Arguments that must be constants are checked (a convolution's weight, ``interpolate``'s other
arguments): an input-dependent one raises ``UnsupportedLayerError`` naming the node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from fastxai.lrp import _trace
from fastxai.lrp._errors import UnsupportedLayerError
from fastxai.lrp._graph import Step

Contributions = list[tuple[Any, torch.Tensor]]


def _operands(node: fx.Node) -> list[tuple[int | str, Any]]:
    """The node's arguments that may hold tensors, by position (or keyword)."""
    return [*enumerate(node.args), *node.kwargs.items()]


def _variable_positions(node: fx.Node, ctx: Any) -> list[int | str]:
    return [key for key, arg in _operands(node) if _holds_variable(arg, ctx)]


def _holds_variable(arg: Any, ctx: Any) -> bool:
    if isinstance(arg, (tuple, list)):
        return any(_holds_variable(item, ctx) for item in arg)
    return bool(ctx.variable(arg))


def _allowed(step: Step, ctx: Any) -> list[int | str]:
    """The input-dependent arguments, checked against those the op is affine (or a move) in."""
    node = step.node
    positions = _variable_positions(node, ctx)
    target = node.target
    if node.op == "call_function" and target is torch.einsum:
        if any(isinstance(arg, (tuple, list)) for arg in node.args[1:]):
            raise UnsupportedLayerError(
                f"einsum with its operands in a list (node {node.name!r}): pass them as arguments"
            )
        factors = [key for key in positions if key != 0]
        if 0 in positions or len(factors) > 2 or any(isinstance(key, str) for key in factors):
            raise UnsupportedLayerError(
                f"einsum with more than two input-dependent operands (node {node.name!r})"
            )
        return factors
    if (node.op == "call_function" and target is torch.addcmul) or (
        node.op == "call_method" and target == "addcmul"
    ):
        if len(positions) != 1 or positions[0] not in (0, 1, 2):
            raise UnsupportedLayerError(
                f"addcmul with more than one input-dependent tensor (node {node.name!r})"
            )
        return positions
    if node.op == "call_function" and target is _trace.assign:
        if 1 in positions:
            raise UnsupportedLayerError(
                f"an assignment x[index] = value with an input-dependent index (node {node.name!r})"
            )
        return positions  # the target, the written value or both
    if step.kind == "extremum":
        if any(key not in (0, 1, "other") for key in positions):
            raise UnsupportedLayerError(f"{_describe(node)} with an input-dependent dim")
        return positions  # max(a, b): either tensor, or both
    if positions != [0]:
        others = [key for key in positions if key != 0]
        raise UnsupportedLayerError(
            f"{_describe(node)} with input-dependent argument(s) {others}: LRP takes them as "
            "constants of the map (a convolution's weight, the sizes), so they must not depend on the input"
        )
    return positions


def _describe(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return f"{node.op} {name!r} (node {node.name!r})"


def _vjp(step: Step, ctx: Any, positions: list[int | str], cotangent: torch.Tensor) -> list[torch.Tensor]:
    """``J^T cotangent`` of the node w.r.t. the arguments at ``positions``, at the current values
    (every floating tensor argument in the pass's dtype)."""
    node = step.node
    leaves: dict[int | str, torch.Tensor] = {}

    def value(key: int | str, arg: Any) -> Any:
        current = ctx.value(arg)
        if isinstance(current, torch.Tensor) and current.is_floating_point():
            current = current.detach().to(ctx.dtype)
            if key in positions:
                current = current.requires_grad_()
                leaves[key] = current
        return current

    args = [value(index, arg) for index, arg in enumerate(node.args)]
    kwargs = {key: value(key, arg) for key, arg in node.kwargs.items()}
    with torch.enable_grad():
        if node.op == "call_module":
            assert step.module is not None
            output = step.module(*args, **kwargs)
        elif node.op == "call_method":
            output = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        else:
            target: Any = node.target
            output = target(*args, **kwargs)
        order = [key for key in positions if key in leaves]
        grads = torch.autograd.grad(output, [leaves[key] for key in order], cotangent.to(output.dtype))
    found = dict(zip(order, grads, strict=True))
    return [found[key] for key in positions]


def _argument(node: fx.Node, key: int | str) -> Any:
    return node.args[key] if isinstance(key, int) else node.kwargs[key]


def move(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    positions = _allowed(step, ctx)
    backs = _vjp(step, ctx, positions, relevance)
    return [(_argument(step.node, key), back) for key, back in zip(positions, backs, strict=True)]


def extremum(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    """``max`` / ``min``: of all elements, or element-wise of two tensors (``torch.maximum``), a
    move to the winners (ties share, as the gradient does; where a constant wins, it absorbs the
    relevance as a bias would). With a dim they return (values, indices): ``getitem`` already
    wrote the values' relevance onto the winning elements (``_structure.tuple_item``)."""
    if isinstance(ctx.value(step.node), tuple):
        return [(step.node.args[0], relevance)]
    return move(step, ctx, relevance)


def affine(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    node = step.node
    positions = _allowed(step, ctx)
    eps = None if step.rule is None else step.rule.stabilizer
    s = ctx.divide(relevance, ctx.value(node), eps)
    grads = _vjp(step, ctx, positions, s)
    share = 0.5 if len(positions) == 2 else 1.0
    return [
        (_argument(node, key), ctx.product(ctx.wide(_argument(node, key)), grad * share))
        for key, grad in zip(positions, grads, strict=True)
    ]


def power(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    """``x ** p`` with a constant exponent: an element-wise activation (StarReLU's ``relu(x) ** 2``),
    which hands each element its own relevance."""
    node = step.node
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if not ctx.variable(node.args[0]) or ctx.variable(exponent):
        raise UnsupportedLayerError(f"a power with an input-dependent exponent (node {node.name!r})")
    return [(node.args[0], relevance)]


HANDLERS = {"move": move, "extremum": extremum, "affine": affine, "power": power}

__all__ = ["HANDLERS"]
