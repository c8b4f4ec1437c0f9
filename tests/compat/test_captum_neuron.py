"""Captum's neuron classes, LayerGradientShap and InternalInfluence against Captum's own."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, mlp, model_state, small_cnn
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat.captum")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum's hook and selector warnings

MLP_SELECTORS = [3, (3,), (slice(1, 4),), lambda h: h[:, 2] * h[:, 5], lambda h: torch.sum(h)]
CNN_SELECTORS = [
    (2, 1, 1),
    (slice(2, 4), 1, 1),
    (slice(0, 3), 0, slice(1, 3)),
    lambda h: h[:, 1].mean((1, 2)),
]


class TwoInputNet(nn.Module):
    """(x [B, 4], z [B, 3]) and a per-example scale [B] -> [B, 3]; ``mid`` takes two tensors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)
        self.mid = Join()
        self.act = nn.Softplus()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.mid(self.a(x), self.b(z)))) * scale.view(-1, 1)


class Join(nn.Module):
    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u * torch.tanh(v)


def _close(ours: object, theirs: object, atol: float = 1e-5) -> None:
    ours_t = ours if isinstance(ours, tuple) else (ours,)
    theirs_t = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours_t) == len(theirs_t)
    for a, b in zip(ours_t, theirs_t, strict=True):
        assert isinstance(a, torch.Tensor) and a.shape == b.shape
        torch.testing.assert_close(a, b.detach(), atol=atol, rtol=1e-4)


def _both(name: str, *args: object) -> tuple[object, object]:
    return getattr(fc, name)(*args), getattr(captum_attr, name)(*args)


@pytest.mark.parametrize("selector", MLP_SELECTORS)
@pytest.mark.parametrize("to_input", [False, True])
def test_mlp_neuron_classes_match_captum(selector: object, to_input: bool) -> None:
    model = mlp().eval()
    x, background = torch.randn(3, 20), torch.randn(4, 20)
    before = model_state(model)
    calls = {
        "NeuronGradient": ((model, model[2]), {}),
        "NeuronIntegratedGradients": ((model, model[2]), {"n_steps": 10, "baselines": background[:1]}),
        "NeuronDeepLift": ((model, model[3]), {"baselines": background[:1]}),
        "NeuronDeepLiftShap": ((model, model[3]), {"baselines": background}),
        "NeuronFeatureAblation": ((model, model[2]), {}),
        "NeuronConductance": ((model, model[2]), {"target": 1, "n_steps": 10}),
    }
    for name, (args, kwargs) in calls.items():
        if name == "NeuronConductance" and selector is MLP_SELECTORS[-1]:
            continue  # Captum's conductance cannot take a selector summed over the batch
        ours, theirs = _both(name, *args)
        common = {"attribute_to_neuron_input": to_input, **kwargs}
        _close(ours.attribute(x, selector, **common), theirs.attribute(x, selector, **common))
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("selector", CNN_SELECTORS)
def test_cnn_neuron_classes_match_captum(selector: object) -> None:
    # AvgPool: fastxai's DeepLIFT max-pool rule differs from Captum's on purpose (_captum_deeplift)
    model = small_cnn(pool=nn.AvgPool2d, activation=nn.Softplus).eval()
    x = torch.randn(2, 1, 8, 8)
    for name, layer, kwargs in [
        ("NeuronGradient", model[4], {}),
        ("NeuronIntegratedGradients", model[4], {"n_steps": 8, "method": "riemann_left"}),
        ("NeuronDeepLift", model[4], {}),
        ("NeuronFeatureAblation", model[4], {"perturbations_per_eval": 3}),
        ("NeuronConductance", model[4], {"target": 3, "n_steps": 8, "internal_batch_size": 5}),
        ("NeuronConductance", model[2], {"target": 1, "n_steps": 6, "method": "gausslegendre"}),
    ]:
        ours, theirs = _both(name, model, layer)
        _close(ours.attribute(x, selector, **kwargs), theirs.attribute(x, selector, **kwargs), atol=1e-6)


def test_tuple_inputs_per_example_args_and_multiplying() -> None:
    net = TwoInputNet().eval()
    inputs = (torch.randn(3, 4), torch.randn(3, 3))
    scale = torch.tensor([1.0, -2.0, 0.5])
    baselines = (torch.randn(1, 4), torch.randn(1, 3))
    for name, kwargs in [
        ("NeuronIntegratedGradients", {"baselines": baselines, "n_steps": 12}),
        ("NeuronConductance", {"baselines": baselines, "target": 2, "n_steps": 12}),
    ]:
        for multiply in (True, False):
            ours, theirs = _both(name, net, net.act, None, multiply)
            assert ours.multiplies_by_inputs is multiply
            got = ours.attribute(inputs, 4, additional_forward_args=(scale,), **kwargs)
            _close(got, theirs.attribute(inputs, 4, additional_forward_args=(scale,), **kwargs))
    # a layer with two inputs: an index needs one tensor, a callable takes the tuple
    both = lambda values: values[0][:, 1] + values[1][:, 2]  # noqa: E731
    ours, theirs = _both("NeuronGradient", net, net.mid)
    got = ours.attribute(inputs, both, (scale,), attribute_to_neuron_input=True)
    _close(got, theirs.attribute(inputs, both, (scale,), attribute_to_neuron_input=True))
    with pytest.raises(AssertionError, match="2 tensors"):  # Captum's error type
        ours.attribute(inputs, 1, (scale,), attribute_to_neuron_input=True)


def test_neuron_gradient_shap_is_gradient_shap_of_the_neuron() -> None:
    # same seed, same draws: GradientShap of the neuron forward Captum's NeuronGradient defines
    model = mlp().eval()
    x, background = torch.randn(3, 20), torch.randn(5, 20)
    ours = fc.NeuronGradientShap(model, model[2]).attribute(x, 4, background, n_samples=6, stdevs=0.1, seed=2)

    def neuron(inputs: torch.Tensor) -> torch.Tensor:
        return model[:3](inputs)[:, 4:5]

    expected = fc.GradientShap(neuron).attribute(x, background, n_samples=6, stdevs=0.1, target=0, seed=2)
    _close(ours, expected)
    # in expectation, Captum's (draws from torch's generator)
    torch.manual_seed(0)
    theirs = captum_attr.NeuronGradientShap(model, model[2]).attribute(x, 4, background, n_samples=400)
    many = fc.NeuronGradientShap(model, model[2]).attribute(x, 4, background, n_samples=400, seed=0)
    assert (many - theirs).abs().max() < 0.1 * theirs.abs().max()


def test_layer_gradient_shap() -> None:
    model = mlp().eval()
    x, background = torch.randn(3, 20), torch.randn(4, 20)
    # a layer whose gradient is constant (a linear head above it): every draw gives Captum's value
    # for a single baseline
    base = background[:1]
    ours, theirs = _both("LayerGradientShap", model, model[3])
    got, delta = ours.attribute(x, base, n_samples=3, target=2, return_convergence_delta=True, seed=0)
    _close(got, theirs.attribute(x, base, n_samples=3, target=2))
    assert delta.shape == (9,) and delta.abs().max() < 1e-4  # completeness, per example and sample
    # at the first layer's input it is GradientShap, draw for draw under the same seed
    at_input = fc.LayerGradientShap(model, model[0]).attribute(
        x, background, n_samples=7, stdevs=0.1, target=1, attribute_to_layer_input=True, seed=5
    )
    _close(
        at_input, fc.GradientShap(model).attribute(x, background, n_samples=7, stdevs=0.1, target=1, seed=5)
    )
    # without multiply_by_inputs: the mean layer gradient; in expectation Captum's
    local = fc.LayerGradientShap(model, model[2], multiply_by_inputs=False)
    torch.manual_seed(0)
    expected = captum_attr.LayerGradientShap(model, model[2], multiply_by_inputs=False).attribute(
        x, background, n_samples=600, target=1
    )
    assert (
        local.attribute(x, background, n_samples=600, target=1) - expected
    ).abs().max() < 0.15 * expected.abs().max()


def test_layer_gradient_shap_tuple_inputs_per_example_args() -> None:
    net = TwoInputNet().eval()
    inputs = (torch.randn(3, 4), torch.randn(3, 3))
    scale = torch.tensor([1.0, -2.0, 0.5])
    baselines = (torch.randn(1, 4), torch.randn(1, 3))
    ours, theirs = _both("LayerGradientShap", net, net.act)
    # one baseline, no noise, a linear head: deterministic
    got = ours.attribute(inputs, baselines, n_samples=4, target=[0, 1, 2], additional_forward_args=(scale,))
    _close(
        got,
        theirs.attribute(inputs, baselines, n_samples=4, target=[0, 1, 2], additional_forward_args=(scale,)),
    )


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_internal_influence(method: str) -> None:
    model = small_cnn(activation=nn.Softplus).eval()
    x = torch.randn(2, 1, 8, 8)
    before = model_state(model)
    for layer, to_input in [(model[4], False), (model[6], True)]:
        ours, theirs = _both("InternalInfluence", model, layer)
        kwargs = {"target": 2, "n_steps": 9, "method": method, "attribute_to_layer_input": to_input}
        _close(ours.attribute(x, **kwargs, internal_batch_size=5), theirs.attribute(x, **kwargs), atol=1e-6)
    net = TwoInputNet().eval()
    inputs, scale = (torch.randn(3, 4), torch.randn(3, 3)), torch.tensor([1.0, -2.0, 0.5])
    ours, theirs = _both("InternalInfluence", net, net.mid)
    kwargs = {"target": 1, "n_steps": 7, "method": method, "additional_forward_args": (scale,)}
    kwargs["attribute_to_layer_input"] = True
    _close(ours.attribute(inputs, **kwargs), theirs.attribute(inputs, **kwargs))
    assert_same_state(before, model_state(model))


def test_bad_input_refused_before_the_model_runs() -> None:
    model = mlp()
    runs = []
    model.register_forward_pre_hook(lambda *_: runs.append(1))
    x = torch.randn(2, 20)
    with pytest.raises(TypeError, match="neuron_selector"):
        fc.NeuronGradient(model, model[2]).attribute(x, 1.5)
    with pytest.raises(TypeError, match="neuron_selector"):
        fc.NeuronConductance(model, model[2]).attribute(x, (), target=0)
    with pytest.raises(TypeError, match="attribute_to_neuron_input"):
        fc.NeuronIntegratedGradients(model, model[2]).attribute(x, 1, attribute_to_neuron_input="yes")
    with pytest.raises(ValueError, match="n_steps"):
        fc.NeuronConductance(model, model[2]).attribute(x, 1, target=0, n_steps=0)
    with pytest.raises(ValueError, match="n_samples"):
        fc.LayerGradientShap(model, model[2]).attribute(x, x, n_samples=0)
    with pytest.raises(ValueError, match="baselines"):
        fc.InternalInfluence(model, model[2]).attribute(x, baselines=torch.zeros(3, 7))
    with pytest.raises(TypeError, match="layer"):
        fc.NeuronGradient(model, [model[2]])
    with pytest.raises(ValueError, match="not a submodule"):
        fc.NeuronDeepLift(model, nn.Linear(2, 2))
    with pytest.raises(NotImplementedError, match="device_ids"):
        fc.NeuronGradient(model, model[2], device_ids=[0])
    assert not runs


def test_model_left_as_found_on_error() -> None:
    model = small_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 1, 8, 8)
    for name in ("NeuronGradient", "NeuronIntegratedGradients", "NeuronDeepLift", "NeuronFeatureAblation"):
        with pytest.raises(AssertionError, match="out of range"):
            getattr(fc, name)(model, model[4]).attribute(x, (9, 0, 0))
        assert_same_state(before, model_state(model))
    with pytest.raises(AssertionError, match="indices"):
        fc.NeuronConductance(model, model[4]).attribute(x, (1, 0, 0, 0), target=0)
    assert_same_state(before, model_state(model))
    fc.NeuronConductance(model, model[4]).attribute(x, (1, 0, 0), target=0, n_steps=4)
    fc.LayerGradientShap(model, model[4]).attribute(x, x, n_samples=2)
    assert_same_state(before, model_state(model))
