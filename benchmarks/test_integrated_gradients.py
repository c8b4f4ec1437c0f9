"""Integrated Gradients: floor vs fastxai per backend vs Captum, 32 Gauss-Legendre steps."""

from __future__ import annotations

import pytest
import torch
from conftest import implementations
from models import CASES, ROUNDS, PairedFloor, case, floor

import fastxai as fx

STEPS = 32
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAPH_STEPS = 4
"""Points per input in one graphed chunk (``cuda_graph=True`` replays one graph per chunk)."""
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("implementation", implementations(graphed=True))
@pytest.mark.parametrize("model_name", list(CASES))
def test_integrated_gradients(benchmark, model_name: str, implementation: str, dtype: torch.dtype) -> None:
    model, x, target = case(model_name)
    model, x, target = model.to(DEVICE, dtype), x.to(DEVICE, dtype), target.to(DEVICE)
    benchmark.group = f"integrated_gradients-{model_name}-{str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(points=STEPS * x.shape[0], batch=x.shape[0])
    if implementation == "floor":
        function = lambda: floor(model, x, target, STEPS)  # noqa: E731
    elif implementation == "captum":
        from captum.attr import IntegratedGradients

        explainer = IntegratedGradients(model)
        function = lambda: explainer.attribute(x, target=target, n_steps=STEPS, method="gausslegendre")  # noqa: E731
    else:
        backend = implementation.removeprefix("fastxai-").removesuffix("-graphed")
        graphed = (
            {"cuda_graph": True, "chunk_size": GRAPH_STEPS * x.shape[0]}
            if implementation.endswith("-graphed")
            else {}
        )
        function = lambda: fx.integrated_gradients(  # noqa: E731
            model, x, target=target, n_steps=STEPS, backend=backend, **graphed
        )
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    paired = PairedFloor(model, x, target, STEPS)
    benchmark.pedantic(function, setup=paired, rounds=ROUNDS[model_name], warmup_rounds=2)
    benchmark.extra_info["paired_floor_median"] = paired.median
