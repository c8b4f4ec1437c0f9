"""Plain gradient attributions: Saliency and Input x Gradient, at the input or at a layer."""

from __future__ import annotations

import torch

from fastxai import _model, _scheduling
from fastxai._model import Model
from fastxai.attribution import _layer


def target_gradient(
    model: Model, inputs: torch.Tensor, target: object, chunk_size: int | None
) -> torch.Tensor:
    """``d f_target / d inputs`` for every input, in chunks: [B, *F] in the inputs' dtype."""
    return gradient_and_values(model, inputs, target, chunk_size)[0]


def gradient_and_values(
    model: Model,
    inputs: torch.Tensor,
    target: object,
    chunk_size: int | None,
    layer: object = None,
    forward_kwargs: object = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d f_target / d v`` for every input, in chunks, and the values ``v`` it is taken at:
    the inputs [B, *F], or the layer's output [B, *A] (one forward and backward per chunk)."""
    model = _model.check_model(model)
    site, inputs = _layer.site_for(model, inputs, layer, forward_kwargs)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    with _model.preserved_state(model):
        target_t = site.forward.resolve_target(target_t, chunk)
        if isinstance(site, _layer.InputSite):
            values = site.origin
            grads = torch.empty_like(values, memory_format=torch.contiguous_format)

            def body(_s0: int, _s1: int, row: int, row_stop: int) -> None:
                grads[row:row_stop] = site.gradients(
                    values[row:row_stop], slice(row, row_stop), 1, target_t[row:row_stop]
                )[0]

            _scheduling.for_each_block(1, inputs.shape[0], chunk, body, halve_on_oom=inputs.is_cuda)
            return grads, values
        grad_parts, value_parts = [], []
        for start in range(0, inputs.shape[0], chunk):
            rows = slice(start, start + chunk)
            grad, value, _ = site.gradients_and_activations(rows, 1, target_t[rows])
            grad_parts.append(grad)
            value_parts.append(value)
    return torch.cat(grad_parts), torch.cat(value_parts)


def saliency(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    abs: bool = True,
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): ``|d f_target / d x|`` (the signed gradient with ``abs=False``).

    inputs: [B, *F]; target: int, [B] indices, or None for the predicted class; returns [B, *F].
    ``layer`` (a module of the model or its dotted name): the gradient w.r.t. that layer's
    output instead, [B, *A] (Captum's ``LayerGradientXActivation(multiply_by_inputs=False)``);
    integer inputs (token ids) are then accepted and ``layer=None`` means the model's input
    embedding (``model.get_input_embeddings()``, else its first ``nn.Embedding``); per token:
    ``a.sum(-1)``. ``forward_kwargs``: extra keyword arguments to the model (an attention mask),
    tensors with one row per example repeated with the rows of each model batch.

    >>> a = fastxai.saliency(model, x, target=y)
    >>> a = fastxai.saliency(bert, ids, target=1, forward_kwargs={"attention_mask": mask})  # [B, T, D]
    """
    grads, _ = gradient_and_values(model, inputs, target, chunk_size, layer, forward_kwargs)
    return grads.abs() if abs else grads


def input_x_gradient(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Input x Gradient (Shrikumar et al. 2016): ``x * d f_target / d x``; shapes as ``saliency``.

    With ``layer``: ``h * d f_target / d h`` for the layer's output ``h`` [B, *A] (Captum's
    ``LayerGradientXActivation``); ``layer``, integer inputs and ``forward_kwargs`` as ``saliency``.

    >>> a = fastxai.input_x_gradient(model, x, target=y)
    >>> per_token = fastxai.input_x_gradient(bert, ids, target=1).sum(-1)   # [B, T]
    """
    grads, values = gradient_and_values(model, inputs, target, chunk_size, layer, forward_kwargs)
    return values * grads
