"""GradientSHAP: floor vs fastxai per backend (and graphed on a GPU) vs Captum's GradientShap,
32 samples from a background of 8 baselines, noise 0.1."""

from __future__ import annotations

import pytest
import torch
from conftest import implementations
from models import CASES, ROUNDS, PairedFloor, case, floor

import fastxai as fx

SAMPLES = 32
STDEV = 0.1
BACKGROUND = 8
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAPH_STEPS = 4
"""Points per input in one graphed chunk (``cuda_graph=True`` replays one graph per chunk)."""
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("implementation", implementations(graphed=True))
@pytest.mark.parametrize("model_name", list(CASES))
def test_gradient_shap(benchmark, model_name: str, implementation: str, dtype: torch.dtype) -> None:
    model, x, target = case(model_name)
    model, x, target = model.to(DEVICE, dtype), x.to(DEVICE, dtype), target.to(DEVICE)
    generator = torch.Generator().manual_seed(2)
    baselines = torch.rand(BACKGROUND, *x.shape[1:], generator=generator).to(DEVICE, dtype)
    benchmark.group = f"gradient_shap-{model_name}-{str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(points=SAMPLES * x.shape[0], batch=x.shape[0])
    if implementation == "floor":
        function = lambda: floor(model, x, target, SAMPLES)  # noqa: E731
    elif implementation == "captum":
        from captum.attr import GradientShap

        explainer = GradientShap(model)
        function = lambda: explainer.attribute(  # noqa: E731
            x, baselines, n_samples=SAMPLES, stdevs=STDEV, target=target
        )
    else:
        backend = implementation.removeprefix("fastxai-").removesuffix("-graphed")
        graphed = (
            {"cuda_graph": True, "chunk_size": GRAPH_STEPS * x.shape[0]}
            if implementation.endswith("-graphed")
            else {}
        )
        function = lambda: fx.gradient_shap(  # noqa: E731
            model, x, target=target, baselines=baselines, n_samples=SAMPLES, stdevs=STDEV, seed=0,
            backend=backend, **graphed,
        )  # fmt: skip
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    paired = PairedFloor(model, x, target, SAMPLES)
    benchmark.pedantic(function, setup=paired, rounds=ROUNDS[model_name], warmup_rounds=2)
    benchmark.extra_info["paired_floor_median"] = paired.median
