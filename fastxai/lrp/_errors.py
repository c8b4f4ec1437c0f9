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


__all__ = ["UnsupportedLayerError", "call_site", "model_line"]
