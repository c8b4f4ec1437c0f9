"""Captum's ``LayerDeepLift`` and ``LayerDeepLiftShap`` on ``fastxai.attribution.layer_deeplift``.

    from fastxai.compat import captum as fc
    dl = fc.LayerDeepLift(model, model.conv2)
    attr, delta = dl.attribute(x, baselines=0.0, target=3, return_convergence_delta=True)

``attribute`` returns ``m_h * (h - h')`` at the layer's output (its positional tensor inputs
with ``attribute_to_layer_input=True``): ``h`` and ``h'`` the layer's values for the inputs
and the baselines, ``m_h`` the Rescale multipliers of the target score w.r.t. ``h`` (just
``m_h`` with ``multiply_by_inputs=False``; ``custom_attribution_func(m_h, h, h')``). A layer
with several tensors gives a tuple, one gives a tensor, as Captum. ``LayerDeepLiftShap``
averages over a distribution of ``K`` baselines; its delta has one entry per (input, baseline)
pair, input-major. The delta is ``sum(attr) - (f(x) - f(x'))`` from the method's own two
passes (no extra model call).

Differences from Captum, on purpose: those of ``DeepLift`` (``_captum_deeplift``: every
nonlinearity rescaled, also functional ReLUs and reused modules; exact softmax and max-pool
rules; ``target=None`` is the predicted class); ``LayerDeepLiftShap`` also takes a single
baseline; gradients of a layer the output does not use are zeros; ``grad_kwargs`` other than
``materialize_grads`` are refused; a sequence-first layer's results are in its batch-first view
``[B, T, D]``, as the other layer classes (``_captum_layer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fastxai._layer import sequence_witness
from fastxai._layer_capture import Slots
from fastxai.attribution.layer_deeplift import layer_multipliers
from fastxai.compat._captum_attribution import GradientAttribution
from fastxai.compat._captum_deeplift import BaselineDistributionError, _custom
from fastxai.compat._captum_inputs import as_tuple
from fastxai.compat._captum_layer import (
    Layers,
    _check_grad_kwargs,
    _check_inputs,
    _input_baselines,
    _LayerMethod,
)
from fastxai.compat.captum import baseline_distribution

Tensor = torch.Tensor


class LayerDeepLift(_LayerMethod, GradientAttribution):
    """Captum's ``LayerDeepLift``: DeepLIFT (Rescale rule) at a layer, ``m_h * (h - h')``."""

    def __init__(self, model: nn.Module, layer: Layers, multiply_by_inputs: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
        super().__init__(model, layer)
        self.model = model
        self.eps = 1e-10
        self._multiply = multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply

    def _pairs(
        self,
        inputs: tuple[Tensor, ...],
        baselines: tuple[Tensor, ...],
        args: tuple[Any, ...],
        target: Tensor | None,
        to_input: bool,
        custom: Callable[..., Any] | None,
    ) -> tuple[list[Tensor], Tensor, Slots]:
        """Row ``i`` of the inputs against row ``i`` of the baselines: the attributions (one
        tensor per tensor of the layers) and the deltas [N]."""
        slots = Slots(self._layers, to_input=to_input, witness=sequence_witness(self.model, inputs[0]))
        model = self.forward_func

        def run(tensors: Sequence[Tensor]) -> Tensor:
            return model(*tensors, *args)

        grads, values, references, difference = self._run(
            lambda: layer_multipliers(run, inputs, baselines, slots, target, self.eps)
        )
        if custom is not None:
            parts = list(_custom(custom, tuple(grads), tuple(values), tuple(references)))
        elif self._multiply:
            parts = [g * (h - r) for g, h, r in zip(grads, values, references, strict=True)]
        else:
            parts = grads
        rows = inputs[0].shape[0]
        total = sum(part.reshape(rows, -1).sum(1, dtype=difference.dtype) for part in parts)
        return parts, total - difference, slots

    def _format(self, slots: Slots, parts: Sequence[Tensor]) -> Any:  # type: ignore[override]
        if not isinstance(self.layer, list):
            return parts[0] if len(parts) == 1 else tuple(parts)
        result, start = [], 0
        for count in slots.structure:
            group = parts[start : start + count]
            result.append(group[0] if count == 1 else tuple(group))
            start += count
        return result

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
        grad_kwargs: Any = None,
    ) -> Any:
        _check_grad_kwargs(grad_kwargs)
        tensors = _check_inputs(inputs)
        starts = _input_baselines(baselines, tensors)
        args = () if additional_forward_args is None else as_tuple(additional_forward_args)
        target_t = self._target(target, tensors)
        parts, delta, slots = self._pairs(
            tensors, starts, args, target_t, attribute_to_layer_input, custom_attribution_func
        )
        result = self._format(slots, parts)
        return (result, delta) if return_convergence_delta else result


class LayerDeepLiftShap(LayerDeepLift):
    """Captum's ``LayerDeepLiftShap``: ``LayerDeepLift`` against each of ``K`` baselines
    ``[K, *F]`` (tensors, a tuple of them, or a callable returning them), averaged."""

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        tensors = _check_inputs(inputs)
        drawn = baseline_distribution(baselines, inputs)
        parts_in = as_tuple(drawn)
        if len(parts_in) != len(tensors):
            raise BaselineDistributionError(
                f"baselines must have {len(tensors)} tensors like inputs, got {len(parts_in)}"
            )
        for index, (part, tensor) in enumerate(zip(parts_in, tensors, strict=True)):
            label = f"baselines[{index}]" if len(tensors) > 1 else "baselines"
            if not isinstance(part, torch.Tensor):
                raise BaselineDistributionError(
                    f"{label} must be a tensor [K, *F] of baselines to average over, got "
                    f"{type(part).__name__} (use LayerDeepLift for a single or scalar baseline)"
                )
            if part.dim() != tensor.dim() or part.shape[1:] != tensor.shape[1:] or part.shape[0] < 1:
                raise BaselineDistributionError(
                    f"{label} must have shape (K, *{tuple(tensor.shape[1:])}), got {tuple(part.shape)}"
                )
        batch, count = tensors[0].shape[0], parts_in[0].shape[0]
        if any(part.shape[0] != count for part in parts_in):
            raise BaselineDistributionError("every baselines tensor must hold the same number K of baselines")
        args = () if additional_forward_args is None else as_tuple(additional_forward_args)
        target_t = self._target(target, tensors)
        # Captum's pairs, input-major: each input repeated K times, the K baselines tiled B times.
        pair_inputs = tuple(tensor.repeat_interleave(count, dim=0) for tensor in tensors)
        pair_refs = tuple(
            part.detach()
            .to(device=tensor.device, dtype=tensor.dtype)
            .repeat(batch, *([1] * (part.dim() - 1)))
            for part, tensor in zip(parts_in, tensors, strict=True)
        )
        pair_args = tuple(
            arg.repeat_interleave(count, dim=0)
            if isinstance(arg, torch.Tensor) and arg.dim() >= 1 and arg.shape[0] == batch
            else arg
            for arg in args
        )
        pair_target = None if target_t is None else target_t.repeat_interleave(count, dim=0)
        parts, delta, slots = self._pairs(
            pair_inputs, pair_refs, pair_args, pair_target, attribute_to_layer_input, custom_attribution_func
        )
        means = [part.view(batch, count, *part.shape[1:]).mean(1) for part in parts]
        result = self._format(slots, means)
        return (result, delta) if return_convergence_delta else result


__all__ = ["LayerDeepLift", "LayerDeepLiftShap"]
