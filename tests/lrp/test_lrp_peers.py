"""Peer checks: Captum's LRP (epsilon rule; models without residuals) against fastxai.lrp and the
Captum-shaped ``fastxai.compat._captum_lrp.LRP``; Zennit's composites on the same models."""

from __future__ import annotations

import pytest
import real_models
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


def test_compat_honours_captum_rules_and_rejects_custom_ones() -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    model = CaptumNet().eval()
    x = torch.rand(2, 2, 8, 8)
    for rule in (EpsilonRule(epsilon=0.5), GammaRule(), Alpha1_Beta0_Rule()):
        model.fc1.rule = rule  # type: ignore[assignment]
        got = LRP(model).attribute(x, target=0)
        expected = captum_attr.LRP(model).attribute(x, target=0)  # Captum deletes module.rule afterwards
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)

    class Custom(EpsilonRule):
        pass

    model.fc1.rule = Custom()  # type: ignore[assignment]
    with pytest.raises(NotImplementedError, match="Custom"):
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
    (wrapper,) = explainer._wrappers.values()  # the model inside a kept wrapper, traced once
    assert len(_plans._PLANS[wrapper]) == 1  # the same composite, the same cached plan
    expected = captum_attr.LRP(model).attribute(x, target=1)  # Captum deletes module.rule afterwards
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(got, explainer.attribute(x, target=1))  # rule gone: epsilon on BatchNorm


def test_compat_verbose_prints_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    LRP(CaptumNet().eval()).attribute(torch.rand(1, 2, 8, 8), target=0, verbose=True)
    assert "Applied Epsilon(epsilon=1e-09" in capsys.readouterr().out


class TwoInputNet(nn.Module):
    """Two inputs (an image and a vector) joined by torch.cat, a per-example mask and a scale
    among the extra forward arguments; only steps Captum's LRP and fastxai treat alike."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.relu1 = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()
        self.image_fc, self.relu2 = nn.Linear(3 * 16, 5), nn.ReLU()
        self.vector_fc, self.relu3 = nn.Linear(4, 5), nn.ReLU()
        self.head = nn.Linear(10, 3)

    def forward(
        self, image: torch.Tensor, vector: torch.Tensor, mask: torch.Tensor, scale: float
    ) -> torch.Tensor:
        a = self.relu2(self.image_fc(self.relu1(self.conv(image)).flatten(1)))
        b = self.relu3(self.vector_fc(vector)) * scale
        return self.head(torch.cat([a, b], dim=1) * mask)


def test_compat_tuple_inputs_and_additional_forward_args_match_captum() -> None:
    """Each input of a tuple gets its relevance, the extra arguments (a per-example tensor and a
    number) none; same numbers and convergence deltas as Captum; the model gains no attribute.
    A scale other than 1 too: relevance goes through the product as its gradient, as in Captum
    (which so counts the scale twice, relevance ~ s**2)."""
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    model = TwoInputNet().eval()
    generator = torch.Generator().manual_seed(2)
    image, vector = torch.rand(4, 2, 4, 4, generator=generator), torch.rand(4, 4, generator=generator)
    mask = (torch.rand(4, 10, generator=generator) > 0.3).float()
    attributes = set(vars(model))
    target = torch.tensor([0, 2, 1, 2])
    args = (mask, 1.0)
    got, delta = LRP(model).attribute(
        (image, vector), target=target, additional_forward_args=args, return_convergence_delta=True
    )
    expected, expected_delta = captum_attr.LRP(model).attribute(
        (image, vector), target=target, additional_forward_args=args, return_convergence_delta=True
    )
    assert isinstance(got, tuple) and len(got) == 2
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(delta, expected_delta.detach(), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        logits = model(image, vector, *args).gather(1, target.view(-1, 1))
    torch.testing.assert_close(LRP(model).compute_convergence_delta(got, logits), delta, atol=1e-6, rtol=1e-5)
    assert set(vars(model)) == attributes and all(not hasattr(m, "rule") for m in model.modules())
    scaled = LRP(model).attribute((image, vector), target=target, additional_forward_args=(mask, 2.5))
    reference = captum_attr.LRP(model).attribute(
        (image, vector), target=target, additional_forward_args=(mask, 2.5)
    )
    for ours, theirs in zip(scaled, reference, strict=True):
        torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-4)
    assert not torch.allclose(scaled[1], got[1])


def test_compat_one_tuple_input_and_extra_tensor_argument() -> None:
    """A 1-tuple comes back as a 1-tuple; a single extra tensor (not in a tuple) is accepted as
    Captum accepts it; a rule set on a module is honoured through the wrapper."""
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    from captum.attr._utils.lrp_rules import EpsilonRule

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.fc1, self.relu, self.fc2 = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.relu(self.fc1(x)) * mask)

    model = Masked().eval()
    x, mask = torch.rand(5, 6), (torch.rand(5, 8) > 0.4).float()
    got = LRP(model).attribute((x,), target=1, additional_forward_args=mask)
    expected = captum_attr.LRP(model).attribute((x,), target=1, additional_forward_args=mask)
    assert isinstance(got, tuple) and len(got) == 1
    torch.testing.assert_close(got[0], expected[0].detach(), atol=1e-7, rtol=1e-5)
    model.fc1.rule = EpsilonRule(epsilon=0.3)  # type: ignore[assignment]
    got = LRP(model).attribute(x, target=2, additional_forward_args=(mask,))
    expected = captum_attr.LRP(model).attribute(x, target=2, additional_forward_args=(mask,))
    torch.testing.assert_close(got, expected.detach(), atol=1e-7, rtol=1e-5)
    assert not torch.allclose(got, LRP(model).attribute(x, target=2, additional_forward_args=(mask,)))


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
    real_models.zennit()
    from zennit.layer import Sum

    model = zennit_vgg() if architecture == "vgg" else zennit_resnet(Sum)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = zennit_relevance(model, x, 3, name)
    got = lrp(model, x, target=3, composite=name)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-3, msg=f"{architecture} {name}")
