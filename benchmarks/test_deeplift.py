"""DeepLIFT: floor (one forward+backward over the 2B rows of inputs and baselines) vs fastxai
vs Captum's DeepLift, on the benchmark MLP and small ResNet.

    PYTHONPATH=. OMP_NUM_THREADS=2 python -m pytest benchmarks/test_deeplift.py \
        --benchmark-enable --benchmark-only --benchmark-json=deeplift.json
    python benchmarks/report.py deeplift.json

Measured on a 2-core shared CPU (load average ~13, so wall time is noise): one thread, CPU
time, median of interleaved runs (``PYTHONPATH=. python benchmarks/deeplift_ratio.py 100``):
MLP 1.53x the floor (about 0.9 ms of fixed Python cost on a 1.7 ms model), ResNet 1.25-1.32x.
What is above the floor on the ResNet is memory traffic: each extra elementwise pass over
the activations (cold in cache) costs this ResNet about 10% of its forward+backward on one
thread, and the Rescale multiplier takes about four (a custom autograd ReLU that saves one new
mask already measures 1.28x; tuning glibc's malloc speeds the floor up but leaves the ratio).
A fused one-pass multiplier op (native/Triton) is the way to 1.1x.

On the ResNet (functional ``torch.relu`` in its blocks) Captum's numbers are not DeepLIFT's:
it leaves those ReLUs with their gradient; only its time is comparable.
"""

from __future__ import annotations

import pytest
import torch
from models import CASES, ROUNDS, PairedFloor, case
from torch import nn

import fastxai as fx

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]


def _implementations() -> list[str]:
    names = ["floor", "fastxai"]
    try:
        import captum  # noqa: F401

        names.append("captum")
    except ImportError:
        pass
    return names


def pair_floor(
    model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """What any DeepLIFT pays: one forward and one backward over ``[x; baseline]`` in one batch."""
    rows = torch.cat([x, baseline]).requires_grad_(True)
    scores = model(rows).gather(1, target.repeat(2).view(-1, 1))
    (gradient,) = torch.autograd.grad(scores.sum(), rows)
    return gradient


class PairedPairFloor(PairedFloor):
    def __init__(
        self, model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor
    ) -> None:
        super().__init__(model, x, target, 2)
        self.baseline = baseline

    def run(self) -> None:
        pair_floor(self.model, self.x, self.baseline, self.target)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("implementation", _implementations())
@pytest.mark.parametrize("model_name", list(CASES))
def test_deeplift(benchmark, model_name: str, implementation: str, dtype: torch.dtype) -> None:
    model, x, target = case(model_name)
    model, x, target = model.to(DEVICE, dtype), x.to(DEVICE, dtype), target.to(DEVICE)
    baseline = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    benchmark.group = f"deeplift-{model_name}-{str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(points=2 * x.shape[0], batch=x.shape[0])
    if implementation == "floor":
        function = lambda: pair_floor(model, x, baseline, target)  # noqa: E731
    elif implementation == "captum":
        import warnings

        from captum.attr import DeepLift

        warnings.filterwarnings("ignore", message=".*(hooks|require gradients).*")
        explainer = DeepLift(model)
        function = lambda: explainer.attribute(x, baseline, target=target)  # noqa: E731
    else:
        function = lambda: fx.deeplift(model, x, target, baseline)  # noqa: E731
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    paired = PairedPairFloor(model, x, baseline, target)
    benchmark.pedantic(function, setup=paired, rounds=ROUNDS[model_name], warmup_rounds=2)
    benchmark.extra_info["paired_floor_median"] = paired.median
