"""Traceable stand-ins for ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and
``nn.TransformerEncoder``, written with the ops the relevance pass has rules for.

Their own forward passes are opaque to torch.fx (``F.multi_head_attention_forward``, fused fast
paths), so the tracer of ``fastxai.lrp._graph`` runs these functions in their place: each
computes what the module computes in eval mode, op by op. Parameters are read through the
module, so the trace holds them as ``get_attr`` nodes (read afresh at every call); submodules
(``out_proj``, ``linear1``/``linear2``, ``norm1``/``norm2``, a module activation, the layers of
an encoder) are called as modules and appear in the graph by their dotted names, so a composite
can give them rules by type or name (e.g. ``"encoder.layers.0.self_attn.out_proj"``).

Multi-head attention, E = embed_dim, H heads of D = E / H, batch-first shapes (with
``batch_first=False`` the inputs [T, B, E] are transposed to [B, T, E] and the output back)::

    q = F.linear(query, W_q, b_q)               [B, T, E]   epsilon rule (composite.stabilizer);
    k = F.linear(key, W_k, b_k)                 [B, S, E]   W_q, W_k, W_v: slices of in_proj_weight
    v = F.linear(value, W_v, b_v)               [B, S, E]   (or q/k/v_proj_weight when kdim/vdim differ)
    q, k, v -> .unflatten(-1, (H, D)).transpose(-3, -2)    [B, H, T|S, D]   relevance moved back
    scores = q @ k.transpose(-2, -1) * D**-0.5   [B, H, T, S]  matmul: epsilon, shared 50/50
                                                            between q and k; the constant scale passes R
    attention = scores.softmax(dim=-1)                      AttnLRP softmax rule R_x = x (R - y sum R)
    context = attention @ v                     [B, H, T, D]  matmul: epsilon, 50/50 attention / v
    output = out_proj(context.transpose(-3, -2).flatten(-2))   [B, T, E]  the composite's nn.Linear rule

The AttnLRP rules are those of Achtibat et al. 2024 (``fastxai.lrp._nodes``). With
``need_weights=True`` the weights are returned ([B, T, S], averaged over heads, or [B, H, T, S])
but must not carry relevance: a trace whose model reads them is refused. Unbatched inputs work
with ``batch_first=True`` only.

Encoder layer (``norm_first=False``, the default; dropouts are the identity in eval mode)::

    x = norm1(x + attention(x, x, x));  x = norm2(x + ff(x))        ff(x) = linear2(act(linear1(x)))

and with ``norm_first=True``: ``x = x + attention(norm1(x)); x = x + ff(norm2(x))``. Sums split
relevance in proportion to their addends, LayerNorm follows AttnLRP, relu/gelu pass it on. The
encoder runs its layers one after the other, then its final ``norm`` if it has one.

Conservation: with no biases and stabilisers -> 0, every step conserves relevance except the
softmax (AttnLRP's rule is not conservative), so the input's total is the target logit minus
what the softmaxes absorb (``sum R_softmax_out - sum R_softmax_in`` each).

Refused (``UnsupportedLayerError`` naming the option): ``attn_mask``/``src_mask``/``mask``,
``key_padding_mask``/``src_key_padding_mask``, ``is_causal``, ``add_bias_kv``, ``add_zero_attn``,
dropout > 0 in training mode (``fastxai.lrp`` always traces in eval mode).

>>> attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()
>>> output, _ = multihead_attention(attention, x, x, x, need_weights=False)  # attention(x, x, x)[0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from fastxai.lrp._errors import UnsupportedLayerError

WEIGHTS_META = "fastxai_attention_weights"  # node.meta key: the node is attention weights, of that module


def _refuse(kind: str, name: str | None, option: str) -> UnsupportedLayerError:
    where = f" {name!r}" if name else ""
    return UnsupportedLayerError(
        f"LRP does not support {option} in nn.{kind}{where}: the relevance pass has no rule for it"
    )


def _refuse_given(kind: str, name: str | None, options: dict[str, Any]) -> None:
    """Refuse the first option that is given: not None, and not False for a flag."""
    for option, value in options.items():
        if value is True:
            raise _refuse(kind, name, f"{option}=True")
        if value is not None and value is not False:
            raise _refuse(kind, name, option)


def _check_dropout(kind: str, module: nn.Module, name: str | None, rates: list[float]) -> None:
    if module.training and any(rate > 0 for rate in rates):
        raise _refuse(kind, name, "dropout > 0 in training mode (call model.eval())")


def multihead_attention(
    module: nn.MultiheadAttention,
    query: Any,
    key: Any,
    value: Any,
    key_padding_mask: Any = None,
    need_weights: bool = True,
    attn_mask: Any = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    *,
    name: str | None = None,
) -> tuple[Any, Any]:
    """``module(query, key, value, ...)`` of an ``nn.MultiheadAttention`` in plain ops (see the
    module docstring for the formula). Returns ``(output, weights or None)``; ``name`` is the
    module's dotted name for error messages."""
    kind = "MultiheadAttention"
    _refuse_given(
        kind,
        name,
        {
            "key_padding_mask": key_padding_mask,
            "attn_mask": attn_mask,
            "is_causal": bool(is_causal),
            "add_bias_kv": module.bias_k is not None or module.bias_v is not None,
            "add_zero_attn": bool(module.add_zero_attn),
        },
    )
    _check_dropout(kind, module, name, [module.dropout])
    if not module.batch_first:
        if key is query and value is query:  # self-attention: one transpose, three readers
            query = key = value = query.transpose(-3, -2)
        else:
            query, key, value = (tensor.transpose(-3, -2) for tensor in (query, key, value))
    embed, heads = module.embed_dim, module.num_heads
    bias = module.in_proj_bias
    if module._qkv_same_embed_dim:
        weight = module.in_proj_weight
        weights = (weight[:embed], weight[embed : 2 * embed], weight[2 * embed :])
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
    biases = (None,) * 3 if bias is None else (bias[:embed], bias[embed : 2 * embed], bias[2 * embed :])
    q, k, v = (
        nn.functional.linear(tensor, w, b).unflatten(-1, (heads, embed // heads)).transpose(-3, -2)
        for tensor, w, b in zip((query, key, value), weights, biases, strict=True)
    )
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(embed // heads))
    attention = scores.softmax(dim=-1)
    context = (attention @ v).transpose(-3, -2).flatten(-2)
    output = module.out_proj(context)
    if not module.batch_first:
        output = output.transpose(-3, -2)
    if not need_weights:
        return output, None
    averaged = attention.mean(dim=-3) if average_attn_weights else attention.clone()
    if isinstance(averaged, fx.Proxy):
        averaged.node.meta[WEIGHTS_META] = name or "MultiheadAttention"
    return output, averaged


def transformer_encoder_layer(
    module: nn.TransformerEncoderLayer,
    src: Any,
    src_mask: Any = None,
    src_key_padding_mask: Any = None,
    is_causal: bool = False,
    *,
    name: str | None = None,
) -> Any:
    """``module(src)`` of an ``nn.TransformerEncoderLayer`` in plain ops: the self-attention block
    (``module.self_attn`` called as a module) and the feed-forward block, post- or pre-norm."""
    kind = "TransformerEncoderLayer"
    _refuse_given(
        kind,
        name,
        {"src_mask": src_mask, "src_key_padding_mask": src_key_padding_mask, "is_causal": bool(is_causal)},
    )
    rates = [module.self_attn.dropout, module.dropout.p, module.dropout1.p, module.dropout2.p]
    _check_dropout(kind, module, name, rates)

    def attention(x: Any) -> Any:
        return module.self_attn(x, x, x, need_weights=False)[0]

    def feed_forward(x: Any) -> Any:
        return module.linear2(module.activation(module.linear1(x)))

    x = src
    if module.norm_first:
        x = x + attention(module.norm1(x))
        return x + feed_forward(module.norm2(x))
    x = module.norm1(x + attention(x))
    return module.norm2(x + feed_forward(x))


def transformer_encoder(
    module: nn.TransformerEncoder,
    src: Any,
    mask: Any = None,
    src_key_padding_mask: Any = None,
    is_causal: bool | None = None,
    *,
    name: str | None = None,
) -> Any:
    """``module(src)`` of an ``nn.TransformerEncoder``: its layers in turn (called as modules),
    then its final ``norm`` if any."""
    _refuse_given(
        "TransformerEncoder",
        name,
        {"mask": mask, "src_key_padding_mask": src_key_padding_mask, "is_causal": bool(is_causal)},
    )
    x = src
    for layer in module.layers:
        x = layer(x)
    return x if module.norm is None else module.norm(x)


def scaled_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    """``F.scaled_dot_product_attention`` in plain ops, traced in its place so that the AttnLRP
    rules apply (models such as timm's ViT call the fused function)::

        scores = q @ k.transpose(-2, -1) * scale       scale = 1 / sqrt(D) by default
        scores = scores + attn_mask                    a float mask (a constant addend), or
        scores = scores.masked_fill(~attn_mask, -inf)  a boolean mask / is_causal (masked: no relevance)
        output = scores.softmax(-1) @ v

    Refused: ``dropout_p > 0`` (a model passes it only in training mode) and ``enable_gqa``."""
    if dropout_p:
        raise _refuse("functional.scaled_dot_product_attention", None, "dropout_p > 0 (call model.eval())")
    if enable_gqa:
        raise _refuse("functional.scaled_dot_product_attention", None, "enable_gqa=True")
    factor = query.size(-1) ** -0.5 if scale is None else scale
    scores = query @ key.transpose(-2, -1) * factor
    if is_causal:
        causal = query.new_ones((query.size(-2), key.size(-2)), dtype=torch.bool).tril()
        scores = scores.masked_fill(causal.logical_not(), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
        else:
            scores = scores + attn_mask
    return scores.softmax(dim=-1) @ value


DECOMPOSITIONS: dict[type[nn.Module], Callable[..., Any]] = {
    nn.MultiheadAttention: multihead_attention,
    nn.TransformerEncoderLayer: transformer_encoder_layer,
    nn.TransformerEncoder: transformer_encoder,
}


def decomposition(module: nn.Module) -> Callable[..., Any] | None:
    """The stand-in for ``module``'s forward, or None: for these module types and subclasses that
    keep their forward (a subclass with its own forward is traced as user code)."""
    for base, function in DECOMPOSITIONS.items():
        if isinstance(module, base) and type(module).forward is base.forward:
            return function
    return None


def drop_unread_weights(graph: fx.Graph) -> None:
    """Erase the attention-weights nodes of a trace that nothing reads; refuse a model that reads
    them (they would carry relevance around the rules of the attention)."""
    for node in list(graph.nodes):
        owner = node.meta.get(WEIGHTS_META)
        if owner is None:
            continue
        if node.users:
            raise UnsupportedLayerError(
                f"the model reads the attention weights of nn.MultiheadAttention {owner!r} "
                f"(need_weights=True, node {node.name!r}); LRP propagates relevance through the "
                "attention output only: call it with need_weights=False or discard the weights"
            )
        graph.erase_node(node)


__all__ = [
    "DECOMPOSITIONS",
    "decomposition",
    "drop_unread_weights",
    "multihead_attention",
    "scaled_dot_product_attention",
    "transformer_encoder",
    "transformer_encoder_layer",
]
