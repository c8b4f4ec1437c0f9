"""Parts of the command line's main job: how much the fused backends save against the plain
PyTorch reference, and how faithful each method is, on the data being attributed."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fastxai import _backends


def _best_of(function: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    result = function()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def reference_timings(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    methods: Mapping[str, tuple[Callable[..., torch.Tensor], dict[str, Any]]],
    *,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """For each method that runs on fused ops (it takes ``backend=``): the best time with the
    automatic backend and with the reference backend over the same inputs, the speed-up, and
    the largest difference between the two results relative to the largest attribution."""
    chosen = _backends.resolve(_backends.get_backend(), inputs.device, inputs.dtype)
    rows = []
    for name, (function, kwargs) in methods.items():
        if "backend" not in function.__code__.co_varnames:
            continue
        fused, fused_result = _best_of(
            functools.partial(function, model, inputs, target=targets, backend=chosen, **kwargs), repeats
        )
        plain, plain_result = _best_of(
            functools.partial(function, model, inputs, target=targets, backend="reference", **kwargs), repeats
        )
        scale = float(plain_result.abs().max()) or 1.0
        difference = float((fused_result - plain_result).abs().max()) / scale
        rows.append(
            {
                "method": name,
                "backend": chosen,
                "seconds": round(fused, 4),
                "reference seconds": round(plain, 4),
                "speed-up": round(plain / fused, 2),
                "max difference / max |attribution|": f"{difference:.1e}",
            }
        )
    return rows
