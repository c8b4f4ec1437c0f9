"""Guided Backpropagation and DeconvNet: the gradient with the ReLU backward rule modified.

A ReLU ``y = max(x, 0)`` passes back ``g * [x > 0]`` for an upstream gradient ``g``. The two
methods replace that rule in every ReLU of the model:

- Guided Backpropagation (Springenberg et al. 2015): ``max(g, 0) * [x > 0]`` — only positive
  gradient, only through active units;
- DeconvNet (Zeiler & Fergus 2014): ``max(g, 0)`` — the ReLU applied to the gradient, whatever
  the forward activation was.

Which ReLUs. Every ReLU the forward pass applies is modified: ``nn.ReLU`` modules (also
``inplace=True``) and functional calls (``torch.relu``, ``F.relu``, ``Tensor.relu`` and their
in-place forms), and the clipped ReLUs ``nn.ReLU6`` / ``F.relu6`` and ``nn.Hardtanh(0, t)``
(MobileNetV2's activation: a hardtanh with lower bound 0, whose own gradient ``g * [0 < x < t]``
is clamped at 0 by the guided rule; DeconvNet passes ``max(g, 0)`` as for a ReLU): all are
PyTorch's relu or hardtanh, whose node in the autograd graph gets the rule as a
hook after each forward (``ReluRule``; a relu in place on a view, which autograd hides inside
a ``CopySlices`` node, is caught by a ``TorchFunctionMode`` instead). Captum hooks ``nn.ReLU``
modules only, so on models built from ``nn.ReLU`` modules the numbers are Captum's; on a
model that also uses functional ReLUs (a ResNet block's ``torch.relu``) or ReLU6 Captum leaves
those with the plain rule and fastxai does not. A model that applies no ReLU at all raises
``ValueError`` (the result would be the plain gradient).
No hook is written onto the model: the hooks are on the autograd graph of each call, gone
with it, also on error.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fastxai import _compile
from fastxai._layer import GRAPH_RULE
from fastxai._model import Model
from fastxai.attribution.gradient import target_gradient

RULES = ("guided", "deconvnet")


class NoReluError(ValueError):
    """The backward pass met no ReLU: the modified rule would change nothing (the plain gradient).
    Its own class so that callers that cut the forward short (a neuron's) can say where."""


_RELU_FUNCTIONS = {F.relu, torch.relu, torch.Tensor.relu, F.relu6}
_INPLACE_RELU_FUNCTIONS = {F.relu_, torch.relu_, torch.Tensor.relu_}


def _is_relu_node(node: Any, name: str) -> bool:
    """A relu's autograd node, or a hardtanh's with lower bound 0 (ReLU6, ``Hardtanh(0, t)``)."""
    if name.startswith("ReluBackward"):
        return True
    return name.startswith("HardtanhBackward") and getattr(node, "_saved_min_val", None) == 0


_ANY_RELU = _RELU_FUNCTIONS | _INPLACE_RELU_FUNCTIONS


def _guided_hook(grad_inputs: tuple[Any, ...], _grad_outputs: tuple[Any, ...]) -> Any:
    """Guided rule on a relu's autograd node: its own gradient ``g * [x > 0]``, clamped at 0
    (``max(g, 0) * [x > 0]`` = ``max(g * [x > 0], 0)``)."""
    (grad,) = grad_inputs
    return None if grad is None else (grad.clamp_min(0),)


def _deconvnet_hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> Any:
    """DeconvNet rule on a relu's autograd node: ``max(g, 0)``, whatever the forward input."""
    if grad_inputs[0] is None or grad_outputs[0] is None:
        return None
    return (grad_outputs[0].clamp_min(0),)


class ReluRule:
    """The modified rule on every relu node of each forward's autograd graph (``GraphRule``):
    a walk from the target score finds the relu nodes (``nn.ReLU`` modules, in place too, and
    functional calls alike: all are PyTorch's relu) and hooks them. The hooks live and die
    with that graph: nothing is written onto the model, and the forward runs untouched.
    Where the graph holds a ``CopySlices`` node (an in-place op on a view, whose own node autograd
    keeps out of reach), the forward runs again inside ``ModifiedRelu``, which hooks each relu
    call as it happens. ``calls``: the relu nodes hooked."""

    def __init__(self, rule: str) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.hook = _guided_hook if rule == "guided" else _deconvnet_hook
        self.calls = 0

    def apply(self, root: torch.Tensor) -> bool:
        relus, seen, stack = [], set(), [root.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            name = node.name()
            if name.endswith("CopySlices"):
                return False
            if _is_relu_node(node, name):
                relus.append(node)
            stack.extend(edge for edge, _ in node.next_functions)
        for node in relus:
            node.register_hook(self.hook)
        self.calls += len(relus)
        return True

    def fallback(self) -> ModifiedRelu:
        return ModifiedRelu(self)


class ModifiedRelu(TorchFunctionMode):
    """While active, every relu call hooks its own autograd node with ``rule``'s hook (the
    fallback of ``ReluRule``; it also catches a relu in place on a view)."""

    def __init__(self, rule: ReluRule) -> None:
        super().__init__()
        self.rule = rule

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _ANY_RELU:  # every other op of the forward: pass it on at once
            return func(*args, **kwargs)
        x = args[0] if args else kwargs.get("input")
        inplace = func in _INPLACE_RELU_FUNCTIONS or (
            func in (F.relu, F.relu6) and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        )
        if inplace and isinstance(x, torch.Tensor) and x._is_view():
            # In place on a view, the relu's node would hide inside the base's CopySlices: run it
            # out of place and write the result back, gradient included (relu6 saves its input,
            # which the write would change: it runs on a copy).
            if func is F.relu6:
                return x.copy_(self._hooked(F.relu6(x.clone())))
            return x.copy_(self._hooked(torch.relu(x)))
        return self._hooked(func(*args, **kwargs))

    def _hooked(self, output: Any) -> Any:
        node = output.grad_fn if isinstance(output, torch.Tensor) else None
        if node is not None:
            node.register_hook(self.rule.hook)
            self.rule.calls += 1
        return output


def modified_relu_gradient(
    model: Model,
    inputs: torch.Tensor,
    target: object,
    rule: str,
    chunk_size: int | None,
    dtype: object = None,
    no_relu: str = "raise",
) -> torch.Tensor:
    """``d f_target / d inputs`` with every ReLU's backward replaced by ``rule``: [B, *F];
    ``dtype``: the model's precision (``fastxai._precision``). ``no_relu``: what a model that applies
    no ReLU gets, whose result is the plain gradient: ``"raise"`` (``NoReluError``) or ``"warn"``
    (a ``UserWarning``, the gradient returned, as Captum's classes return it)."""
    relu_rule = ReluRule(rule)
    model = _compile.original(model)  # a mode over the forward: a compiled model's module
    token = GRAPH_RULE.set(relu_rule)
    try:
        grads = target_gradient(model, inputs, target, chunk_size, dtype)
    finally:
        GRAPH_RULE.reset(token)
    if relu_rule.calls == 0:
        message = (
            f"model applies no ReLU (neither nn.ReLU / nn.ReLU6 modules nor functional relu): {rule} "
            "backpropagation {} the plain gradient"
        )
        if no_relu != "warn":
            raise NoReluError(message.format("would be") + "; use fastxai.saliency(..., abs=False) for that")
        warnings.warn(message.format("is"), UserWarning, stacklevel=3)
    return grads


def guided_backprop(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Guided Backpropagation (Springenberg et al. 2015): the gradient of ``f_target`` with each
    ReLU passing back ``max(g, 0) * [x > 0]``. Every ReLU, module or functional, is modified
    (see the module docstring for how this differs from Captum on functional ReLUs).

    inputs: [B, *F]; target: int, [B] indices, or None for the predicted class; returns [B, *F]
    in the inputs' dtype. ``dtype=torch.bfloat16`` (or ``torch.float16``): the model runs in that
    precision on the inputs rounded to it, under autocast, the modified backward too
    (``fastxai._precision``, as ``saliency``).

    >>> a = fastxai.guided_backprop(model, x, target=y)
    """
    return modified_relu_gradient(model, inputs, target, "guided", chunk_size, dtype)


def deconvnet(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """DeconvNet (Zeiler & Fergus 2014): the gradient of ``f_target`` with each ReLU passing
    back ``max(g, 0)``, independent of the forward activation (Captum's ``Deconvolution``).

    inputs: [B, *F]; target: int, [B] indices, or None for the predicted class; returns [B, *F];
    ``dtype`` as in ``guided_backprop``.

    >>> a = fastxai.deconvnet(model, x, target=y)
    """
    return modified_relu_gradient(model, inputs, target, "deconvnet", chunk_size, dtype)
