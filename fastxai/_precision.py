"""Reduced precision for the model: ``dtype=torch.bfloat16`` (or ``torch.float16``) of the methods.

With ``dtype`` set, a method builds the points it feeds the model (path points, noisy copies,
perturbed copies) in that dtype, runs every model call under ``torch.autocast`` with it (the
matrix products and convolutions in ``dtype``, the model's parameters untouched), takes the
gradients in ``dtype`` and sums them with the fused ops, which accumulate half-precision values
in float32. Only the model's arithmetic and the point batches (half the memory traffic) are
reduced; the sums, the final products ``(x - x') * integral`` and the results stay in float32
(the inputs' dtype). The accuracy this costs is measured in tests/test_precision.py and the
README ("bf16").

>>> a = fastxai.integrated_gradients(model, x, target=y, dtype=torch.bfloat16)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

MODEL_DTYPES = (torch.bfloat16, torch.float16)


def check_dtype(dtype: object, device: torch.device) -> torch.dtype | None:
    """``dtype=``: None (the model runs in the inputs' dtype, as given) or a half dtype
    ``torch.autocast`` supports on ``device``."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"dtype must be None, torch.bfloat16 or torch.float16, got {type(dtype).__name__} {dtype!r}"
        )
    if dtype not in MODEL_DTYPES:
        raise ValueError(
            f"dtype must be None, torch.bfloat16 or torch.float16 (the precision the model runs in, "
            f"under autocast), got {dtype!r}"
        )
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"dtype={dtype} needs torch.autocast, which is not available on {device.type}")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype=torch.bfloat16: the GPU {device} does not support bfloat16")
    return dtype


def autocast(dtype: torch.dtype | None, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast(device_type, dtype)``, or nothing for ``dtype=None``. Without autocast's
    weight cache: a CUDA graph requires it off (``_graphs``), and it saves nothing here (one
    forward per region; the backward runs outside it)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=False)


def autocast_model(
    model: Callable[..., Any], dtype: torch.dtype | None, device_type: str
) -> Callable[..., Any]:
    """``model`` run under ``autocast(dtype, device_type)`` (``model`` itself for None). Only the
    calls are wrapped: the caller keeps the module for its state guard."""
    if dtype is None:
        return model

    def run(*args: Any, **kwargs: Any) -> Any:
        with autocast(dtype, device_type):
            return model(*args, **kwargs)

    return run


def points_dtype(values: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the points a method feeds the model: ``dtype``, else the values' own."""
    return values.dtype if dtype is None else dtype


def accumulator_dtype(values: torch.dtype) -> torch.dtype:
    """The fused ops' accumulator for values of ``values``: float64 for float64, else float32."""
    return torch.float64 if values == torch.float64 else torch.float32


__all__ = [
    "MODEL_DTYPES",
    "accumulator_dtype",
    "autocast",
    "autocast_model",
    "check_dtype",
    "points_dtype",
]
