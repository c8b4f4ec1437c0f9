"""A layer's activations for a batch of inputs, in chunks, the model left as found."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastxai import _compile, _model, _precision
from fastxai._model import Model
from fastxai.global_views import _layers

InputAdapter = Callable[[torch.Tensor], torch.Tensor]


def check_adapter(input_adapter: InputAdapter | None) -> InputAdapter | None:
    if input_adapter is not None and not callable(input_adapter):
        raise TypeError(f"input_adapter must be None or a callable, got {type(input_adapter).__name__}")
    return input_adapter


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return batch_size


def model_device(model: Model) -> torch.device | None:
    """The device of the model's first parameter (None for a callable or a model without any)."""
    parameter = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return None if parameter is None else parameter.device


def collect(
    model: Model,
    layer: torch.nn.Module,
    name: str,
    inputs: torch.Tensor,
    batch_size: int,
    input_adapter: InputAdapter | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``layer``'s output for every input [N, U, ...], ``batch_size`` inputs per model pass,
    without gradients and without running the layers after it. Call inside ``preserved_state``.
    ``dtype`` (checked by ``_precision.check_dtype``): the passes under autocast in it, the
    layer's half-precision outputs kept in float32."""
    device = model_device(model)
    parts = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start : start + batch_size]
            if device is not None:
                batch = batch.to(device)
            if input_adapter is not None:
                batch = input_adapter(batch)
                if not isinstance(batch, torch.Tensor):
                    raise TypeError(f"input_adapter must return a tensor, got {type(batch).__name__}")
            with _precision.autocast(dtype, batch.device.type):
                activation = _layers.layer_output(model, layer, name, batch)
            if dtype is not None:
                activation = activation.to(_precision.accumulator_dtype(activation.dtype))
            if activation.dim() < 2 or activation.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"layer {name!r} must output [batch, units, ...] for {batch.shape[0]} inputs, "
                    f"got shape {tuple(activation.shape)}"
                )
            parts.append(activation.detach())
    return torch.cat(parts)


def layer_activations(
    model: Model,
    inputs: torch.Tensor,
    *,
    layer: object,
    input_adapter: InputAdapter | None = None,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``layer``'s output for ``inputs``: [N, U] for a dense layer, [N, C, *spatial] for a conv
    layer (channel ``c`` is unit ``c``'s activation map). Only the model up to ``layer`` runs
    (a hook stops the forward pass there), ``batch_size`` inputs at a time, without gradients;
    ``input_adapter`` (a callable on a batch) is applied to the inputs before the model, e.g. a
    resize. layer: a module of ``model`` or its dotted name. The model is left as found.
    ``dtype=torch.bfloat16`` (or ``torch.float16``): the passes run under autocast in that dtype
    (``fastxai._precision``); activations it gives in half precision are returned in float32.

    >>> maps = fastxai.layer_activations(model, x, layer="2")      # [N, 16, 8, 8] for the digits CNN
    >>> maps.flatten(2).amax(2).topk(3)                           # each input's strongest units
    """
    model = _compile.original(_model.check_model(model))  # hooked: a compiled model's module
    x = _model.check_inputs(inputs).detach()
    adapter = check_adapter(input_adapter)
    batch_size = check_batch_size(batch_size)
    layer_module, layer_name = _layers.resolve_layer(model, layer)
    model_dtype = _precision.check_dtype(dtype, model_device(model) or x.device)
    with _model.preserved_state(model):
        return collect(model, layer_module, layer_name, x, batch_size, adapter, model_dtype)
