"""Score-CAM (Wang et al. 2020): channel weights from the model's confidence on masked inputs."""

from __future__ import annotations

from typing import Any

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
from fastxai._rows import RowForward, check_forward_kwargs
from fastxai.attribution.cam_layer import chosen_layer


def _normalise(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each map scaled to [0, 1]; and whether it was constant (such a map has no mask)."""
    flat = maps.flatten(2)
    low, high = flat.amin(2), flat.amax(2)
    constant = high == low
    scale = torch.where(constant, 1, high - low)
    shape = (*maps.shape[:2], *[1] * (maps.dim() - 2))
    return (maps - low.view(shape)) / scale.view(shape), constant


def score_cam(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    layer: object = None,
    relu: bool = True,
    upsample: bool | str = False,
    reshape: Reshape | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Score-CAM: ``relu(sum_k w_k A_k)`` with ``w_k = softmax(f(x * H_k))_target``, where
    ``H_k`` is channel ``k`` of the layer's activation ``A`` [B, K, *S], upsampled to the
    inputs' spatial size (bilinear for 2-d) and min-max normalised to [0, 1]; a constant
    channel gets ``w_k = 0`` (as in the authors' code). No gradient is used. For outputs with
    more dims than [B, C] (a tuple ``target``) the softmax runs over the last dim (the
    vocabulary of [B, T, V] language-model logits).

    Cost: one forward for the activations (and the predicted class when ``target=None``),
    then ``B * K`` masked forwards, batched: the masks of many channels and inputs go through
    the model together, at most ``chunk_size`` inputs per pass. ``forward_kwargs``: keyword
    arguments to the model, tensors with one row per example repeated to each pass's masked
    copies (``_rows.RowForward``); they need a named ``layer``.

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the masked copies are made in that dtype
    and every pass runs under autocast (``fastxai._precision``); the activations, the softmax
    and the weighted sum are float32. The search for a layer (``layer=None``) does not.

    inputs: [B, C, *S_in] with as many spatial dims as the (reshaped) layer output; layer,
    reshape, relu, upsample and the result as in ``fastxai.attribution.class_activation``: [B, 1, *S].

    >>> heat = fastxai.score_cam(model, x, target=y, layer="layer4", chunk_size=256)
    """
    model = _compile.original(_model.check_model(model))
    inputs = _model.check_inputs(inputs)
    reshape = check_reshape(reshape)
    mode = check_upsample(upsample, inputs)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    if inputs.dim() < 3:
        raise ValueError(f"score_cam needs inputs [B, C, *spatial] to mask, got shape {tuple(inputs.shape)}")
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    kwargs = check_forward_kwargs(forward_kwargs)
    if kwargs and layer is None:
        raise ValueError(
            "score_cam with forward_kwargs needs layer=: the search for a layer (layer=None) runs the "
            "model without them"
        )
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    forward = RowForward(model, (inputs,), (), kwargs, dtype=model_dtype)
    module, reshape = chosen_layer(model, inputs, layer, reshape)
    x = inputs.detach()
    points = x if model_dtype is None else x.to(model_dtype)  # what the masks multiply
    wide = _precision.accumulator_dtype(x.dtype)  # the activations under autocast: kept in float32

    def rounded(start: int, stop: int) -> tuple[torch.Tensor, ...] | None:
        """The rows' inputs as the model gets them: rounded to ``dtype`` (None: the inputs)."""
        return None if model_dtype is None else (points[start:stop],)

    batch, size = x.shape[0], tuple(x.shape[2:])
    parts: list[torch.Tensor] = []
    predictions: list[torch.Tensor] = []

    with _model.preserved_state(model):
        if target_t is not None:
            target_t = _model.resolve_target(*forward.bound(slice(0, 1), 1, rounded(0, 1)), target_t, chunk)
        with LayerCapture(module, reshape) as capture, torch.no_grad():
            for row in range(0, batch, chunk):
                capture.start(min(batch, row + chunk) - row)
                output = _model.outputs(*forward.bound(slice(row, row + chunk), 1, rounded(row, row + chunk)))
                taken = capture.taken().detach()
                parts.append(capture.maps(taken if model_dtype is None else taken.to(wide)))
                if target_t is None:
                    _model.flat_target(None, output.shape[1:])  # a predicted class needs [B, C] outputs
                    predictions.append(output.argmax(1))
        activations = torch.cat(parts)
        if activations.dim() - 2 != len(size):
            raise ValueError(
                f"score_cam masks the inputs with upsampled layer maps: the layer map has "
                f"{activations.dim() - 2} spatial dims, the inputs {len(size)}"
            )
        rows_target = torch.cat(predictions) if target_t is None else target_t
        channels = activations.shape[1]
        weights = torch.zeros(channels, batch, dtype=activations.dtype, device=x.device)
        smooth = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size), "nearest")

        def body(channel: int, channel_stop: int, row: int, row_stop: int) -> None:
            maps = activations[row:row_stop, channel:channel_stop].transpose(0, 1)  # [c, r, *S]
            count = maps.shape[0]
            upsampled = F.interpolate(maps.reshape(-1, 1, *maps.shape[2:]), size=size, mode=smooth)
            masks, constant = _normalise(upsampled.view(count, row_stop - row, *size))
            # [c, r, C, *S_in], in the precision the model runs in
            masked = points[row:row_stop].unsqueeze(0) * masks.unsqueeze(2).to(points.dtype)
            call, head = forward.bound(slice(row, row_stop), count, (masked.reshape(-1, *x.shape[1:]),))
            with torch.no_grad():  # copies channel-major: the rows' per-example arguments repeat alike
                output = _model.outputs(call, head)
            # Probabilities over the last dim (the classes of [B, C], the vocabulary of [B, T, V]).
            output = output.float() if output.dtype != torch.float64 else output
            probabilities = output.softmax(-1).reshape(output.shape[0], -1)
            scores = probabilities.gather(1, rows_target[row:row_stop].repeat(count).view(-1, 1))
            weights[channel:channel_stop, row:row_stop] = scores.view(count, -1).masked_fill(constant, 0)

        _scheduling.for_each_block(channels, batch, chunk, body, halve_on_oom=x.is_cuda)

    shape = (batch, channels, *[1] * (activations.dim() - 2))
    maps = (weights.t().reshape(shape) * activations).sum(1, keepdim=True)
    if relu:
        maps = F.relu(maps)
    if mode is not None:
        maps = interpolate(maps, size, mode)
    return maps.to(inputs.dtype)
