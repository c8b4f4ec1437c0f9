"""The learned representation of every training item: the penultimate activations the
poisoning detectors cluster and project."""

from __future__ import annotations

import torch
from torch import nn

from fastxai import _compile, _model, _precision, _scheduling
from fastxai._model import Model
from fastxai.global_views import _layers


def resolve_site(model: Model, layer: object) -> tuple[nn.Module, str, bool]:
    """(module, name, read its input): ``layer=None`` is the input of the model's last
    ``nn.Linear`` (the features the classifier reads); else the output of ``layer``."""
    if layer is not None:
        module, name = _layers.resolve_layer(model, layer)
        return module, name, False
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"layer=None takes the input of the model's last nn.Linear, which needs an nn.Module; "
            f"got {type(model).__name__}: pass layer="
        )
    linear = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError("the model has no nn.Linear whose input to read: pass layer= (a module or its name)")
    name, module = linear[-1]
    return module, name, True


def representations(
    model: Model,
    inputs: torch.Tensor,
    site: tuple[nn.Module, str, bool],
    chunk_size: int | None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """[N, D] float64: the site's activation for every input, flattened; no gradients. The
    caller holds the model's state guard (the hook added here is removed in any case).
    ``dtype`` (checked by ``_precision.check_dtype``): the passes under autocast in it."""
    module, name, read_input = site
    chunk = _scheduling.auto_chunk_size(chunk_size, inputs, forward_only=True)
    captured: list[torch.Tensor] = []

    def grab(value: object) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"layer {name!r} must take and return tensors, got {type(value).__name__}")
        captured.append(value.detach().flatten(1).double())

    if read_input:
        handle = module.register_forward_pre_hook(lambda _m, args: grab(args[0] if args else None))
    else:
        handle = module.register_forward_hook(lambda _m, _args, output: grab(output))
    parts = []
    try:
        with torch.no_grad(), _precision.autocast(dtype, inputs.device.type):
            for start in range(0, inputs.shape[0], chunk):
                captured.clear()
                model(inputs[start : start + chunk])
                if len(captured) != 1:
                    raise ValueError(
                        f"layer {name!r} ran {len(captured)} times in one forward pass; "
                        "pick a layer used once"
                    )
                parts.append(captured[0])
    finally:
        handle.remove()
    return torch.cat(parts)


def read(
    model: Model, inputs: torch.Tensor, layer: object, chunk_size: int | None, dtype: object = None
) -> torch.Tensor:
    """``representations`` under the state guard, with the layer and ``dtype`` (the model's
    precision, ``fastxai._precision``) checked first."""
    model = _compile.original(model)  # hooked: a compiled model's module
    site = resolve_site(model, layer)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    with _model.preserved_state(model):
        return representations(model, inputs, site, _scheduling.check_chunk_size(chunk_size), model_dtype)
