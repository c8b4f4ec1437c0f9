"""Zennit as the oracle on torchvision's own VGG and ResNet: the architectures Zennit has
canonizers for (``VGGCanonizer``, a ``SequentialMergeBatchNorm``; ``ResNetCanonizer``, which also
routes each block's ``out += identity`` through a ``Sum`` module that its composites give the
proportional rule). Random weights, float64, batch 2 of 3 x 32 x 32 images in [0, 1].

Zennit runs on the model with its canonizer; fastxai runs on the model as it is (it merges
BatchNorm and finds the residual sums on its own trace). The rules are the same maths, so the
relevances must agree to float64 rounding: measured 6e-16 to 1.4e-15 of the largest relevance
(``pytest -s`` prints the table); asserted below 1e-10.

One correction to the oracle, and why: Zennit 0.5.1's ``MergeBatchNorm`` folds
``gamma / sqrt(var + eps)`` into the preceding layer and sets the BatchNorm's statistics to
mean 0, var 1, but leaves its ``eps``, so the "identity" BatchNorm still divides by
``sqrt(1 + eps)`` (1e-5: a factor 1 - 5e-6 per BatchNorm) and the canonical model is not the
model. Its relevance then differs from the exact merge by 2.4e-5 (resnet18) to 6.4e-5
(vgg16_bn) of the largest relevance with these weights; later Zennit releases zero that
``eps``. The comparison zeroes the ``eps`` of the BatchNorms Zennit's canonizer has merged,
after it has merged them, which makes its canonical model the model exactly, as fastxai's is.

Conservation (``sum R = f_target(x)``) is what the rules promise once the biases are gone (every
Linear/Conv bias and BatchNorm shift zeroed): z+, alpha2-beta1, gamma, flat, ZBox and the
proportional rule on sums and average pooling redistribute exactly what they receive; only the
stabilisers (1e-6) are left. Asserted per (architecture, composite) below 5e-5.

The VGG classifier is narrowed to 64 units (torchvision's is 25088 x 4096 x 4096: 120M
parameters, 1 GB in float64, for the same three Linear-ReLU-Dropout steps); the features, which
hold the convolutions and BatchNorms Zennit's canonizer works on, are torchvision's.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import real_models
import torch
from models import assert_same_state, model_state
from torch import nn

from fastxai.lrp import get_composite, lrp

SIZE = 32
AGREEMENT = 1e-10  # max |R_fastxai - R_zennit| / max |R_zennit|, float64
# |sum R - f_target(x)| / |f_target(x)|, float64, no biases: measured 1.6e-6 to 4.2e-6, what the
# 1e-6 stabilisers of 11 to 21 layers take; the rule bugs this would catch are percents
CONSERVATION = 5e-5
# torchvision architecture -> Zennit's canonizer for it (zennit.torchvision)
ARCHITECTURES = {"vgg11": "VGGCanonizer", "vgg16_bn": "VGGCanonizer", "resnet18": "ResNetCanonizer"}
# fastxai's registered name -> Zennit's composite class (the same maths, see composites.py)
COMPOSITES = {
    "epsilon_plus_flat": "EpsilonPlusFlat",
    "epsilon_gamma_box": "EpsilonGammaBox",
    "epsilon_alpha2_beta1": "EpsilonAlpha2Beta1",
}
AGREE: dict[tuple[str, str], float] = {}
CONSERVE: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    """Prints, after the module, the measured figures (``pytest -s``); frees the models (300 MB)."""
    yield
    build.cache_clear()
    if not AGREE and not CONSERVE:
        return
    print("\n\nfastxai vs Zennit 0.5.1, float64: max |R - R_zennit| / max |R_zennit|;")
    print("conservation without biases: max over the batch of |sum R - f(x)| / |f(x)|")
    print(f"{'architecture':13s} {'composite':22s} {'vs Zennit':>10s} {'conservation':>13s}")
    for key in dict.fromkeys([*AGREE, *CONSERVE]):
        agree, conserve = AGREE.get(key), CONSERVE.get(key)
        cells = [f"{value:.2e}" if value is not None else "-" for value in (agree, conserve)]
        print(f"{key[0]:13s} {key[1]:22s} {cells[0]:>10s} {cells[1]:>13s}")


@functools.cache
def build(name: str) -> nn.Module:
    """torchvision's ``name`` with random weights in float64, eval mode (see the module docstring).

    Built on the meta device so VGG's full-size classifier is never allocated, then given
    weights: He-normal Conv/Linear weights (activations keep their scale through the ReLUs),
    biases in +-0.1 and BatchNorm statistics and affine parameters away from the identity, so
    every rule's bias and merge handling is exercised."""
    models = real_models.torchvision().models
    with torch.device("meta"):
        model = getattr(models, name)(weights=None, num_classes=10)
    if name.startswith("vgg"):
        model.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
            nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10),
        )  # fmt: skip
    model = model.to_empty(device="cpu").double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
    return model.eval()


def inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2 images in [0, 1] (ZBox's box) and each one's predicted class."""
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        return x, model(x).argmax(dim=1)


@contextmanager
def exact_identity_batchnorms(model: nn.Module) -> Iterator[None]:
    """Inside Zennit's canonizer: its merged BatchNorms (weight 1, bias 0, mean 0, var 1) with
    ``eps`` 0, so they are the identity (see the module docstring); ``eps`` put back after."""
    batchnorms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for module in batchnorms:  # only a BatchNorm Zennit merged may change: else the model would
        assert bool((module.weight == 1).all() and (module.running_var == 1).all()), module
        assert not (module.bias.any() or module.running_mean.any()), module
    saved = [module.eps for module in batchnorms]
    try:
        for module in batchnorms:
            module.eps = 0.0
        yield
    finally:
        for module, eps in zip(batchnorms, saved, strict=True):
            module.eps = eps


def zennit_relevance(
    architecture: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, name: str
) -> torch.Tensor:
    """Zennit's relevance for the composite ``name`` with the architecture's canonizer; the
    relevance put on the output is the target logit (``f_target(x) * onehot``)."""
    real_models.zennit()
    from zennit import composites
    from zennit import torchvision as canonizers
    from zennit.attribution import Gradient

    canonizer = getattr(canonizers, ARCHITECTURES[architecture])()
    box = {"low": torch.zeros_like(x), "high": torch.ones_like(x)} if name == "epsilon_gamma_box" else {}
    composite = getattr(composites, COMPOSITES[name])(canonizers=[canonizer], **box)
    onehot = nn.functional.one_hot(target, 10).to(x.dtype)

    def target_logit(logits: torch.Tensor) -> torch.Tensor:
        return logits.detach() * onehot

    with Gradient(model, composite) as attributor, exact_identity_batchnorms(model):
        return attributor(x.clone(), target_logit)[1]


def fastxai_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    kwargs = {"low": 0.0, "high": 1.0} if name == "epsilon_gamma_box" else {}
    relevance = lrp(model, x, target=target, composite=get_composite(name, **kwargs))
    assert isinstance(relevance, torch.Tensor)
    return relevance


@pytest.mark.parametrize("name", list(COMPOSITES))
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_zennit_agrees_on_torchvision_models(architecture: str, name: str) -> None:
    real_models.zennit()
    model = build(architecture)
    x, target = inputs(model)
    before = model_state(model)  # the model is shared by the tests: both must leave it as found
    expected = zennit_relevance(architecture, model, x, target, name)
    got = fastxai_relevance(model, x, target, name)
    assert_same_state(before, model_state(model))
    scale = expected.abs().max().item()
    error = (got - expected).abs().max().item() / scale
    AGREE[architecture, name] = error
    assert scale > 0 and torch.isfinite(got).all()
    assert error < AGREEMENT, f"{architecture} {name}: {error:.3g} of the largest relevance"


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_composites_conserve_on_torchvision_models_without_biases(architecture: str) -> None:
    model = copy.deepcopy(build(architecture))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
    x, target = inputs(model)
    with torch.no_grad():
        logit = model(x).gather(1, target[:, None])[:, 0]
    for name in COMPOSITES:
        total = fastxai_relevance(model, x, target, name).flatten(1).sum(1)
        error = ((total - logit).abs() / logit.abs()).max().item()
        CONSERVE[architecture, name] = error
        assert error < CONSERVATION, f"{architecture} {name}: sum R off f(x) by {error:.3g}"
