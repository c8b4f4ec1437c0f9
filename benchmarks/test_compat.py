"""The Captum drop-in with Captum's default arguments: every class of fastxai.compat.captum
against Captum's class of the same name, on the same model, inputs and targets, in one run.

What a user gets who changes only the import: no chunking knob is set, so fastxai's classes
choose their own batching (Captum's defaults, such as ``perturbations_per_eval=1``, are what
Captum runs). Sampled methods use Captum's default sample counts on both sides. The report's
"/ fastxai best" column of Captum's row is Captum's time over fastxai's.

Cases: an MLP 64-64-10 and the CNN of fastxai.digits on 1x8x8 digits-size inputs (batch 32),
and the small ResNet of benchmarks/models.py on 3x32x32 (batch 8) with its ReLUs as
``nn.ReLU`` modules: Captum's GuidedBackprop, Deconvolution and DeepLift modify only modules,
so on the blocks' functional ``torch.relu`` they would compute another (plain-gradient) answer
with less work, and the two times would not compare like for like. Perturbation classes run
with Captum's defaults (every element a feature, default sample counts, stride 1) on the
digits-size inputs, and with 2x2 superpixels on the ResNet's inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import digits_cnn_model, digits_mlp, small_resnet
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr")


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "digits-mlp": (digits_mlp, (1, 8, 8), 32),
    "digits-cnn": (digits_cnn_model, (1, 8, 8), 32),
    "resnet": (lambda: small_resnet(module_relus=True), (3, 32, 32), 8),
}


def _layer(model: nn.Module) -> nn.Module:
    """A hidden layer for the layer classes: the last ReLU before the head."""
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    return relus[-1]


def _superpixels(shape: tuple[int, ...]) -> torch.Tensor:
    channels, height, width = shape
    rows, cols = torch.arange(height) // 2, torch.arange(width) // 2
    ids = rows.view(-1, 1) * ((width + 1) // 2) + cols.view(1, -1)
    return ids.expand(channels, height, width).unsqueeze(0).contiguous()


def _mask_for(shape: tuple[int, ...]) -> dict[str, Any]:
    """Captum's default (every element its own feature) on digits-size inputs; 2x2 superpixels
    on 3x32x32, where Captum's per-element loops would take minutes."""
    return {} if shape[1] * shape[2] <= 64 else {"feature_mask": _superpixels(shape)}


# name: (attribute keyword arguments, needs a layer)
SPECS: dict[str, Callable[[tuple[int, ...], torch.Tensor], tuple[dict[str, Any], bool]]] = {
    "Saliency": lambda shape, x: ({}, False),
    "InputXGradient": lambda shape, x: ({}, False),
    "GuidedBackprop": lambda shape, x: ({}, False),
    "Deconvolution": lambda shape, x: ({}, False),
    "IntegratedGradients": lambda shape, x: ({}, False),
    "GradientShap": lambda shape, x: ({"baselines": torch.zeros(4, *shape)}, False),
    "DeepLift": lambda shape, x: ({}, False),
    "DeepLiftShap": lambda shape, x: ({"baselines": torch.zeros(4, *shape)}, False),
    "LRP": lambda shape, x: ({}, False),
    "Occlusion": lambda shape, x: ({"sliding_window_shapes": (shape[0], 2, 2)}, False),
    "FeatureAblation": lambda shape, x: (_mask_for(shape), False),
    "ShapleyValueSampling": lambda shape, x: (_mask_for(shape), False),
    "KernelShap": lambda shape, x: (_mask_for(shape), False),
    "Lime": lambda shape, x: (_mask_for(shape), False),
    "LayerGradCam": lambda shape, x: ({}, True),
    "LayerIntegratedGradients": lambda shape, x: ({}, True),
    "LayerConductance": lambda shape, x: ({}, True),
    "LayerActivation": lambda shape, x: ({}, True),
    "LayerGradientXActivation": lambda shape, x: ({}, True),
}
ROUNDS = {"digits-mlp": 30, "digits-cnn": 10, "resnet": 3}  # a sub-millisecond median needs many
MANY_PASSES = {
    "IntegratedGradients", "LayerIntegratedGradients", "LayerConductance", "Occlusion",
    "FeatureAblation", "ShapleyValueSampling", "KernelShap", "Lime",
}  # fmt: skip
"""Classes whose ResNet call takes a tenth of a second or more; the others (one or a few passes,
milliseconds, where run-to-run noise is 5-10%) get 20 rounds on the ResNet."""


@pytest.fixture(scope="module", autouse=True)
def _steady_allocator() -> None:
    """One 512-row forward and backward of the ResNet before anything is timed. glibc's
    allocator keeps freed blocks for reuse only once it has seen large ones (its mmap and trim
    thresholds grow with the blocks it frees); before that, every pass of a few MB maps and
    faults fresh pages. Without this, the first class to run a large pass in the process pays
    that and the ones after it do not: fastxai's IntegratedGradients on the ResNet took ~520 ms
    of CPU time before any large pass and ~390 ms after one, Captum's ~530-545 ms either way
    (one thread). Every long-running process that has loaded a model or a batch is in this state."""
    model = small_resnet(module_relus=True)
    x = torch.rand(512, 3, 32, 32).requires_grad_(True)
    torch.autograd.grad(model(x)[:, 0].sum(), x)


def _params() -> list[Any]:
    params = []
    for name in SPECS:
        for case in CASES:
            for implementation in ("fastxai", "captum"):
                params.append(pytest.param(name, case, implementation, id=f"{name}-{case}-{implementation}"))
    return params


@pytest.mark.parametrize(("name", "case", "implementation"), _params())
def test_compat_defaults(benchmark: Any, name: str, case: str, implementation: str) -> None:
    namespace = fc if implementation == "fastxai" else captum_attr
    cls = getattr(namespace, name, None)
    if cls is None:
        pytest.skip(f"{implementation} has no {name}")
    factory, shape, batch = CASES[case]
    model = factory()
    if name == "LRP" and implementation == "captum":
        pytest.skip("Captum's LRP has no rule for nn.Flatten, residual sums or adaptive pooling")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=generator)
    with torch.no_grad():
        target = model(x).argmax(1)
    kwargs, needs_layer = SPECS[name](shape, x)
    method = cls(model, _layer(model)) if needs_layer else cls(model)
    benchmark.group = f"compat {name} {case}"

    if name != "LayerActivation":  # the one class without a target
        kwargs = {"target": target, **kwargs}

    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return method.attribute(x, **kwargs)

    rounds = 20 if case == "resnet" and name not in MANY_PASSES else ROUNDS[case]
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
