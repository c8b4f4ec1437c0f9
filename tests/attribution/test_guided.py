"""Guided Backpropagation and DeconvNet: closed form on an MLP, Captum, functional and in-place ReLUs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state, small_cnn
from torch import nn

import fastxai.attribution.guided as guided


class FunctionalReluNet(nn.Module):
    """The same maths as ``small_cnn`` but with functional and in-place ReLUs."""

    def __init__(self, reference: nn.Sequential) -> None:
        super().__init__()
        self.body = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.body
        x = F.relu(layers[1](layers[0](x)))
        x = layers[3](x)
        x = layers[5](layers[4](x))
        x.relu_()
        return layers[9](layers[8](layers[7](x)))


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()


def test_closed_form_on_one_hidden_layer() -> None:
    """f = W2 relu(W1 x + b1): guided = W1^T (relu(W2[c]) * [h > 0]), deconv = W1^T relu(W2[c])."""
    model = _mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    active = (x @ w1.T + b1 > 0).double()
    upstream = w2[target].clamp_min(0)
    torch.testing.assert_close(guided.guided_backprop(model, x, target), (upstream * active) @ w1)
    torch.testing.assert_close(guided.deconvnet(model, x, target), upstream @ w1)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_matches_captum(rule: str) -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer")
    model = small_cnn(seed=3).eval()
    x = torch.randn(3, 1, 8, 8)
    target = torch.tensor([1, 4, 9])
    peer_class = captum_attr.GuidedBackprop if rule == "guided" else captum_attr.Deconvolution
    with pytest.warns(UserWarning):
        expected = peer_class(model).attribute(x.clone().requires_grad_(True), target=target)
    ours = guided.modified_relu_gradient(model, x, target, rule, chunk_size=2)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("function", [guided.guided_backprop, guided.deconvnet])
def test_functional_and_inplace_relus_are_modified(function) -> None:
    """A model with F.relu and Tensor.relu_ gives the numbers of its nn.ReLU twin."""
    modules = small_cnn(seed=4).eval()
    functional = FunctionalReluNet(modules).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(function(functional, x, 3), function(modules, x, 3))
    inplace = small_cnn(seed=4).eval()
    inplace[2].inplace = inplace[6].inplace = True
    torch.testing.assert_close(function(inplace, x, 3), function(modules, x, 3))


class ReluOnViewNet(nn.Module):
    """``small_cnn``'s maths with its first ReLU applied in place on a view: the relu node sits
    inside ``CopySlices``, out of the graph walk's reach, so the rule falls back to hooking
    each relu call."""

    def __init__(self, reference: nn.Sequential) -> None:
        super().__init__()
        self.body = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.body
        x = layers[1](layers[0](x))
        F.relu(x[:, :], inplace=True)
        return layers[9](layers[8](layers[7](layers[6](layers[5](layers[4](layers[3](x)))))))


@pytest.mark.parametrize("function", [guided.guided_backprop, guided.deconvnet])
def test_relu_in_place_on_a_view_is_modified(function) -> None:
    modules = small_cnn(seed=6).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(function(ReluOnViewNet(modules).eval(), x, 2), function(modules, x, 2))


class ClippedReluOnViewNet(nn.Module):
    """A ReLU6 in place on a view (``F.relu6(view, inplace=True)``): the fallback path."""

    def __init__(self, reference: nn.Sequential) -> None:
        super().__init__()
        self.body = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.body[0](x)
        F.relu6(hidden[:, :], inplace=True)
        return self.body[2](hidden)


@pytest.mark.parametrize(
    "clipped", [lambda: nn.ReLU6(), lambda: nn.ReLU6(inplace=True), lambda: nn.Hardtanh(0.0, 2.5)]
)
def test_clipped_relus_take_the_rule_in_closed_form(clipped) -> None:  # type: ignore[no-untyped-def]
    """f = W2 min(max(W1 x + b1, 0), t): guided = W1^T (relu(W2[c]) * [0 < h < t]); deconv =
    W1^T relu(W2[c]), as for a ReLU (MobileNetV2's ReLU6 was refused as "no ReLU")."""
    model = _mlp(seed=1)
    model[1] = clipped()
    bound = model[1].max_val
    x = 4 * torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2, 0, 1])
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    hidden = x @ w1.T + b1
    inside = ((hidden > 0) & (hidden < bound)).double()
    assert 0 < inside.mean() < 1 and (hidden > bound).any()  # both bounds are met
    upstream = w2[target].clamp_min(0)
    torch.testing.assert_close(guided.guided_backprop(model, x, target), (upstream * inside) @ w1)
    torch.testing.assert_close(guided.deconvnet(model, x, target), upstream @ w1)
    if isinstance(model[1], nn.ReLU6):  # F.relu6 in place on a view: hooked call by call
        on_view = ClippedReluOnViewNet(model)
        torch.testing.assert_close(guided.guided_backprop(on_view, x, target), (upstream * inside) @ w1)


def test_hardtanh_not_clipped_at_zero_is_not_a_relu() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Hardtanh(), nn.Linear(3, 2))  # [-1, 1]: not ReLU-like
    with pytest.raises(ValueError, match="no ReLU"):
        guided.guided_backprop(model, torch.randn(2, 4))


def test_model_without_relu_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no ReLU"):
        guided.guided_backprop(model, torch.randn(2, 4))


def test_state_restored_also_on_error() -> None:
    model = small_cnn(seed=5).train()
    before = model_state(model)
    guided.guided_backprop(model, torch.randn(2, 1, 8, 8), 1)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        guided.deconvnet(model, torch.randn(2, 1, 8, 8), 11)
    assert_same_state(before, model_state(model))
    # The ReLU override is gone after the call: plain autograd again.
    x = torch.randn(3, requires_grad=True)
    (grad,) = torch.autograd.grad(torch.relu(x).mul(-1).sum(), x)
    torch.testing.assert_close(grad, -(x > 0).float())


def test_bad_input_named() -> None:
    model = small_cnn()
    with pytest.raises(TypeError, match="inputs"):
        guided.guided_backprop(model, [1.0, 2.0])
    with pytest.raises(ValueError, match="chunk_size"):
        guided.guided_backprop(model, torch.randn(1, 1, 8, 8), chunk_size=0)
    with pytest.raises(ValueError, match="rule"):
        guided.ReluRule("sideways")
