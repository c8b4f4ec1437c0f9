"""Plain gradient attributions: Saliency and Input x Gradient, at the input or at a layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai import _graphs, _layer, _model, _precision, _scheduling
from fastxai._model import Model


def target_gradient(
    model: Model, inputs: torch.Tensor, target: object, chunk_size: int | None, dtype: object = None
) -> torch.Tensor:
    """``d f_target / d inputs`` for every input, in chunks: [B, *F] in the inputs' dtype
    (``dtype``: the model's precision, ``_precision``)."""
    return gradient_and_values(model, inputs, target, chunk_size, dtype=dtype)[0]


def gradient_and_values(
    model: Model,
    inputs: torch.Tensor,
    target: object,
    chunk_size: int | None,
    layer: object = None,
    forward_kwargs: object = None,
    dtype: object = None,
    compile: object = False,
    cuda_graph: object = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d f_target / d v`` for every input, in chunks, and the values ``v`` it is taken at:
    the inputs [B, *F], or the layer's output [B, *A] (one forward and backward per chunk).
    ``dtype``: the model's precision (``_precision``); ``compile``: compile the chunk's forward
    and backward (``_compile``; at the input); ``cuda_graph``: capture it as a CUDA graph
    (``_graphs``; at the input)."""
    model = _model.check_model(model)
    site, inputs = _layer.site_for(model, inputs, layer, forward_kwargs, dtype)
    compile_backend = _layer.check_compile(site, compile)
    graphed = _layer.check_graph(site, cuda_graph, inputs, compile_backend)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    with _model.preserved_state(model):
        target_t = site.forward.resolve_target(target_t, chunk)
        if isinstance(site, _layer.InputSite):
            values = site.origin
            points = values.to(_precision.points_dtype(values, site.forward.dtype))
            step: Callable[..., torch.Tensor] | None = _graphs.make_step(
                _gradient_step, compile_backend, graphed
            )
            if step is not None:
                site.check_target()
            elif 0 < inputs.shape[0] <= chunk and not inputs.is_cuda:
                # one block: the gradient is the result, no buffer to copy it into (a one-pass
                # method's only cost beyond the model's; on the GPU the block may still halve)
                batch = inputs.shape[0]
                grad = site.gradients(points, slice(0, batch), 1, target_t)[0]
                return grad.to(values.dtype).contiguous(), values
            grads = torch.empty_like(values, memory_format=torch.contiguous_format)

            def body(_s0: int, _s1: int, row: int, row_stop: int) -> None:
                rows = slice(row, row_stop)
                if step is not None:
                    forward = site.forward
                    grads[rows] = step(
                        forward.plain, forward.dtype, points[rows], target_t[rows], forward.extras(rows, 1)
                    )
                    return
                grads[rows] = site.gradients(points[rows], rows, 1, target_t[rows])[0]

            _scheduling.for_each_block(1, inputs.shape[0], chunk, body, halve_on_oom=inputs.is_cuda)
            return grads, values
        grad_parts, value_parts = [], []
        for start in range(0, inputs.shape[0], chunk):
            rows = slice(start, start + chunk)
            grad, value, _ = site.gradients_and_activations(rows, 1, target_t[rows])
            grad_parts.append(grad)
            value_parts.append(value)
    return torch.cat(grad_parts), torch.cat(value_parts)


def _gradient_step(
    model: Callable[..., Any],
    dtype: torch.dtype | None,
    points: torch.Tensor,
    target: torch.Tensor,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """One chunk's target gradients [n, *F] as one graph (``_compile.Step``, ``_graphs.GraphedStep``)."""
    return _layer.point_gradients(model, dtype, points, target, kwargs)[0]


def saliency(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    abs: bool = True,
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str = False,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): ``|d f_target / d x|`` (the signed gradient with ``abs=False``).

    inputs: [B, *F]; target: int, [B] indices, or None for the predicted class; returns [B, *F].
    ``layer`` (a module of the model or its dotted name): the gradient w.r.t. that layer's
    output instead, [B, *A] (Captum's ``LayerGradientXActivation(multiply_by_inputs=False)``);
    integer inputs (token ids) are then accepted and ``layer=None`` means the model's input
    embedding (``model.get_input_embeddings()``, else its first ``nn.Embedding``); per token:
    ``a.sum(-1)``. ``forward_kwargs``: extra keyword arguments to the model (an attention mask),
    tensors with one row per example repeated with the rows of each model batch.
    ``dtype=torch.bfloat16`` (or ``torch.float16``): the model runs in that precision on the
    inputs rounded to it, under autocast (``fastxai._precision``); ``compile=True`` (or a
    ``torch.compile`` backend's name) compiles a chunk's forward and backward as one graph, once
    per call (``fastxai._compile``; at the input); ``cuda_graph=True`` (inputs on a CUDA device)
    captures it as a CUDA graph once and replays it per chunk (``fastxai._graphs``; at the input).
    The result is in the inputs' dtype.

    >>> a = fastxai.saliency(model, x, target=y)
    >>> a = fastxai.saliency(bert, ids, target=1, forward_kwargs={"attention_mask": mask})  # [B, T, D]
    """
    grads, _ = gradient_and_values(
        model, inputs, target, chunk_size, layer, forward_kwargs, dtype, compile, cuda_graph
    )
    return grads.abs() if abs else grads


def input_x_gradient(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str = False,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """Input x Gradient (Shrikumar et al. 2016): ``x * d f_target / d x``; shapes as ``saliency``.

    With ``layer``: ``h * d f_target / d h`` for the layer's output ``h`` [B, *A] (Captum's
    ``LayerGradientXActivation``); ``layer``, integer inputs, ``forward_kwargs``, ``dtype``,
    ``compile`` and ``cuda_graph`` as ``saliency``.

    >>> a = fastxai.input_x_gradient(model, x, target=y)
    >>> per_token = fastxai.input_x_gradient(bert, ids, target=1).sum(-1)   # [B, T]
    """
    grads, values = gradient_and_values(
        model, inputs, target, chunk_size, layer, forward_kwargs, dtype, compile, cuda_graph
    )
    return values * grads
