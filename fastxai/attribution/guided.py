"""Guided Backpropagation and DeconvNet: the gradient with the ReLU backward rule modified.

A ReLU ``y = max(x, 0)`` passes back ``g * [x > 0]`` for an upstream gradient ``g``. The two
methods replace that rule in every ReLU of the model:

- Guided Backpropagation (Springenberg et al. 2015): ``max(g, 0) * [x > 0]`` — only positive
  gradient, only through active units;
- DeconvNet (Zeiler & Fergus 2014): ``max(g, 0)`` — the ReLU applied to the gradient, whatever
  the forward activation was.

Which ReLUs. Every ReLU the forward pass applies is modified: ``nn.ReLU`` modules (also
``inplace=True``) and functional calls (``torch.relu``, ``F.relu``, ``Tensor.relu`` and their
in-place forms), caught by a ``torch.overrides.TorchFunctionMode`` that is active only for
the call. Captum hooks ``nn.ReLU`` modules only, so on models built from ``nn.ReLU`` modules
the numbers are Captum's; on a model that also uses functional ReLUs (a ResNet block's
``torch.relu``) Captum leaves those with the plain rule and fastxai does not. A model that
applies no ReLU at all raises ``ValueError`` (the result would be the plain gradient).
No hook is written onto the model; the mode is left on exit, also on error.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fastxai._model import Model
from fastxai.attribution.gradient import target_gradient

RULES = ("guided", "deconvnet")

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.Tensor.relu}
_INPLACE_RELU_FUNCTIONS = {F.relu_, torch.relu_, torch.Tensor.relu_}
_ANY_RELU = _RELU_FUNCTIONS | _INPLACE_RELU_FUNCTIONS


class _ModifiedReluFunction(torch.autograd.Function):
    """``max(x, 0)`` forward; backward ``max(g, 0)`` (times ``[x > 0]`` for ``guided``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, guided: bool) -> torch.Tensor:
        output = x.clamp_min(0)
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad_output.clamp_min(0)
        if ctx.guided:
            (output,) = ctx.saved_tensors
            grad = grad * (output > 0)
        return grad, None


class ModifiedRelu(TorchFunctionMode):
    """While active, every ReLU call runs with the modified backward rule; counts the calls."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.guided = rule == "guided"
        self.calls = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _ANY_RELU:  # every other op of the forward: pass it on at once
            return func(*args, **kwargs)
        inplace = func in _INPLACE_RELU_FUNCTIONS or (func is F.relu and bool(kwargs.get("inplace", False)))
        x = args[0]
        self.calls += 1
        output = _ModifiedReluFunction.apply(x, self.guided)
        if inplace:
            # The caller may rely on the side effect: write the result back, gradient included.
            return x.copy_(output)
        return output


def modified_relu_gradient(
    model: Model, inputs: torch.Tensor, target: object, rule: str, chunk_size: int | None
) -> torch.Tensor:
    """``d f_target / d inputs`` with every ReLU's backward replaced by ``rule``: [B, *F]."""
    mode = ModifiedRelu(rule)
    with mode:
        grads = target_gradient(model, inputs, target, chunk_size)
    if mode.calls == 0:
        raise ValueError(
            f"model applies no ReLU (neither nn.ReLU modules nor functional relu): {rule} "
            "backpropagation would be the plain gradient; use fastxai.saliency(..., abs=False) for that"
        )
    return grads


def guided_backprop(
    model: Model, inputs: torch.Tensor, target: object = None, *, chunk_size: int | None = None
) -> torch.Tensor:
    """Guided Backpropagation (Springenberg et al. 2015): the gradient of ``f_target`` with each
    ReLU passing back ``max(g, 0) * [x > 0]``. Every ReLU, module or functional, is modified
    (see the module docstring for how this differs from Captum on functional ReLUs).

    inputs: [B, *F]; target: int, [B] indices, or None for the predicted class; returns [B, *F].

    >>> a = fastxai.guided_backprop(model, x, target=y)
    """
    return modified_relu_gradient(model, inputs, target, "guided", chunk_size)


def deconvnet(
    model: Model, inputs: torch.Tensor, target: object = None, *, chunk_size: int | None = None
) -> torch.Tensor:
    """DeconvNet (Zeiler & Fergus 2014): the gradient of ``f_target`` with each ReLU passing
    back ``max(g, 0)``, independent of the forward activation (Captum's ``Deconvolution``).

    inputs: [B, *F]; target: int, [B] indices, or None for the predicted class; returns [B, *F].

    >>> a = fastxai.deconvnet(model, x, target=y)
    """
    return modified_relu_gradient(model, inputs, target, "deconvnet", chunk_size)
