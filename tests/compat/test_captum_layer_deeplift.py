"""LayerDeepLift and LayerDeepLiftShap against Captum's own classes (the oracle), summation to
delta, input checks and the model's state."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, mlp, model_state, small_cnn
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr")


def _cnn() -> nn.Module:
    # Average pooling: fastxai's max-pool rule is exact where Captum's unpooling is not.
    return small_cnn(seed=1, channels=2, classes=4, pool=nn.AvgPool2d).eval()


def _close(ours: object, theirs: object) -> None:
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    else:
        assert isinstance(ours, torch.Tensor)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def _nonlinear(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.ReLU, nn.Tanh))


def _sums_to_difference(model, x, baselines, target, ours, delta, multiply) -> None:
    """At the input of a nonlinearity Captum's gradient skips that module's own Rescale
    multiplier, so its attributions there do not sum to f(x) - f(x') (its delta is ~3e-2 on
    these models); fastxai's do, which is the check here (oracle: the model's outputs)."""
    if not multiply:
        return
    with torch.no_grad():
        expected = (
            model(x).gather(1, target.view(-1, 1))[:, 0]
            - model(baselines).gather(1, target.view(-1, 1))[:, 0]
        )
    torch.testing.assert_close(ours.flatten(1).sum(1), expected, atol=1e-5, rtol=1e-5)
    assert delta.abs().max() < 1e-4


CASES = [
    ("mlp", lambda: mlp(seed=2), lambda: torch.randn(4, 20), 2, 1),
    ("mlp", lambda: mlp(seed=2), lambda: torch.randn(4, 20), 2, 2),
    ("mlp", lambda: mlp(seed=2), lambda: torch.randn(4, 20), 2, 3),
    ("cnn", _cnn, lambda: torch.randn(3, 2, 6, 6), 4, 2),
    ("cnn", _cnn, lambda: torch.randn(3, 2, 6, 6), 4, 4),
    ("cnn", _cnn, lambda: torch.randn(3, 2, 6, 6), 4, 6),
]


@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize("multiply", [True, False])
@pytest.mark.parametrize(("name", "make", "draw", "classes", "layer"), CASES)
def test_layer_deeplift_matches_captum(name, make, draw, classes, layer, multiply, to_input) -> None:
    torch.manual_seed(0)
    model, x = make(), draw()
    baselines = 0.1 * torch.randn_like(x)
    target = torch.arange(x.shape[0]) % classes
    ours, delta = fc.LayerDeepLift(model, model[layer], multiply_by_inputs=multiply).attribute(
        x, baselines, target=target, attribute_to_layer_input=to_input, return_convergence_delta=True
    )
    if to_input and _nonlinear(model[layer]):
        _sums_to_difference(model, x, baselines, target, ours, delta, multiply)
        return
    theirs, their_delta = captum_attr.LayerDeepLift(
        model, model[layer], multiply_by_inputs=multiply
    ).attribute(x, baselines, target=target, attribute_to_layer_input=to_input, return_convergence_delta=True)
    _close(ours, theirs)
    if multiply:
        # summation to delta: the attributions sum to f(x) - f(x')
        assert delta.abs().max() < 1e-4
        torch.testing.assert_close(delta, their_delta.to(delta.dtype), atol=1e-4, rtol=0)


@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize(("name", "make", "draw", "classes", "layer"), CASES)
def test_layer_deeplift_shap_matches_captum(name, make, draw, classes, layer, to_input) -> None:
    torch.manual_seed(1)
    model, x = make(), draw()
    background = torch.randn(3, *x.shape[1:])
    ours, delta = fc.LayerDeepLiftShap(model, model[layer]).attribute(
        x, background, target=1, attribute_to_layer_input=to_input, return_convergence_delta=True
    )
    if to_input and _nonlinear(model[layer]):
        assert delta.abs().max() < 1e-4
        return
    theirs, their_delta = captum_attr.LayerDeepLiftShap(model, model[layer]).attribute(
        x, background, target=1, attribute_to_layer_input=to_input, return_convergence_delta=True
    )
    _close(ours, theirs)
    assert delta.shape == (x.shape[0] * 3,)
    assert delta.abs().max() < 1e-4
    torch.testing.assert_close(delta, their_delta.to(delta.dtype), atol=1e-4, rtol=0)


def test_summation_to_delta_against_model_outputs() -> None:
    # The oracle here is the model itself: sum of the layer attributions = f_t(x) - f_t(x').
    model, x = _cnn(), torch.randn(5, 2, 6, 6)
    baselines = torch.randn(1, 2, 6, 6)
    attr = fc.LayerDeepLift(model, model[4]).attribute(x, baselines, target=3)
    with torch.no_grad():
        expected = model(x)[:, 3] - model(baselines)[:, 3]
    torch.testing.assert_close(attr.flatten(1).sum(1), expected, atol=1e-5, rtol=1e-5)


def test_custom_attribution_func_and_additional_args() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(seed=3)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.net(x * scale)

    model = Scaled().eval()
    x, scale = torch.randn(4, 20), torch.rand(4, 1) + 0.5
    layer = model.net[2]

    def custom(m, h, r):
        return tuple(a * (b - c) ** 2 for a, b, c in zip(m, h, r, strict=True))

    kwargs = dict(target=0, additional_forward_args=(scale,), custom_attribution_func=custom)
    ours = fc.LayerDeepLift(model, layer).attribute(x, 0.0, **kwargs)
    theirs = captum_attr.LayerDeepLift(model, layer).attribute(x, 0.0, **kwargs)
    _close(ours, theirs)
    background = torch.randn(2, 20)
    ours = fc.LayerDeepLiftShap(model, layer).attribute(
        x, background, target=0, additional_forward_args=(scale,)
    )
    theirs = captum_attr.LayerDeepLiftShap(model, layer).attribute(
        x, background, target=0, additional_forward_args=(scale,)
    )
    _close(ours, theirs)


def test_tuple_layer_inputs() -> None:
    class Join(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cat([a, b], dim=1)

    class TwoBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(4)
            self.a, self.b = nn.Linear(6, 5), nn.Linear(6, 5)
            self.join, self.act, self.head = Join(), nn.ReLU(), nn.Linear(10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.join(self.a(x), self.b(x))))

    model, x = TwoBranch().eval(), torch.randn(3, 6)
    ours = fc.LayerDeepLift(model, model.join).attribute(x, target=2, attribute_to_layer_input=True)
    theirs = captum_attr.LayerDeepLift(model, model.join).attribute(
        x, target=2, attribute_to_layer_input=True
    )
    assert isinstance(ours, tuple) and len(ours) == 2
    _close(ours, theirs)


def test_bad_input_refused_before_the_model_runs() -> None:
    model = mlp(seed=0)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    dl = fc.LayerDeepLift(model, model[2])
    with pytest.raises(ValueError, match="baselines"):
        dl.attribute(torch.randn(4, 20), baselines=torch.zeros(3, 20))
    with pytest.raises(TypeError, match="target"):
        dl.attribute(torch.randn(4, 20), target=1.5)
    with pytest.raises(TypeError, match="baselines"):
        fc.LayerDeepLiftShap(model, model[2]).attribute(torch.randn(4, 20), baselines=0.0)
    with pytest.raises(NotImplementedError):
        dl.attribute(torch.randn(4, 20), grad_kwargs={"retain_graph": True})
    assert not calls
    with pytest.raises(TypeError, match="model"):
        fc.LayerDeepLift(lambda x: x, model[2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer"):
        fc.LayerDeepLift(model, nn.Linear(2, 2))


def test_model_left_as_found_also_on_error() -> None:
    model = small_cnn(seed=0, channels=1, classes=3, pool=nn.AvgPool2d)
    model.train()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    dl = fc.LayerDeepLift(model, model[4])
    dl.attribute(torch.randn(2, 1, 6, 6), target=0)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        dl.attribute(torch.randn(2, 1, 6, 6), target=7)
    assert_same_state(before, model_state(model))


def test_unused_layer_gives_zeros() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.used(x).relu()

    model = Unused()
    x = torch.randn(2, 4)
    attr, delta = fc.LayerDeepLift(model, model.unused).attribute(x, target=0, return_convergence_delta=True)
    assert attr.shape == (2, 2) and not attr.any()
    with torch.no_grad():  # nothing reaches the output through the layer: delta = -(f(x) - f(0))
        torch.testing.assert_close(delta, model(torch.zeros_like(x))[:, 0] - model(x)[:, 0])
