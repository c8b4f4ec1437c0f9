"""Class activation maps from one layer's activations and gradients: Grad-CAM and its kin.

With ``A`` the layer's activation [B, K, *S] (``K`` channels over spatial positions ``s``)
and ``G = d f_target / d A``, every method is ``relu(sum_k w_k * A_k)`` for some weights:

- ``grad_cam`` (Selvaraju et al. 2017): ``w_k = mean_s G_k(s)`` (Captum's ``LayerGradCam``);
- ``grad_cam_plus_plus`` (Chattopadhay et al. 2018): ``w_k = sum_s alpha_k(s) relu(G_k(s))``,
  ``alpha = G^2 / (2 G^2 + sum_s' A_k(s') G^3)`` (0 where the denominator is 0). The paper
  differentiates ``exp(f_target)``; its factor ``exp(f_target)`` scales a sample's map by a
  positive constant and is left out (as common implementations do; it overflows);
- ``xgrad_cam`` (Fu et al. 2020): ``w_k = sum_s A_k(s) G_k(s) / sum_s A_k(s)`` (0 if the sum is 0);
- ``hires_cam`` (Draelos & Carin 2020): the element-wise ``sum_k G_k(s) A_k(s)``;
- ``layer_cam`` (Jiang et al. 2021): ``sum_k relu(G_k(s)) A_k(s)``;
- ``score_cam`` (Wang et al. 2020): see ``fastxai.attribution.score_cam``.

All but Score-CAM cost one forward and one backward (that stops at the layer when nothing
before it needs a gradient) plus an epilogue over ``A``; with ``target=None`` the predicted
class is read off that same forward. ``relu=False`` returns the signed map.

Shapes: inputs [B, *F]; ``layer`` an ``nn.Module`` of the model or its dotted name, whose
output is [B, K, *S] — or any shape that ``reshape`` (applied to activations and gradients
alike, so it must only rearrange: drop a class token, transpose, view) turns into one, e.g.
ViT tokens [B, T, D] -> [B, D, H, W]. ``layer=None`` (the default) takes the layer and
reshape that ``fastxai.cam_layer(model, inputs)`` finds: the last layer whose output keeps the
inputs' grid and reaches the score (channels first, channels last or ViT tokens; rules in
``fastxai.attribution.cam_layer``), at the cost of one more forward and backward of one input.
Returns [B, 1, *S] in the inputs' dtype, or [B, 1, *spatial of inputs] with ``upsample``
(``True``: bilinear for 2-d, as Captum's ``LayerAttribution.interpolate``; or an
``F.interpolate`` mode name).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fastxai import _compile, _model, _precision, _scheduling
from fastxai._layer_capture import (
    LayerCapture,
    Reshape,
    check_reshape,
    check_upsample,
    interpolate,
)
from fastxai._model import Model
from fastxai.attribution.cam_layer import chosen_layer
from fastxai.attribution.guided import guided_backprop
from fastxai.attribution.score_cam import score_cam

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _spatial(maps: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, maps.dim()))


def _weighted(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return (weights * activations).sum(1, keepdim=True)


def _grad_cam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return _weighted(grads.mean(_spatial(grads), keepdim=True), activations)


def _grad_cam_plus_plus(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    squared = grads * grads
    denominator = 2 * squared + activations.sum(_spatial(grads), keepdim=True) * squared * grads
    alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator, 1), 0)
    weights = (alpha * grads.clamp_min(0)).sum(_spatial(grads), keepdim=True)
    return _weighted(weights, activations)


def _xgrad_cam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    total = activations.sum(_spatial(grads), keepdim=True)
    weighted = (activations * grads).sum(_spatial(grads), keepdim=True)
    weights = torch.where(total != 0, weighted / torch.where(total != 0, total, 1), 0)
    return _weighted(weights, activations)


def _hires_cam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return (grads * activations).sum(1, keepdim=True)


def _layer_cam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return (grads.clamp_min(0) * activations).sum(1, keepdim=True)


_COMBINE: dict[str, Combine] = {
    "grad_cam": _grad_cam,
    "grad_cam_plus_plus": _grad_cam_plus_plus,
    "xgrad_cam": _xgrad_cam,
    "hires_cam": _hires_cam,
    "layer_cam": _layer_cam,
}
METHODS = (*_COMBINE, "score_cam")


def cam(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    layer: object = None,
    method: str = "grad_cam",
    relu: bool = True,
    upsample: bool | str = False,
    reshape: Reshape | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A class activation map of ``layer`` by ``method`` (one of ``METHODS``; see the module
    docstring for the formulas and shapes). ``score_cam`` takes its defaults here.

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the forward and backward run under autocast
    in that dtype (``fastxai._precision``), so the layer's activations and gradients come in
    it; the weights and the map are computed from them in float32 (the inputs' dtype). The
    search for a layer (``layer=None``) runs in the model's own precision.

    >>> heat = fastxai.cam(model, x, target=y, layer="layer4", method="grad_cam_plus_plus", upsample=True)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "score_cam":
        return score_cam(
            model,
            inputs,
            target,
            layer=layer,
            relu=relu,
            upsample=upsample,
            reshape=reshape,
            chunk_size=chunk_size,
            dtype=dtype,
        )
    model = _compile.original(_model.check_model(model))
    inputs = _model.check_inputs(inputs)
    reshape = check_reshape(reshape)
    mode = check_upsample(upsample, inputs)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    module, reshape = chosen_layer(model, inputs, layer, reshape)
    x = inputs.detach()
    combine = _COMBINE[method]
    scored = _precision.autocast_model(model, model_dtype, x.device.type)  # the model itself for None
    # the epilogue's precision: the half-precision activations and gradients summed in float32
    epilogue = None if model_dtype is None else _precision.accumulator_dtype(x.dtype)
    parts: list[torch.Tensor] = []

    def body(capture: LayerCapture, row: int, row_stop: int) -> None:
        capture.start(row_stop - row)
        with torch.enable_grad():
            output = _model.outputs(scored, x[row:row_stop])
            activation = capture.taken()
            if target_t is None:
                _model.flat_target(None, output.shape[1:])  # a predicted class needs [B, C] outputs
                rows_target = output.argmax(1)
            else:
                rows_target = target_t[row:row_stop]
            score = output.reshape(row_stop - row, -1).gather(1, rows_target.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, activation)
        activation = activation.detach()
        if epilogue is not None:
            activation, grads = activation.to(epilogue), grads.to(epilogue)
        parts.append(combine(capture.maps(activation), capture.maps(grads)))

    with _model.preserved_state(model):
        if target_t is not None:
            target_t = _model.resolve_target(scored, x, target_t, chunk)
        with LayerCapture(module, reshape) as capture:
            _scheduling.for_each_block(
                1, x.shape[0], chunk, lambda _s0, _s1, r0, r1: body(capture, r0, r1), halve_on_oom=x.is_cuda
            )

    maps = torch.cat(parts)
    if relu:
        maps = F.relu(maps)
    if mode is not None:
        maps = interpolate(maps, tuple(inputs.shape[2:]), mode)
    return maps.to(inputs.dtype)


def _named(method: str, paper: str) -> Callable[..., torch.Tensor]:
    def function(
        model: Model,
        inputs: torch.Tensor,
        target: object = None,
        *,
        layer: object = None,
        relu: bool = True,
        upsample: bool | str = False,
        reshape: Reshape | None = None,
        chunk_size: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        return cam(
            model,
            inputs,
            target,
            layer=layer,
            method=method,
            relu=relu,
            upsample=upsample,
            reshape=reshape,
            chunk_size=chunk_size,
            dtype=dtype,
        )

    function.__name__ = function.__qualname__ = method
    function.__doc__ = (
        f"{paper}: ``cam(..., method={method!r})``; formula and shapes in\n"
        "    ``fastxai.attribution.class_activation``; ``dtype`` as in ``cam``.\n\n"
        f'    >>> heat = fastxai.{method}(model, x, target=y, layer="layer4", upsample=True)\n'
    )
    return function


grad_cam = _named("grad_cam", "Grad-CAM (Selvaraju et al. 2017)")
grad_cam_plus_plus = _named("grad_cam_plus_plus", "Grad-CAM++ (Chattopadhay et al. 2018)")
xgrad_cam = _named("xgrad_cam", "XGrad-CAM (Fu et al. 2020)")
hires_cam = _named("hires_cam", "HiResCAM (Draelos & Carin 2020)")
layer_cam = _named("layer_cam", "LayerCAM (Jiang et al. 2021)")


def guided_grad_cam(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    layer: object = None,
    upsample: str = "bilinear",
    reshape: Reshape | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): ``guided_backprop(x) * up(relu(grad_cam))``,
    the map upsampled to the inputs' spatial size with mode ``upsample`` (Captum's
    ``GuidedGradCam`` uses ``"nearest"``) and broadcast over the input channels.

    inputs: [B, C, *S_in]; returns [B, C, *S_in]. Two forward+backward passes, both in
    ``dtype`` when given (as ``cam`` and ``guided_backprop``).

    >>> a = fastxai.guided_grad_cam(model, x, target=y, layer="layer4")
    """
    inputs = _model.check_inputs(inputs)
    if not isinstance(upsample, str):
        raise TypeError(f"upsample must be an interpolation mode name, got {type(upsample).__name__}")
    heat = cam(
        model,
        inputs,
        target,
        layer=layer,
        method="grad_cam",
        relu=True,
        upsample=upsample,
        reshape=reshape,
        chunk_size=chunk_size,
        dtype=dtype,
    )
    return guided_backprop(model, inputs, target, chunk_size=chunk_size, dtype=dtype) * heat
