"""fastxai.compat LayerLRP against Captum's own LayerLRP (the oracle): the relevance at every
layer's output and input of a conv net, rules set on modules, layer lists, the convergence delta
against ``f_target(x) - sum(R)``, tuple inputs, errors before the model runs, the model as found."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

from fastxai.compat._captum_layer_lrp import LayerLRP

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat LayerLRP")
lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")


class ConvNet(nn.Module):
    """Conv-BN-ReLU-maxpool, conv-ReLU-avgpool, adaptive average pool, linear (Captum's LRP has
    a rule for each; the flatten is functional: Captum has none for nn.Flatten)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn, self.relu1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.pool1, self.conv2, self.relu2 = nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU()
        self.pool2, self.gap, self.fc = nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Linear(5, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn(self.conv1(x))))
        x = self.gap(self.pool2(self.relu2(self.conv2(x))))
        return self.fc(x.flatten(1))


LAYERS = ["conv1", "bn", "pool1", "conv2", "pool2", "gap", "fc"]


def captum(model: nn.Module, layer: object, x: object, **kwargs: object) -> object:
    inputs = tuple(part.clone() for part in x) if isinstance(x, tuple) else x.clone()  # type: ignore[attr-defined]
    with pytest.warns(UserWarning):  # Captum: the input did not require gradients
        return captum_attr.LayerLRP(model, layer).attribute(inputs, **kwargs)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("to_input", [False, True])
def test_each_layer_output_and_input_as_captum(name: str, to_input: bool) -> None:
    model = ConvNet().double().eval()
    x = torch.randn(3, 2, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer = getattr(model, name)
    before = model_state(model)
    for target in (1, [0, 2, 1]):
        ours, delta = LayerLRP(model, layer).attribute(
            x, target=target, attribute_to_layer_input=to_input, return_convergence_delta=True
        )
        expected, expected_delta = captum(
            model, layer, x, target=target, attribute_to_layer_input=to_input, return_convergence_delta=True
        )
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected.detach(), rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(delta, expected_delta.detach(), rtol=1e-6, atol=1e-9)
        # Captum's sign: the target output minus the layer's relevance
        picked = model(x).detach()[torch.arange(3), torch.as_tensor(target).expand(3)]
        torch.testing.assert_close(delta, picked - ours.flatten(1).sum(1))
    assert_same_state(before, model_state(model))


def test_rules_on_modules_and_layer_list_as_captum() -> None:
    """Gamma and alpha1-beta0 set as ``module.rule``; a list of layers gives a list of
    relevances and deltas, in order."""
    model = ConvNet().double().eval()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model.conv2.rule = lrp_rules.GammaRule(gamma=0.25)
    model.fc.rule = lrp_rules.Alpha1_Beta0_Rule()
    layers = [model.fc, model.conv1, model.pool1]
    ours, deltas = LayerLRP(model, layers).attribute(x, target=2, return_convergence_delta=True)
    assert isinstance(model.fc.rule, lrp_rules.Alpha1_Beta0_Rule)  # left where it was (Captum deletes it)
    expected, expected_deltas = captum(model, layers, x, target=2, return_convergence_delta=True)
    assert isinstance(ours, list) and len(ours) == len(deltas) == 3
    for got, want, delta, want_delta in zip(ours, expected, deltas, expected_deltas, strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(delta, want_delta.detach(), rtol=1e-6, atol=1e-9)


def test_conserving_net_has_zero_delta_and_output_relevance_is_the_logit() -> None:
    """A bias-free Linear-ReLU-Linear with a tiny epsilon conserves relevance: the delta is 0 at
    every layer, and the last layer's output relevance is ``onehot(target) * f(x)``."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    x = torch.rand(4, 4, dtype=torch.float64) + 0.1
    target = [0, 1, 2, 1]
    (first, last), deltas = LayerLRP(model, [model[0], model[2]]).attribute(
        x, target=target, return_convergence_delta=True
    )
    output = model(x).detach()
    expected = torch.zeros_like(output)
    expected[torch.arange(4), target] = output[torch.arange(4), target]
    torch.testing.assert_close(last, expected)
    for delta in deltas:
        torch.testing.assert_close(
            delta, torch.zeros(4, dtype=torch.float64), atol=1e-7, rtol=0
        )  # epsilon 1e-9 absorbs a little
    assert first.shape == (4, 6)


def test_tuple_inputs_and_additional_arguments_as_captum() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(4)
            self.a, self.b, self.relu, self.head = (
                nn.Linear(3, 4),
                nn.Linear(2, 4),
                nn.ReLU(),
                nn.Linear(4, 2),
            )

        def forward(self, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
            return self.head(self.relu(self.a(x) + self.b(y)) * scale)

    model = TwoInputs().eval()
    x, y = torch.randn(3, 3), torch.randn(3, 2)
    for layer in (model.b, model.head):
        for to_input in (False, True):
            ours = LayerLRP(model, layer).attribute(
                (x, y), target=0, additional_forward_args=(2.0,), attribute_to_layer_input=to_input
            )
            expected = captum(
                model,
                layer,
                (x, y),
                target=0,
                additional_forward_args=(2.0,),
                attribute_to_layer_input=to_input,
            )
            torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-6)


def test_bad_input_refused_before_the_model_runs() -> None:
    model = ConvNet().eval()
    x = torch.randn(2, 2, 8, 8)
    calls = [0]
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    before = model_state(model)
    with pytest.raises(ValueError, match="not a submodule"):
        LayerLRP(model, nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"layer must be an nn\.Module"):
        LayerLRP(model, "fc")  # type: ignore[arg-type]
    lrp = LayerLRP(model, model.fc)
    with pytest.raises(TypeError, match="attribute_to_layer_input"):
        lrp.attribute(x, target=0, attribute_to_layer_input=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="return_convergence_delta"):
        lrp.attribute(x, target=0, return_convergence_delta="yes")  # type: ignore[arg-type]
    model.fc.rule = 1
    with pytest.raises(TypeError, match="rule must be a Captum PropagationRule"):
        LayerLRP(model, model.fc)
    del model.fc.rule
    assert calls[0] == 0
    assert_same_state(before, model_state(model))
    handle.remove()


def test_layers_forward_does_not_call_once_are_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.relu, self.unused = nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.fc(self.relu(x)))

    model = Twice().eval()
    before = model_state(model)
    with pytest.raises(ValueError, match="'unused' is called 0 times"):
        LayerLRP(model, model.unused).attribute(torch.randn(2, 3), target=0)
    with pytest.raises(ValueError, match="'relu' is called 2 times"):
        LayerLRP(model, model.relu).attribute(torch.randn(2, 3), target=0)
    assert_same_state(before, model_state(model))


def test_training_mode_is_kept_and_exposed_as_captum() -> None:
    """A Dropout in training mode drops (the same mask cannot be drawn twice, so its rate is 0
    here); modes, hooks and grad flags are as they were."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.0), nn.ReLU(), nn.Linear(5, 2)).train()
    x = torch.randn(3, 4)
    before = model_state(model)
    ours = LayerLRP(model, model[0]).attribute(x, target=1)
    assert_same_state(before, model_state(model))
    expected = captum(model, model[0], x, target=1)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-6)


def test_layer_without_a_rule_gives_the_relevance_its_consumer_reads() -> None:
    """Captum raises for a ReLU layer (it holds no rule); here its output relevance is what
    Captum's max pooling after it receives at its input."""
    model = ConvNet().double().eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ours = LayerLRP(model, model.relu1).attribute(x, target=0)
    expected = captum(model, model.pool1, x, target=0, attribute_to_layer_input=True)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-7, atol=1e-10)


def test_exported_by_the_captum_face() -> None:
    from fastxai.compat import captum as fc

    assert fc.LayerLRP is LayerLRP and "LayerLRP" in fc.__all__
    assert "``LayerLRP`` (``_captum_layer_lrp``)" in (fc.__doc__ or "")
