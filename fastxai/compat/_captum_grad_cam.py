"""Captum's ``LayerGradCam``, ``GuidedGradCam`` and ``LayerAttribution.interpolate``.

Grad-CAM of a layer with activations ``A`` [B, C, *S] and gradients ``G = dF_target/dA``:

    map = sum_c mean_s(G)[c] * A[c]          -> [B, 1, *S]   (``attr_dim_summation=True``)
    map = mean_s(G) * A                      -> [B, C, *S]   (``attr_dim_summation=False``)

A layer output without spatial dimensions ([B, F]) takes ``G`` itself as the weights, as in
Captum; a layer with several outputs (or, with ``attribute_to_layer_input=True``, several
inputs) gives one map per tensor, as a tuple. The layer's tensors and their gradients come
from one forward and backward pass over the batch, as in Captum (``fastxai.grad_cam`` is the
chunked functional form). ``grad_kwargs`` go to
``torch.autograd.grad`` (``materialize_grads=True`` gives zeros for a layer the target does not
depend on).

``GuidedGradCam`` multiplies guided backprop by the ReLU'd map interpolated to each input's
spatial size. An input the map cannot be interpolated to (no spatial dimensions of the map's
rank) gets an empty tensor and a warning, as in Captum; an unknown ``interpolate_mode`` is
refused before any work (Captum returns empty tensors for every input instead).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastxai._layer_capture import INTERPOLATE_MODES, interpolate
from fastxai.attribution.guided import modified_relu_gradient
from fastxai.compat._captum_attribution import GradientAttribution
from fastxai.compat._captum_inputs import PackedForward, PackedInputs, chunk_rows
from fastxai.compat._captum_targets import select_target
from fastxai.compat.captum import Forward, check_device_ids, check_target


class LayerAttribution:
    """Captum's ``LayerAttribution.interpolate`` (the only part of the class kept here)."""

    @staticmethod
    def interpolate(
        layer_attribution: torch.Tensor,
        interpolate_dims: int | tuple[int, ...],
        interpolate_mode: str = "nearest",
    ) -> torch.Tensor:
        size = (interpolate_dims,) if isinstance(interpolate_dims, int) else tuple(interpolate_dims)
        return interpolate(layer_attribution, size, interpolate_mode)


def _check_grad_kwargs(grad_kwargs: object) -> dict[str, Any]:
    if grad_kwargs is None:
        return {}
    if not isinstance(grad_kwargs, dict) or not all(isinstance(key, str) for key in grad_kwargs):
        raise TypeError(f"grad_kwargs must be a dict of keyword arguments, got {type(grad_kwargs).__name__}")
    taken = {"outputs", "inputs", "grad_outputs"} & set(grad_kwargs)
    if taken:
        raise ValueError(f"grad_kwargs must not set {sorted(taken)}: LayerGradCam chooses them")
    return grad_kwargs


def layer_tensors_and_gradients(
    forward: PackedForward,
    flat: torch.Tensor,
    layer: nn.Module,
    target: object,
    *,
    layer_input: bool,
    grad_kwargs: dict[str, Any],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The layer's output tensors (or inputs) on one forward pass of ``flat``, and the gradients
    of the target's scores (summed over the batch) with respect to them."""
    taken: list[tuple[torch.Tensor, ...]] = []

    def keep(values: Any) -> Any:
        # The kept tensors are handed on as copies, so in-place operations after the layer
        # (ReLU(inplace=True)) cannot change them.
        parts = values if isinstance(values, tuple) else (values,)
        tensors = tuple(part for part in parts if isinstance(part, torch.Tensor))
        if not tensors:
            raise TypeError(f"layer {'inputs' if layer_input else 'output'} hold no tensor")
        taken.append(tensors)
        copies = tuple(part.clone() if isinstance(part, torch.Tensor) else part for part in parts)
        return copies if isinstance(values, tuple) else copies[0]

    if layer_input:
        handle = layer.register_forward_pre_hook(lambda _module, args: keep(args))
    else:
        handle = layer.register_forward_hook(lambda _module, _args, output: keep(output))
    try:
        with torch.enable_grad():
            leaf = flat.detach().requires_grad_(flat.is_floating_point())
            output = forward(leaf)
            if not taken:
                raise ValueError("layer did not run in the model's forward pass")
            if len(taken) > 1:
                raise ValueError(
                    "layer ran more than once in one forward pass; choose a layer that runs once"
                )
            tensors = taken[0]
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"forward_func must return a tensor, got {type(output).__name__}")
            if target is None and output.dim() == 2 and output.shape[1] > 1:
                target = output.argmax(1)  # fastxai's reading of None: the predicted class
            scores = select_target(output, target)
            grads = torch.autograd.grad(scores.sum(), tensors, **grad_kwargs)
    finally:
        handle.remove()
    return tuple(tensor.detach() for tensor in tensors), tuple(
        torch.zeros_like(tensor) if grad is None else grad
        for tensor, grad in zip(tensors, grads, strict=True)
    )


class LayerGradCam(GradientAttribution):
    """Captum's ``LayerGradCam`` (see the module docstring for the formula and shapes)."""

    def __init__(self, forward_func: Forward, layer: nn.Module, device_ids: Any = None) -> None:
        super().__init__(forward_func)
        check_device_ids(device_ids)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        self.layer = layer

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: Any = None,
    ) -> Any:
        for name, flag in (
            ("attribute_to_layer_input", attribute_to_layer_input),
            ("relu_attributions", relu_attributions),
            ("attr_dim_summation", attr_dim_summation),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        kwargs = _check_grad_kwargs(grad_kwargs)
        packed, forward, _ = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        tensors, grads = self._run(
            lambda: layer_tensors_and_gradients(
                forward, packed.flat, self.layer, target,
                layer_input=attribute_to_layer_input, grad_kwargs=kwargs,
            ),
            leaves_state=True,  # its hook is removed in a finally; gradients w.r.t. activations
        )
        maps = []
        for tensor, grad in zip(tensors, grads, strict=True):
            weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True) if grad.dim() > 2 else grad
            scaled = weights * tensor
            if attr_dim_summation:
                scaled = scaled.sum(dim=1, keepdim=True)
            maps.append(F.relu(scaled) if relu_attributions else scaled)
        return tuple(maps) if len(maps) > 1 else maps[0]


class GuidedGradCam(GradientAttribution):
    """Captum's ``GuidedGradCam``: guided backprop times the ReLU'd Grad-CAM map interpolated to
    each input (every ReLU guided, also functional ones)."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__(model)
        check_device_ids(device_ids)
        self.model = model
        self.grad_cam = LayerGradCam(model, layer)

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
    ) -> Any:
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ValueError(
                f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}"
            )
        packed = PackedInputs(inputs)
        target = check_target(target)
        heat = self.grad_cam.attribute(
            inputs, target, additional_forward_args, attribute_to_layer_input, relu_attributions=True
        )
        if isinstance(heat, tuple):
            if len(heat) != 1:
                raise ValueError("GuidedGradCam needs a layer with one output (or one input), got several")
            heat = heat[0]
        whole = packed.forward(self.model, additional_forward_args).has_per_example_args
        chunk = chunk_rows(None, packed.flat, whole_batches=whole)
        grads = self._run(
            lambda: modified_relu_gradient(
                packed.forward(self.model, additional_forward_args), packed.flat, target, "guided", chunk,
                no_relu="warn",
            )
        )
        parts = []
        for index, part in enumerate(packed.unpack(grads)):
            if part.dim() - 2 != heat.dim() - 2 or part.dim() < 3:
                warnings.warn(
                    f"GuidedGradCam: inputs[{index}] of shape {tuple(part.shape)} has no spatial dimensions "
                    f"matching the layer map {tuple(heat.shape)}; its attribution is an empty tensor",
                    stacklevel=2,
                )
                parts.append(torch.empty(0, dtype=part.dtype, device=part.device))
                continue
            parts.append(part * interpolate(heat, tuple(part.shape[2:]), interpolate_mode))
        return tuple(parts) if packed.is_tuple else parts[0]


__all__ = ["GuidedGradCam", "LayerAttribution", "LayerGradCam", "layer_tensors_and_gradients"]
