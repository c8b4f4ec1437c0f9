"""Plain gradient attributions: Saliency and Input x Gradient."""

from __future__ import annotations

import torch

from fastxai import _model, _scheduling
from fastxai._model import Model


def target_gradient(
    model: Model, inputs: torch.Tensor, target: object, chunk_size: int | None
) -> torch.Tensor:
    """``d f_target / d inputs`` for every input, in chunks: [B, *F] in the inputs' dtype."""
    model = _model.check_model(model)
    inputs = _model.check_inputs(inputs)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    grads = torch.empty_like(inputs, memory_format=torch.contiguous_format)
    with _model.preserved_state(model):
        target_t = _model.resolve_target(model, inputs, target_t, chunk)

        def body(_s0: int, _s1: int, row: int, row_stop: int) -> None:
            grads[row:row_stop] = _model.target_gradients(
                model, inputs[row:row_stop], target_t[row:row_stop]
            )[0]

        _scheduling.for_each_block(1, inputs.shape[0], chunk, body, halve_on_oom=inputs.is_cuda)
    return grads


def saliency(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    abs: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): ``|d f_target / d x|`` (the signed gradient with ``abs=False``).

    inputs: [B, *F]; target: int, [B] indices, or None for the predicted class; returns [B, *F].

    >>> a = fastxai.saliency(model, x, target=y)
    """
    grads = target_gradient(model, inputs, target, chunk_size)
    return grads.abs() if abs else grads


def input_x_gradient(
    model: Model, inputs: torch.Tensor, target: object = None, *, chunk_size: int | None = None
) -> torch.Tensor:
    """Input x Gradient (Shrikumar et al. 2016): ``x * d f_target / d x``; shapes as ``saliency``.

    >>> a = fastxai.input_x_gradient(model, x, target=y)
    """
    return inputs * target_gradient(model, inputs, target, chunk_size)
