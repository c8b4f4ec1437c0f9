"""Attribute-steered detection of adversarial inputs, in the style of AmI (Tao, Ma, Liu and
Zhang 2018, "Attacks meet interpretability: attribute-steered detection of adversarial
samples").

AmI finds the neurons that witness human-perceptible attributes of faces, builds a model in
which those witnesses are strengthened and the other neurons weakened, and flags an input
when the steered model and the original disagree: a benign decision rests on the attributes,
an adversarial one on neurons outside them. The digits have no named attributes, so here the
witnesses of class ``c`` are the units (channels) of a chosen layer with the largest mean
attribution to ``c`` over clean inputs of ``c``, the attribution being gradient x activation,
``A_u(x) = sum_p a_{u,p}(x) dz_c/da_{u,p}(x)`` (the first-order share of unit ``u`` in logit
``z_c``); and AmI's strengthening / weakening is reduced to two constant factors. For an input
predicted as ``c``, the steered model multiplies the layer's unit ``u`` by ``strengthen`` if
``u`` witnesses ``c`` and by ``weaken`` otherwise; the score is the L1 distance of the two
softmax outputs, ``|| softmax(f(x)) - softmax(f_steered(x)) ||_1`` in [0, 2] (a graded form of
AmI's disagreement, so that an AUROC can be read).

>>> detector = fastxai.evaluation.fit_steered_detector(model, x_clean, y_clean, layer="6")
>>> fastxai.evaluation.auroc(detector.scores(x_test), detector.scores(x_adv))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastxai import _compile, _model, _precision, _scheduling
from fastxai._layer_capture import resolve_layer
from fastxai._model import Model


def _check_factor(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _unit_scale(scale: torch.Tensor) -> Callable[[nn.Module, Any, Any], torch.Tensor]:
    """A forward hook multiplying the layer's output [B, U, *S] by ``scale`` [B, U]."""

    def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() < 2 or output.shape[:2] != scale.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"layer must output [batch, {scale.shape[1]} units, ...], got {got}")
        return output * scale.to(output.dtype).view(*scale.shape, *([1] * (output.dim() - 2)))

    return hook


def unit_attributions(
    model: Model,
    layer: nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gradient x activation of each unit of ``layer`` for the logit ``classes[b]``, summed over
    the unit's positions: [B, U] float64. Runs under the caller's ``preserved_state``. ``dtype``
    (``fastxai._precision``): the pass under autocast in it, the layer's half-precision
    activations and gradients multiplied in float64."""
    dtype = _precision.check_dtype(dtype, inputs.device)
    kept: list[torch.Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise ValueError("layer must output one tensor [batch, units, ...]")
        kept.append(output)

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            leaf = inputs.detach().requires_grad_(True)  # parameters are frozen: the graph needs a leaf
            logits = _model.logits(_precision.autocast_model(model, dtype, leaf.device.type), leaf)
            if len(kept) != 1:
                raise ValueError(f"layer must run once per forward pass, ran {len(kept)} times")
            (grad,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), kept[0])
    finally:
        handle.remove()
    if dtype is None:
        product = (kept[0].detach() * grad).double()
    else:
        product = kept[0].detach().double() * grad.double()
    return product.flatten(2).sum(2) if product.dim() > 2 else product


@dataclass(frozen=True)
class SteeredDetector:
    """``scores(x)``: L1 distance of the softmax of the model and of its attribute-steered copy
    (witnesses of the predicted class x ``strengthen``, other units x ``weaken``), [B] float64.
    ``witnesses``: [classes, units] bool. ``dtype``: the model's precision when it was fitted,
    and when it scores (under autocast; the softmax of its logits in float64)."""

    model: Model
    layer: nn.Module
    witnesses: torch.Tensor
    strengthen: float
    weaken: float
    dtype: torch.dtype | None = None

    def scores(self, inputs: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
        x = _model.check_inputs(inputs).detach()
        chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x, forward_only=True)
        rows = []
        scored = _precision.autocast_model(self.model, self.dtype, x.device.type)  # itself for None
        with _model.preserved_state(self.model), torch.no_grad():
            for start in range(0, x.shape[0], chunk):
                part = x[start : start + chunk]
                logits = _model.logits(scored, part)
                witnessed = self.witnesses.to(part.device)[logits.argmax(dim=1)]
                scale = torch.where(witnessed, self.strengthen, self.weaken)
                handle = self.layer.register_forward_hook(_unit_scale(scale))
                try:
                    steered = _model.logits(scored, part)
                finally:
                    handle.remove()
                rows.append((logits.double().softmax(1) - steered.double().softmax(1)).abs().sum(1).cpu())
        return torch.cat(rows)


def fit_steered_detector(
    model: Model,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    layer: object,
    witnesses: float = 0.25,
    strengthen: float = 1.5,
    weaken: float = 0.5,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> SteeredDetector:
    """Find each class's witness units on clean ``inputs`` [N, *F] with ``labels`` [N] (every
    class the model has should appear): the ``ceil(witnesses x U)`` units of ``layer`` (a
    submodule or its dotted name, output [N, U, *S]) with the largest mean gradient x activation
    for the class over its inputs. Needs no adversarial examples. ``dtype=torch.bfloat16`` (or
    ``torch.float16``): the model runs under autocast in that dtype (``fastxai._precision``),
    here and in the detector's scores; the attributions are taken in float64.

    >>> detector = fit_steered_detector(model, x_train, y_train, layer="6", witnesses=0.25)
    >>> detector.scores(x)  # [B], high for adversarial inputs
    """
    model = _compile.original(_model.check_model(model))  # hooked: a compiled model's module
    module = resolve_layer(model, layer)
    if isinstance(witnesses, bool) or not isinstance(witnesses, (int, float)) or not 0 < witnesses <= 1:
        raise ValueError(f"witnesses must be a fraction in (0, 1], got {witnesses!r}")
    strengthen, weaken = _check_factor("strengthen", strengthen), _check_factor("weaken", weaken)
    x = _model.check_inputs(inputs).detach()
    if not isinstance(labels, torch.Tensor) or labels.shape != (x.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of class indices [{x.shape[0]}], got {got}")
    try:
        target = _model.check_target(labels, x.shape[0], x.device)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("target", "labels")) from None
    assert target is not None
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x)
    model_dtype = _precision.check_dtype(dtype, x.device)
    scored = _precision.autocast_model(model, model_dtype, x.device.type)  # model itself for None
    with _model.preserved_state(model):
        classes = _model.logits(scored, x[:1]).shape[1]
        try:
            _model.check_target_range(target, classes)
        except ValueError as error:
            raise ValueError(str(error).replace("target", "labels")) from None
        parts = [
            unit_attributions(
                model, module, x[start : start + chunk], target[start : start + chunk], model_dtype
            )
            for start in range(0, x.shape[0], chunk)
        ]
    attributions = torch.cat(parts).cpu()
    counts = torch.bincount(target.cpu(), minlength=classes)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"labels must include every class the model has; missing {missing}")
    mean = torch.zeros(classes, attributions.shape[1], dtype=torch.float64).index_add_(
        0, target.cpu(), attributions
    ) / counts.view(-1, 1)
    count = max(1, math.ceil(witnesses * attributions.shape[1]))
    chosen = torch.zeros(classes, attributions.shape[1], dtype=torch.bool)
    chosen.scatter_(1, mean.topk(count, dim=1).indices, True)
    return SteeredDetector(model, module, chosen, strengthen, weaken, model_dtype)
