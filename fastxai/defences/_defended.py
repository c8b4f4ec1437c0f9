"""The model wrapper every input-transformation defence shares, and BPDA's straight-through
gradient (Athalye, Carlini and Wagner 2018, "Obfuscated gradients give a false sense of
security").

A defence ``g`` in front of a classifier ``f`` is the model ``x -> f(g(x))``. When ``g`` is
piecewise constant (rounding, quantisation) its gradient is zero almost everywhere, so a
gradient attack on ``f(g(x))`` stalls and the defence looks strong. Backward Pass
Differentiable Approximation replaces ``g`` by the identity on the backward pass only:
forward ``f(g(x))``, backward ``d f(g(x)) / d g(x)``, since ``g(x) ~ x``.

>>> defended = fastxai.BitDepthReduction(model, bits=1, bpda=True)
>>> x_adv = fastxai.pgd(defended, x, y, eps=0.1)  # the adaptive attack
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastxai._checks import check_flag
from fastxai._model import Model, check_model


class _StraightThrough(torch.autograd.Function):
    """Forward ``transformed``, backward the incoming gradient to ``inputs`` unchanged."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
        # a fresh tensor: autograd must not see the output as a view of an input
        return transformed.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(inputs: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
    """``transformed`` on the forward pass, the identity's gradient (to ``inputs``) on the backward
    pass: BPDA with ``g(x) ~ x``. Unlike ``x + (g(x) - x).detach()`` the forward value is
    ``g(x)`` bit for bit (``x + (g - x)`` need not round back to ``g``).

    inputs, transformed: the same shape; returns a tensor equal to ``transformed``.

    >>> y = straight_through(x, torch.round(x))  # y == round(x); dy/dx == 1
    """
    if transformed.shape != inputs.shape:
        raise ValueError(
            f"BPDA's identity backward needs a transform that keeps the shape {tuple(inputs.shape)}, "
            f"got {tuple(transformed.shape)}"
        )
    result: torch.Tensor = _StraightThrough.apply(inputs, transformed)
    return result


class InputTransformDefence(nn.Module):
    """``forward(x) = model(transform(x))``; with ``bpda=True`` the transform's backward pass is
    the identity (``straight_through``). Subclasses define ``transform`` (inputs [B, *F] to the
    model's inputs) and check their settings in ``__init__``.

    ``random``: True when ``transform`` draws randomness (``eot_samples`` in the attacks then
    averages gradients over draws). The wrapped model is a submodule, so ``preserved_state``,
    ``eval()`` and ``parameters()`` reach it.
    """

    random = False

    def __init__(self, model: Model, *, bpda: bool = False) -> None:
        super().__init__()
        self.model = check_model(model)
        self.bpda = check_flag("bpda", bpda)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.bpda:
            with torch.no_grad():
                transformed = self.transform(inputs)
            return self.model(straight_through(inputs, transformed))
        return self.model(self.transform(inputs))

    def extra_repr(self) -> str:
        return f"bpda={self.bpda}"
