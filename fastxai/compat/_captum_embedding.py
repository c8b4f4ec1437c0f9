"""Captum's interpretable embedding layer, the API of its older text tutorials:
``configure_interpretable_embedding_layer``, ``InterpretableEmbeddingBase``,
``remove_interpretable_embedding_layer``.

    from fastxai.compat import captum as fc
    emb = fc.configure_interpretable_embedding_layer(model, "encoder.embedding")  # warns
    vectors = emb.indices_to_embeddings(ids)              # the layer's own output [B, L, D]
    attr = fc.IntegratedGradients(model).attribute(vectors, baselines=emb.indices_to_embeddings(ref))
    fc.remove_interpretable_embedding_layer(model, emb)   # the original layer is back

``configure_interpretable_embedding_layer(model, name)`` puts an ``InterpretableEmbeddingBase``
in place of the layer ``name`` (a dotted path such as ``"encoder.embedding"`` or ``"layers.0"``):
its forward returns its first argument unchanged, so the model now takes embedding vectors where
it took token ids, and attributions can be computed for each embedding dimension.
``indices_to_embeddings(*input, **kwargs)`` runs the original layer. The model stays modified
until ``remove_interpretable_embedding_layer`` (a ``UserWarning`` says so, as Captum's does);
``fastxai.compat.captum.LayerIntegratedGradients`` on the embedding layer gives the same
attributions without modifying the model.

Differences from Captum, on purpose: a layer name that does not resolve raises an error naming
``embedding_layer_name`` and the missing part (a ``ValueError`` that is also Captum's
``AttributeError``); configuring a layer twice raises a ``ValueError`` that is also Captum's
``AssertionError``; removing from a model whose layer at that name is neither the interpretable
layer nor its original refuses to overwrite it; removing twice does nothing.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from fastxai.compat._captum_targets import CaptumArgumentError, CaptumTypeError

__all__ = [
    "InterpretableEmbeddingBase",
    "configure_interpretable_embedding_layer",
    "remove_interpretable_embedding_layer",
]


class LayerNameError(ValueError, AttributeError):
    """A layer name that does not resolve, raised where Captum raises ``AttributeError``."""


class InterpretableEmbeddingBase(nn.Module):
    """Stands in for an embedding layer: ``forward`` passes precomputed embeddings through.

    ``embedding``: the original layer (kept as a submodule, so the model's parameters are
    unchanged); ``full_name``: its dotted name in the model. ``num_embeddings`` and
    ``embedding_dim`` are the layer's own (None where it has none, e.g. a custom module).
    """

    def __init__(self, embedding: Any, full_name: str) -> None:
        super().__init__()
        self.num_embeddings = getattr(embedding, "num_embeddings", None)
        self.embedding_dim = getattr(embedding, "embedding_dim", None)
        self.embedding = embedding
        self.full_name = full_name

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """The embedding tensor: the first positional argument, else the first keyword one."""
        if inputs:
            return inputs[0]
        if kwargs:
            return next(iter(kwargs.values()))
        raise CaptumArgumentError(
            "InterpretableEmbeddingBase got no argument: pass the embedding tensor (from "
            "indices_to_embeddings) as the first argument where the layer took its indices"
        )

    def indices_to_embeddings(self, *input: Any, **kwargs: Any) -> Any:
        """The original layer's output for these arguments (token ids, usually) [..., D]."""
        return self.embedding(*input, **kwargs)


def _parent_and_attribute(model: nn.Module, embedding_layer_name: object) -> tuple[Any, str]:
    """The object holding the layer named ``a.b.c`` (``model.a.b``) and the last part (``c``)."""
    if not isinstance(embedding_layer_name, str):
        raise CaptumTypeError(
            f"embedding_layer_name must be a str (a dotted name such as 'encoder.embedding'), "
            f"got {type(embedding_layer_name).__name__}"
        )
    *path, last = embedding_layer_name.split(".")
    holder: Any = model
    for depth, part in enumerate([*path, last]):
        if not part or not hasattr(holder, part):
            reached = ".".join(["model", *path[:depth]])
            raise LayerNameError(
                f"embedding_layer_name {embedding_layer_name!r} does not name a layer of the model: "
                f"{reached} has no attribute {part!r}"
            )
        if depth < len(path):
            holder = getattr(holder, part)
    return holder, last


def configure_interpretable_embedding_layer(
    model: nn.Module, embedding_layer_name: str = "embedding"
) -> InterpretableEmbeddingBase:
    """Replaces ``model.<embedding_layer_name>`` by an ``InterpretableEmbeddingBase`` wrapping it
    and returns that; undo with ``remove_interpretable_embedding_layer(model, returned)``.

    >>> emb = configure_interpretable_embedding_layer(model, "embedding")
    >>> attr = IntegratedGradients(model).attribute(emb.indices_to_embeddings(ids), target=1)
    """
    if not isinstance(model, nn.Module):
        raise CaptumTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    holder, attribute = _parent_and_attribute(model, embedding_layer_name)
    layer = getattr(holder, attribute)
    if isinstance(layer, InterpretableEmbeddingBase):
        raise CaptumArgumentError(
            f"the layer {embedding_layer_name!r} is already an InterpretableEmbeddingBase; remove it "
            "with remove_interpretable_embedding_layer before configuring it again"
        )
    if not callable(layer):
        raise CaptumTypeError(
            f"embedding_layer_name {embedding_layer_name!r} names a {type(layer).__name__}, not a layer"
        )
    warnings.warn(
        f"the model's layer {embedding_layer_name!r} is replaced by an InterpretableEmbeddingBase: "
        "the model now takes embedding vectors (from indices_to_embeddings) in place of that layer's "
        "inputs until remove_interpretable_embedding_layer puts the original layer back",
        UserWarning,
        stacklevel=2,
    )
    interpretable = InterpretableEmbeddingBase(layer, embedding_layer_name)
    setattr(holder, attribute, interpretable)
    return interpretable


def remove_interpretable_embedding_layer(
    model: nn.Module, interpretable_emb: InterpretableEmbeddingBase
) -> None:
    """Puts back the layer that ``configure_interpretable_embedding_layer`` replaced."""
    if not isinstance(model, nn.Module):
        raise CaptumTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(interpretable_emb, InterpretableEmbeddingBase):
        raise CaptumTypeError(
            "interpretable_emb must be the InterpretableEmbeddingBase that "
            f"configure_interpretable_embedding_layer returned, got {type(interpretable_emb).__name__}"
        )
    holder, attribute = _parent_and_attribute(model, interpretable_emb.full_name)
    current = getattr(holder, attribute)
    if current is not interpretable_emb and current is not interpretable_emb.embedding:
        raise CaptumArgumentError(
            f"interpretable_emb: the model's layer {interpretable_emb.full_name!r} is a "
            f"{type(current).__name__}, not this interpretable layer; is it the model it was configured on?"
        )
    setattr(holder, attribute, interpretable_emb.embedding)
