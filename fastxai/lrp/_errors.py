"""The error of the relevance pass, in a module of its own so that every part of ``fastxai.lrp``
(the tracer, the attention decompositions, the handlers) can raise it without import cycles,
and where in the model's code an error arose (the innermost line outside torch and fastxai)."""

from __future__ import annotations

import os
import sys
import traceback

import torch

_ROOTS = tuple(os.path.dirname(module.__file__ or "") + os.sep for module in (torch, sys.modules["fastxai"]))


class UnsupportedLayerError(TypeError):
    """The relevance pass has no rule for a module or function of the model."""


def call_site() -> str:
    """The innermost frame of the running call outside torch and fastxai: the model's line."""
    frame = sys._getframe(1)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(_ROOTS):
            return f"{frame.f_code.co_filename}:{frame.f_lineno} (in {frame.f_code.co_name})"
        frame = frame.f_back  # type: ignore[assignment]
    return "an unknown line"


def model_line(error: BaseException) -> str:
    """The innermost line of ``error``'s traceback outside torch and fastxai."""
    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__) if not frame.filename.startswith(_ROOTS)
    ]
    if not frames:
        return "a line of torch or fastxai"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} ({frame.line})"


def division_refusal(numerator_carries: bool, numerator: torch.Size, divisor: torch.Size) -> str | None:
    """Why LRP refuses ``numerator / divisor`` with an input-dependent divisor, or None when it
    takes it: a normaliser, one divisor shared by a group of numerator elements (it broadcasts
    over at least one of the numerator's dimensions: a row sum, a norm, linear attention's
    ``q . sum_j k_j``), is a constant of the relevance pass, as LayerNorm's ``1/std`` is in AttnLRP
    (Achtibat et al. 2024) and the normalisers of "XAI for Transformers" (Ali et al. 2022): the
    quotient is then a linear scaling of the numerator, whose relevance is the quotient's. A
    divisor of the numerator's own shape is an element-wise function of two activations (no
    group shares it), and a constant numerator would carry no relevance: both are refused."""
    if not numerator_carries:
        return "a constant divided by an input-dependent tensor: the numerator carries no relevance"
    extra = len(numerator) - len(divisor)
    shared = extra > 0 or (
        extra == 0 and any(one == 1 < size for one, size in zip(divisor, numerator, strict=True))
    )
    if not shared:
        return (
            f"division by an input-dependent divisor of the numerator's shape ({tuple(divisor)}): LRP "
            "takes a normaliser (a divisor shared by a group of elements: a sum, a norm) as a constant, "
            "not an element-wise quotient of two activations"
        )
    return None


__all__ = ["UnsupportedLayerError", "call_site", "division_refusal", "model_line"]
