"""Peer checks: Captum's LRP (epsilon rule; models without residuals) against fastxai.lrp and the
Captum-shaped ``fastxai.compat._captum_lrp.LRP``; Zennit when importable (opt-in)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastxai.lrp as lrp
from fastxai.compat._captum_lrp import LRP
from fastxai.lrp import Composite, rules
from fastxai.lrp._linear import LINEAR_TYPES


class CaptumNet(nn.Module):
    """Only modules Captum's LRP supports; the flatten is functional (Captum has no rule for nn.Flatten)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu1, self.pool1 = nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        self.fc1, self.relu3, self.drop, self.fc2 = nn.Linear(24, 8), nn.Tanh(), nn.Dropout(), nn.Linear(8, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn(self.conv1(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.drop(self.relu3(self.fc1(x.view(x.shape[0], -1)))))


def test_compat_lrp_matches_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    model = CaptumNet().eval()
    x = torch.rand(3, 2, 8, 8)
    target = torch.tensor([0, 2, 1])
    expected, delta_expected = captum_attr.LRP(model).attribute(
        x, target=target, return_convergence_delta=True
    )
    got, delta = LRP(model).attribute(x, target=target, return_convergence_delta=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(delta, delta_expected.to(delta.dtype), atol=1e-5, rtol=1e-4)
    assert not any(hasattr(module, "rule") for module in model.modules())


def test_functional_epsilon_matches_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    model = CaptumNet().eval()
    x = torch.rand(2, 2, 8, 8)
    expected = captum_attr.LRP(model).attribute(x, target=1)
    composite = Composite([((*LINEAR_TYPES, nn.BatchNorm2d), rules.Epsilon(1e-9))], stabilizer=1e-9)
    got = lrp(model, x, target=1, composite=composite, merge_batchnorm=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_compat_honours_captum_epsilon_rule_and_rejects_others() -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule

    model = CaptumNet().eval()
    x = torch.rand(2, 2, 8, 8)
    model.fc1.rule = EpsilonRule(epsilon=0.5)  # type: ignore[assignment]
    got = LRP(model).attribute(x, target=0)
    expected = captum_attr.LRP(model).attribute(x, target=0)  # Captum deletes module.rule afterwards
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    model.fc1.rule = GammaRule()  # type: ignore[assignment]
    with pytest.raises(NotImplementedError, match="GammaRule"):
        LRP(model).attribute(x, target=0)


def test_compat_honours_captum_identity_rule_and_reuses_its_plan() -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    from captum.attr._utils.lrp_rules import IdentityRule

    from fastxai.lrp import _plans

    model = CaptumNet().eval()
    x = torch.rand(2, 2, 8, 8)
    explainer = LRP(model)
    model.bn.rule = IdentityRule()  # type: ignore[assignment]
    got = explainer.attribute(x, target=1)
    explainer.attribute(x, target=1)
    assert len(_plans._PLANS[model]) == 1  # the same composite, the same cached plan
    expected = captum_attr.LRP(model).attribute(x, target=1)  # Captum deletes module.rule afterwards
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(got, explainer.attribute(x, target=1))  # rule gone: epsilon on BatchNorm


@pytest.mark.parametrize(
    "kwargs",
    [{"additional_forward_args": (1,)}, {"verbose": True}],
    ids=["additional_forward_args", "verbose"],
)
def test_compat_unhonoured_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(NotImplementedError):
        LRP(CaptumNet().eval()).attribute(torch.rand(1, 2, 8, 8), target=0, **kwargs)


ZENNIT_COMPOSITES = [
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
]


def zennit_vgg() -> nn.Module:
    """VGG-style: conv-ReLU pairs with biases, max pooling, average pooling, a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    ).eval()  # fmt: skip


class ZennitBlock(nn.Module):
    """A residual block whose sum is ``sum_module(stack([x, f(x)], -1))``: Zennit gives its ``Sum``
    module the proportional (Norm) rule, a plain ``x + y`` would get no rule at all there."""

    def __init__(self, channels: int, sum_module: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.relu1, self.relu2, self.sum = nn.ReLU(), nn.ReLU(), sum_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.sum(torch.stack([x, y], dim=-1)))


def zennit_resnet(sum_type: type[nn.Module]) -> nn.Module:
    """ResNet-style: stem conv-BN-ReLU, two residual blocks (BatchNorm with running statistics),
    average pooling, a linear head."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        ZennitBlock(8, sum_type(dim=-1)), ZennitBlock(8, sum_type(dim=-1)),  # type: ignore[call-arg]
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def zennit_relevance(model: nn.Module, x: torch.Tensor, target: int, name: str) -> torch.Tensor:
    """Zennit's relevance for the composite ``name``, BatchNorm merged by fastxai's canonizer."""
    from zennit.attribution import Gradient
    from zennit.composites import COMPOSITES

    from fastxai.lrp import MergeBatchNorm

    kwargs = {"low": torch.zeros_like(x), "high": torch.ones_like(x)} if name == "epsilon_gamma_box" else {}
    with MergeBatchNorm(model), Gradient(model, COMPOSITES[name](**kwargs)) as attributor:
        output = model(x).detach()
        onehot = torch.zeros_like(output)
        onehot[:, target] = 1.0
        return attributor(x, onehot * output)[1]


@pytest.mark.parametrize("name", ZENNIT_COMPOSITES)
@pytest.mark.parametrize("architecture", ["vgg", "resnet"])
def test_zennit_composites_agree(architecture: str, name: str) -> None:
    pytest.importorskip("zennit.composites", reason="zennit is not installed (opt-in peer)")
    from zennit.layer import Sum

    model = zennit_vgg() if architecture == "vgg" else zennit_resnet(Sum)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = zennit_relevance(model, x, 3, name)
    got = lrp(model, x, target=3, composite=name)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-3, msg=f"{architecture} {name}")
