"""Attention rollout and attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers"): how much each input token feeds a token of the last layer, read off the
attention weights alone (no gradient).

Per layer ``l`` the heads' weights ``A_l`` [B, H, N, N] (row ``i``: how token ``i`` attends to
every token) are fused over heads (``head_fusion``: mean, max or min), optionally the smallest
``discard_ratio`` of the fused weights of each example are set to 0 (vit-explain's filter, Gildenblat
2020), and the residual connection is added: ``W_l = (fused + I) / rowsum(fused + I)``, which
without discarding is the paper's ``0.5 A + 0.5 I``.

- rollout: ``R = W_L ... W_2 W_1`` [B, N, N]; ``R[i, j]`` is the share of token ``j`` in
  output token ``i`` when shares mix linearly through the layers;
- flow: the layers as a flow network, node ``(l, i)`` for token ``i`` after layer ``l``
  (``l = 0`` the inputs), an edge ``(l-1, j) -> (l, i)`` of capacity ``W_l[i, j]``; the value
  of input token ``j`` for output token ``i`` is the maximum flow from ``(0, j)`` to ``(L, i)``.
  One max-flow per (example, input token), Dinic's algorithm in Python on a graph of
  ``(L+1) N`` nodes: fine for small models, slow for ``N`` in the hundreds (as the paper notes).

The weights come from the model: Hugging Face models through ``output_attentions=True`` (run
with the eager attention for the call, put back after), other models through every
``nn.MultiheadAttention`` (torchvision's ViT), asked for per-head weights by a hook, or through
timm's attention modules (ViT, DeiT, EVA, BEiT: run unfused for the call, the softmax weights
taken where they enter ``attn_drop``). With
``attention_mask`` [B, N] (1 for tokens, 0 for padding), passed on to the model, padding gets 0.

Returns [B, N]: each input token's value for output token ``token`` (0: the class token); with
``token=None`` [B, N, N]; with ``grid=True`` (image inputs [B, C, H, W]) the patch tokens as a
map [B, 1, h, w], the leading class/register tokens dropped (the grid as ``fastxai.cam_layer``
infers it).

>>> heat = fastxai.attention_rollout(vit, images, grid=True)            # [B, 1, h, w]
>>> share = fastxai.attention_flow(bert, ids, attention_mask=mask)     # [B, N]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fastxai import _compile, _model, _precision
from fastxai.attribution._max_flow import max_flow
from fastxai.attribution.cam_layer import declared_prefix_tokens, token_grid

HEAD_FUSIONS = ("mean", "max", "min")


def _check_options(head_fusion: object, discard_ratio: object) -> float:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if (
        isinstance(discard_ratio, bool)
        or not isinstance(discard_ratio, (int, float))
        or not 0 <= discard_ratio < 1
    ):
        raise ValueError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}")
    return float(discard_ratio)


def _check_attentions(attentions: object) -> list[torch.Tensor]:
    if isinstance(attentions, torch.Tensor) or not isinstance(attentions, Sequence) or not attentions:
        raise TypeError("attentions must be a non-empty sequence of [B, H, N, N] tensors, one per layer")
    shape = None
    for index, attention in enumerate(attentions):
        if not isinstance(attention, torch.Tensor) or not attention.is_floating_point():
            raise TypeError(
                f"attentions[{index}] must be a floating-point tensor, got {type(attention).__name__}"
            )
        if attention.dim() != 4 or attention.shape[2] != attention.shape[3]:
            raise ValueError(f"attentions[{index}] must be [B, H, N, N], got shape {tuple(attention.shape)}")
        layer_shape = (attention.shape[0], attention.shape[2])
        if shape is not None and layer_shape != shape:
            raise ValueError(f"attentions[{index}] has [B, N] = {layer_shape}, the first layer {shape}")
        shape = layer_shape
    return list(attentions)


def residual_attention(
    attention: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """One layer's ``W = (fused + I) / rowsum(fused + I)``: [B, H, N, N] -> [B, N, N] (float32, or
    float64 for float64 weights)."""
    attention = attention.float() if attention.dtype != torch.float64 else attention
    if head_fusion == "mean":
        fused = attention.mean(1)
    elif head_fusion == "max":
        fused = attention.amax(1)
    else:
        fused = attention.amin(1)
    count = int(discard_ratio * fused[0].numel())
    if count:
        flat = fused.flatten(1).clone()
        flat.scatter_(1, flat.topk(count, dim=1, largest=False).indices, 0)
        fused = flat.view_as(fused)
    augmented = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    return augmented / augmented.sum(-1, keepdim=True)


def rollout(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """``W_L ... W_1`` for per-layer weights ``attentions`` (each [B, H, N, N], first layer
    first): [B, N, N]; row ``i`` is output token ``i``'s share of every input token."""
    discard = _check_options(head_fusion, discard_ratio)
    layers = _check_attentions(attentions)
    result = residual_attention(layers[0], head_fusion, discard)
    for attention in layers[1:]:
        result = residual_attention(attention, head_fusion, discard) @ result
    return result


def flow(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    token: int | None = 0,
) -> torch.Tensor:
    """Maximum flow from every input token to output token ``token`` through the layers'
    ``W_l`` as capacities (module docstring): [B, N]; every output token with ``token=None``: [B, N, N]."""
    discard = _check_options(head_fusion, discard_ratio)
    layers = _check_attentions(attentions)
    weights = torch.stack([residual_attention(a, head_fusion, discard) for a in layers], 1)  # [B, L, N, N]
    batch, depth, tokens = weights.shape[0], weights.shape[1], weights.shape[-1]
    sinks = _check_token(token, tokens)
    result = torch.zeros(batch, len(sinks), tokens, dtype=torch.float64)
    nodes = (depth + 1) * tokens
    for example in range(batch):
        capacity = torch.zeros(nodes, nodes, dtype=torch.float64)
        for layer in range(depth):  # edge (layer, j) -> (layer + 1, i) holds W[layer][i, j]
            rows, columns = (
                slice(layer * tokens, (layer + 1) * tokens),
                slice((layer + 1) * tokens, (layer + 2) * tokens),
            )
            capacity[rows, columns] = weights[example, layer].T.double().cpu()
        graph = capacity.numpy()
        for row, sink in enumerate(sinks):
            for source in range(tokens):
                result[example, row, source] = max_flow(graph, source, depth * tokens + sink)
    result = result.to(weights.dtype).to(weights.device)
    return result[:, 0] if token is not None else result


def _check_token(token: object, tokens: int) -> list[int]:
    if token is None:
        return list(range(tokens))
    if isinstance(token, bool) or not isinstance(token, int) or not -tokens <= token < tokens:
        raise ValueError(f"token must be None or an int in [0, {tokens}), got {token!r}")
    return [token % tokens]


def attentions_of(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    dtype: object = None,
) -> list[torch.Tensor]:
    """Every attention layer's weights [B, H, N, N], first layer first, from one forward pass of
    ``model(inputs, attention_mask=..., **forward_kwargs)`` without gradients; the model is left
    as found (mode, hooks, attention implementation). ``dtype``: the pass runs under autocast in
    it (``fastxai._precision``), the weights come in the precision the model gives them."""
    model = _compile.original(model)  # its attention modules are hooked: a compiled model's module
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module to read its attention weights, got {type(model).__name__}"
        )
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] < 1:
        raise TypeError(
            "inputs must be a tensor [B, ...] with B >= 1 (images, or token ids for a text model)"
        )
    kwargs = dict(forward_kwargs or {})
    if attention_mask is not None:
        if (
            not isinstance(attention_mask, torch.Tensor)
            or attention_mask.dim() != 2
            or attention_mask.shape[0] != inputs.shape[0]
        ):
            raise ValueError(f"attention_mask must be a [B={inputs.shape[0]}, N] tensor of 0s and 1s")
        kwargs["attention_mask"] = attention_mask
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    scored = _precision.autocast_model(model, model_dtype, inputs.device.type)  # model itself for None
    blocks = [module for module in model.modules() if isinstance(module, nn.MultiheadAttention)]
    if blocks:
        with _model.preserved_state(model), torch.no_grad():
            return _from_multihead_attention(model, scored, inputs, kwargs, blocks)
    timm_blocks = [module for module in model.modules() if _is_timm_attention(module)]
    if timm_blocks:
        with _model.preserved_state(model), torch.no_grad():
            return _from_timm_attention(scored, inputs, kwargs, timm_blocks)
    if hasattr(model, "config"):
        # inference_state, not preserved_state: transformers installs its output-recording hooks
        # on the first output_attentions call and marks the model as hooked; removing them
        # would leave a model that never returns attentions again.
        with _model.inference_state(model), torch.no_grad():
            return _from_hugging_face(model, scored, inputs, kwargs)
    raise TypeError(
        "attention weights are read from nn.MultiheadAttention modules (torchvision's ViT), timm's "
        "attention modules (fused_attn and attn_drop: ViT, DeiT, EVA, BEiT) or a Hugging Face model "
        "(output_attentions=True); for another model collect them yourself and call "
        "fastxai.attribution.attention_rollout.rollout / flow"
    )


def _is_timm_attention(module: nn.Module) -> bool:
    """timm's attention modules (``vision_transformer.Attention`` and its kin in EVA, BEiT, ...):
    a bool ``fused_attn`` that picks ``F.scaled_dot_product_attention`` over the written-out path,
    which applies ``attn_drop`` to the softmax weights."""
    return isinstance(getattr(module, "fused_attn", None), bool) and isinstance(
        getattr(module, "attn_drop", None), nn.Module
    )


def _from_timm_attention(
    run: Callable[..., Any], inputs: torch.Tensor, kwargs: dict[str, Any], blocks: list[nn.Module]
) -> list[torch.Tensor]:
    """The weights of timm's attention ``blocks`` from one call of ``run``: each block runs its
    written-out path for the call (``fused_attn`` off, put back after), and a hook on its
    ``attn_drop`` keeps that module's input, the softmax weights [B, H, N, N]."""
    weights: list[torch.Tensor] = []
    fused = [bool(block.fused_attn) for block in blocks]

    def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
        weights.append(args[0])

    handles = [block.attn_drop.register_forward_pre_hook(keep) for block in blocks]  # type: ignore[union-attr]
    try:
        for block in blocks:
            setattr(block, "fused_attn", False)  # noqa: B010 (an attribute the type does not declare)
        run(inputs, **kwargs)
    finally:
        for block, was in zip(blocks, fused, strict=True):
            setattr(block, "fused_attn", was)  # noqa: B010
        for handle in handles:
            handle.remove()
    batch = inputs.shape[0]
    for index, (block, weight) in enumerate(zip(blocks, weights, strict=False)):
        if weight.dim() != 4 or weight.shape[0] != batch or weight.shape[2] != weight.shape[3]:
            raise ValueError(
                f"timm attention module {index} ({type(block).__name__}) gives weights of shape "
                f"{tuple(weight.shape)}, not [B={batch}, H, N, N] over all tokens (windowed or "
                "pooled attention, as in Swin or MViT): rollout needs global self-attention"
            )
    return weights


def _from_multihead_attention(
    model: nn.Module,
    run: Callable[..., Any],
    inputs: torch.Tensor,
    kwargs: dict[str, Any],
    blocks: list[nn.MultiheadAttention],
) -> list[torch.Tensor]:
    """The weights of ``blocks`` (modules of ``model``) from one call of ``run`` (``model``, or
    ``model`` under autocast)."""
    # need_weights and average_attn_weights are arguments 4 and 6 of MultiheadAttention.forward
    weights: list[torch.Tensor] = []

    def ask(module: nn.Module, args: tuple[Any, ...], options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        values = list(args)
        for position, name, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
            if len(values) > position:
                values[position] = value
            else:
                options[name] = value
        return tuple(values), options

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        weights.append(output[1])

    handles = [block.register_forward_pre_hook(ask, with_kwargs=True) for block in blocks]
    handles += [block.register_forward_hook(keep) for block in blocks]
    try:
        run(inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return weights


def _from_hugging_face(
    model: nn.Module, run: Callable[..., Any], inputs: torch.Tensor, kwargs: dict[str, Any]
) -> list[torch.Tensor]:
    """``output_attentions`` of one call of ``run`` (``model``, or ``model`` under autocast)."""
    # Fused attention kernels (sdpa, flash) return no weights: run eager for this call only.
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and callable(getattr(model, "set_attn_implementation", None))
    if switch:
        model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        output = run(inputs, output_attentions=True, **kwargs)
    finally:
        if switch:
            model.set_attn_implementation(previous)  # type: ignore[operator]
    attentions = getattr(output, "attentions", None)
    if not attentions or any(attention is None for attention in attentions):
        raise ValueError(
            "the model returned no attention weights with output_attentions=True; load it with "
            "attn_implementation='eager'"
        )
    return list(attentions)


def _finish(
    values: torch.Tensor,
    inputs: torch.Tensor,
    attention_mask: torch.Tensor | None,
    grid: bool,
    token: int | None,
    prefix_tokens: int | None = None,
) -> torch.Tensor:
    if attention_mask is not None:
        keep = attention_mask.to(device=values.device, dtype=values.dtype)
        values = values * keep.unsqueeze(1) if values.dim() == 3 else values * keep
        if values.dim() == 3:
            values = values * keep.unsqueeze(2)
    if not grid:
        return values
    if token is None or inputs.dim() != 4:
        raise ValueError("grid=True needs image inputs [B, C, H, W] and one output token")
    layout = token_grid(values.shape[1], tuple(inputs.shape[2:]), prefix_tokens)
    if layout is None:
        raise ValueError(f"{values.shape[1]} tokens are no grid of the image size {tuple(inputs.shape[2:])}")
    prefix, (height, width) = layout
    return values[:, prefix:].reshape(values.shape[0], 1, height, width)


def attention_rollout(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    token: int | None = 0,
    attention_mask: torch.Tensor | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    grid: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of ``model`` at ``inputs``: row ``token`` of
    ``W_L ... W_1`` [B, N] (module docstring for ``W``, the options and the shapes).

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the model's forward runs under autocast in
    that dtype (``fastxai._precision``); the weights it gives in half precision are fused,
    normalised and multiplied in float32, the result is float32.

    >>> heat = fastxai.attention_rollout(vit, x, head_fusion="max", discard_ratio=0.9, grid=True)
    """
    _check_options(head_fusion, discard_ratio)
    if not isinstance(grid, bool):
        raise TypeError(f"grid must be a bool, got {type(grid).__name__}")
    attentions = attentions_of(
        model, inputs, attention_mask=attention_mask, forward_kwargs=forward_kwargs, dtype=dtype
    )
    matrix = rollout(attentions, head_fusion, discard_ratio)
    rows = _check_token(token, matrix.shape[-1])
    values = matrix if token is None else matrix[:, rows[0]]
    prefix = declared_prefix_tokens(_compile.original(model))
    return _finish(values, inputs, attention_mask, grid, token, prefix)


def attention_flow(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    token: int | None = 0,
    attention_mask: torch.Tensor | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    grid: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Attention flow (Abnar & Zuidema 2020) of ``model`` at ``inputs``: the maximum flow from
    each input token to output token ``token`` [B, N] (module docstring); ``dtype`` as in
    ``attention_rollout`` (the capacities made from the weights in float32).

    >>> share = fastxai.attention_flow(bert, ids, attention_mask=mask)
    """
    _check_options(head_fusion, discard_ratio)
    if not isinstance(grid, bool):
        raise TypeError(f"grid must be a bool, got {type(grid).__name__}")
    attentions = attentions_of(
        model, inputs, attention_mask=attention_mask, forward_kwargs=forward_kwargs, dtype=dtype
    )
    values = flow(attentions, head_fusion, discard_ratio, token)
    prefix = declared_prefix_tokens(_compile.original(model))
    return _finish(values, inputs, attention_mask, grid, token, prefix)
