"""The error of the relevance pass, in a module of its own so that every part of ``fastxai.lrp``
(the tracer, the attention decompositions, the handlers) can raise it without import cycles."""

from __future__ import annotations


class UnsupportedLayerError(TypeError):
    """The relevance pass has no rule for a module or function of the model."""


__all__ = ["UnsupportedLayerError"]
