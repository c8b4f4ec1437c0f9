"""LRP (epsilon_plus_flat): floor vs fastxai per backend vs Captum (VGG-style only: no residuals)
vs Zennit (when importable; with its BatchNorm canonizer), on a VGG-style and a ResNet-style CNN.
The floor is one forward+backward of the batch (points=1), also timed with the batch in
channels-last layout (fastxai's pass on the CPU runs in it). ``benchmarks/lrp_ratio.py`` measures
the same cases as ratios to the floor, interleaved in one process."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from conftest import implementations
from models import ROUNDS, PairedFloor, case, small_vgg

import fastxai.lrp as lrp

# appended, not prepended: tests/models.py must not shadow benchmarks/models.py
sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))
import real_models

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODELS = ["vgg", "resnet"]


def _case(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model, x, target = case("resnet")
    if name == "vgg":
        model = small_vgg()
    return model.to(DEVICE), x.to(DEVICE), target.to(DEVICE)


def _zennit() -> list[str]:
    if importlib.util.find_spec("zennit") is None:
        return []
    real_models.zennit()  # zennit imports torchvision, whose CPU-machine import needs the workaround
    return ["zennit"]


@pytest.mark.parametrize("implementation", [*implementations(), "floor-channels-last", *_zennit()])
@pytest.mark.parametrize("model_name", MODELS)
def test_lrp(benchmark, model_name: str, implementation: str) -> None:
    model, x, target = _case(model_name)
    benchmark.group = f"lrp-{model_name}"
    benchmark.extra_info.update(points=x.shape[0], batch=x.shape[0], composite="epsilon_plus_flat")
    if implementation == "floor":
        from models import floor

        function = lambda: floor(model, x, target, 1)  # noqa: E731
    elif implementation == "floor-channels-last":
        # the floor in the memory layout fastxai's CPU pass uses: how much of its gain is layout
        from models import floor

        x_cl = x.contiguous(memory_format=torch.channels_last)
        function = lambda: floor(model, x_cl, target, 1)  # noqa: E731
    elif implementation == "captum":
        from captum.attr import LRP

        if model_name == "resnet":
            # Captum has no rule for x + y: record how far its relevance is from conservation.
            try:
                _, delta = LRP(model).attribute(x, target=target, return_convergence_delta=True)
                scores = model(x).gather(1, target.view(-1, 1)).squeeze(1).detach()
                benchmark.extra_info["captum_conservation_error"] = float((delta.abs() / scores.abs()).max())
            except TypeError as error:  # e.g. no rule for nn.Identity shortcuts
                benchmark.extra_info["captum_error"] = str(error)
            pytest.skip("Captum's LRP does not support residual sums")
        explainer = LRP(model)
        function = lambda: explainer.attribute(x, target=target)  # noqa: E731
    elif implementation == "zennit":
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat

        def function() -> torch.Tensor:
            composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
            with Gradient(model, composite) as attributor:
                onehot = torch.nn.functional.one_hot(target, 10).to(x.dtype)
                return attributor(x, onehot)[1]
    else:
        backend = implementation.removeprefix("fastxai-")
        function = lambda: lrp(model, x, target=target, composite="epsilon_plus_flat", backend=backend)  # noqa: E731
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    paired = PairedFloor(model, x, target, 1)
    benchmark.pedantic(function, setup=paired, rounds=ROUNDS["resnet"], warmup_rounds=2)
    benchmark.extra_info["paired_floor_median"] = paired.median
