"""Certificates: randomized smoothing vs its floor (the bare forwards over the same noisy inputs
in the same batches), per backend; and the Lipschitz bound of each benchmark model."""

from __future__ import annotations

import pytest
import torch
from conftest import implementations
from models import CASES, ROUNDS, case

from fastxai.certify import lipschitz_bound, smoothing_certify

N0, N = 16, 128
BATCH_SIZE = 256
SIGMA = 0.25
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def smoothing_floor(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Forwards only, over (N0 + N) noisy copies of every input in batches of BATCH_SIZE: what
    certification cannot avoid. The noise is drawn outside the loop, so it costs nothing here."""
    noisy = x.repeat(N0 + N, *([1] * (x.dim() - 1))) + SIGMA * torch.randn(
        (N0 + N) * x.shape[0], *x.shape[1:], device=x.device
    )
    with torch.no_grad():
        for start in range(0, noisy.shape[0], BATCH_SIZE):
            model(noisy[start : start + BATCH_SIZE]).argmax(1)


@pytest.mark.parametrize("implementation", [name for name in implementations() if name != "captum"])
@pytest.mark.parametrize("model_name", list(CASES))
def test_smoothing_certify(benchmark, model_name: str, implementation: str) -> None:
    model, x, _ = case(model_name)
    model, x = model.to(DEVICE), x.to(DEVICE)
    benchmark.group = f"smoothing_certify-{model_name}"
    benchmark.extra_info.update(points=(N0 + N) * x.shape[0], batch=x.shape[0])
    if implementation == "floor":
        function = lambda: smoothing_floor(model, x)  # noqa: E731
    else:
        backend = implementation.removeprefix("fastxai-")

        def function() -> None:
            smoothing_certify(
                model, x, sigma=SIGMA, n0=N0, n=N, batch_size=BATCH_SIZE, seed=0, backend=backend
            )

    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    benchmark.pedantic(function, rounds=ROUNDS[model_name], warmup_rounds=1)


@pytest.mark.parametrize("model_name", list(CASES))
def test_lipschitz_bound(benchmark, model_name: str) -> None:
    model, x, _ = case(model_name)
    benchmark.group = "lipschitz_bound"
    bound = benchmark.pedantic(lambda: lipschitz_bound(model.to(DEVICE), tuple(x.shape[1:])), rounds=3)
    benchmark.extra_info["bound"] = bound
    assert bound > 0
