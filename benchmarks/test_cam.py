"""Grad-CAM: floor vs fastxai Grad-CAM and Grad-CAM++ vs Captum's LayerGradCam, on small_resnet.

CAM methods use no fused op (one forward, one backward stopping at the layer, an epilogue over
the layer's activation), so there is one fastxai row per method rather than one per backend.
"""

from __future__ import annotations

import pytest
import torch
from models import ROUNDS, PairedFloor, case, floor

from fastxai.attribution.class_activation import grad_cam, grad_cam_plus_plus

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYER = "5"  # the last BasicBlock of small_resnet: [B, 64, 8, 8]


def _implementations() -> list[str]:
    names = ["floor", "fastxai-grad_cam", "fastxai-grad_cam_plus_plus"]
    try:
        import captum  # noqa: F401

        names.append("captum")
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("implementation", _implementations())
def test_cam(benchmark, implementation: str) -> None:
    model, x, target = case("resnet")
    model, x, target = model.to(DEVICE), x.to(DEVICE), target.to(DEVICE)
    benchmark.group = "cam-resnet-float32"
    benchmark.extra_info.update(points=x.shape[0], batch=x.shape[0], layer=LAYER)
    if implementation == "floor":
        function = lambda: floor(model, x, target, 1)  # noqa: E731
    elif implementation == "captum":
        from captum.attr import LayerGradCam

        explainer = LayerGradCam(model, model.get_submodule(LAYER))
        function = lambda: explainer.attribute(x, target=target, relu_attributions=True)  # noqa: E731
    else:
        method = grad_cam if implementation == "fastxai-grad_cam" else grad_cam_plus_plus
        function = lambda: method(model, x, target, layer=LAYER)  # noqa: E731
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    paired = PairedFloor(model, x, target, 1)
    benchmark.pedantic(function, setup=paired, rounds=ROUNDS["resnet"], warmup_rounds=2)
    benchmark.extra_info["paired_floor_median"] = paired.median
