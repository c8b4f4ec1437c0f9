"""Captum-shaped layer classes against Captum's own: same numbers on the same layers."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat.captum")


class ScaledNet(nn.Module):
    """[B, 1, 8, 8] and a per-example scale [B] -> [B, 4], with a two-tensor layer (``pair``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.Softplus()
        self.pair = Pair()
        self.head = nn.Linear(2 * 3 * 64, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(self.act(self.conv(x)))
        return self.head(torch.cat([a, b], 1).flatten(1)) * scale.view(-1, 1)


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(x), x * x


class Text(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embedding = nn.Embedding(13, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = torch.sigmoid(self.embedding(ids)) * mask.unsqueeze(-1)
        return self.head(hidden.sum(1))


def _close(ours: object, theirs: object, **tolerance: float) -> None:
    if isinstance(theirs, (tuple, list)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)  # type: ignore[arg-type]
        for a, b in zip(ours, theirs, strict=True):  # type: ignore[call-overload]
            _close(a, b, **tolerance)
        return
    assert isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), **tolerance)  # type: ignore[arg-type]


@pytest.mark.parametrize("internal_batch_size", [None, 5])
@pytest.mark.parametrize("to_input", [False, True])
def test_layer_integrated_gradients(internal_batch_size: int | None, to_input: bool) -> None:
    model = ScaledNet().eval()
    x, scale = torch.randn(3, 1, 8, 8), torch.tensor([1.0, 2.0, 0.5])
    arguments = dict(
        baselines=0.1,
        target=torch.tensor([0, 3, 1]),
        additional_forward_args=(scale,),
        n_steps=7,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
        attribute_to_layer_input=to_input,
    )
    for layer in (model.conv, [model.pair, model.conv]):
        ours, delta = fc.LayerIntegratedGradients(model, layer).attribute(x, **arguments)
        # conv feeds pair, whose values are replaced: conv's gradient is unused (zeros; Captum needs
        # materialize_grads for that)
        theirs, their_delta = captum_attr.LayerIntegratedGradients(model, layer).attribute(
            x, grad_kwargs={"materialize_grads": True}, **arguments
        )
        _close(ours, theirs, rtol=1e-4, atol=1e-5)
        if not isinstance(layer, list):  # Captum's delta for several layers differs: see the module docstring
            _close(delta, their_delta, rtol=1e-3, atol=1e-4)


def test_layer_integrated_gradients_token_ids() -> None:
    model = Text()
    ids = torch.randint(1, 13, (4, 6))
    mask = (torch.rand(4, 6) > 0.3).float()
    for multiply in (True, False):
        ours = fc.LayerIntegratedGradients(model, model.embedding, multiply_by_inputs=multiply)
        theirs = captum_attr.LayerIntegratedGradients(model, model.embedding, multiply_by_inputs=multiply)
        kwargs = dict(
            baselines=torch.zeros(1, 6, dtype=torch.long),
            target=2,
            additional_forward_args=(mask,),
            n_steps=9,
            method="riemann_trapezoid",
            internal_batch_size=10,
        )
        _close(ours.attribute(ids, **kwargs), theirs.attribute(ids, **kwargs), rtol=1e-4, atol=1e-6)
        assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs == multiply


@pytest.mark.parametrize("internal_batch_size", [None, 7])
def test_layer_conductance(internal_batch_size: int | None) -> None:
    model = small_cnn(seed=3).eval()
    x = torch.randn(2, 1, 8, 8)
    arguments = dict(
        baselines=torch.randn(2, 1, 8, 8) * 0.1,
        target=torch.tensor([4, 1]),
        n_steps=12,
        return_convergence_delta=True,
    )
    ours, delta = fc.LayerConductance(model, model[4]).attribute(
        x, internal_batch_size=internal_batch_size, **arguments
    )
    theirs, their_delta = captum_attr.LayerConductance(model, model[4]).attribute(x, **arguments)
    _close(ours, theirs, rtol=1e-4, atol=1e-5)
    _close(delta, their_delta, rtol=1e-3, atol=1e-5)


def test_activation_and_gradient_x_activation() -> None:
    model = ScaledNet().eval()
    x, scale = torch.randn(2, 1, 8, 8), torch.tensor([1.5, -1.0])
    for layer in (model.pair, [model.conv, model.act], model.head):
        for to_input in (False, True):
            ours = fc.LayerActivation(model, layer).attribute(x, (scale,), attribute_to_layer_input=to_input)
            theirs = captum_attr.LayerActivation(model, layer).attribute(
                x, (scale,), attribute_to_layer_input=to_input
            )
            _close(ours, theirs)
            for multiply in (True, False):
                ours = fc.LayerGradientXActivation(model, layer, multiply_by_inputs=multiply).attribute(
                    x, target=2, additional_forward_args=(scale,), attribute_to_layer_input=to_input
                )
                theirs = captum_attr.LayerGradientXActivation(
                    model, layer, multiply_by_inputs=multiply
                ).attribute(x, target=2, additional_forward_args=(scale,), attribute_to_layer_input=to_input)
                _close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_flags_futures_and_refusals() -> None:
    model = ScaledNet()
    for name in (
        "LayerIntegratedGradients",
        "LayerConductance",
        "LayerActivation",
        "LayerGradientXActivation",
    ):
        ours, theirs = getattr(fc, name)(model, model.conv), getattr(captum_attr, name)(model, model.conv)
        assert ours.has_convergence_delta() == theirs.has_convergence_delta()
        assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs
        with pytest.raises(NotImplementedError, match="device_ids"):
            getattr(fc, name)(model, model.conv, device_ids=[0])
    x, scale = torch.randn(2, 1, 8, 8), torch.ones(2)
    with pytest.raises(NotImplementedError, match="attribute_future"):  # Captum's layer classes have none
        fc.LayerActivation(model, model.conv).attribute_future(x, (scale,))
    with pytest.raises(NotImplementedError, match="grad_kwargs"):
        fc.LayerGradientXActivation(model, model.conv).attribute(
            x, 0, (scale,), grad_kwargs={"retain_graph": True}
        )
    with pytest.raises(TypeError, match="floating"):
        text = Text()
        fc.LayerConductance(text, text.embedding).attribute(torch.zeros(2, 3, dtype=torch.long))


def test_model_left_as_found() -> None:
    model = ScaledNet().train()
    before = model_state(model)
    x, scale = torch.randn(2, 1, 8, 8), torch.ones(2)
    fc.LayerIntegratedGradients(model, [model.conv, model.pair]).attribute(
        x, target=0, additional_forward_args=(scale,), n_steps=3
    )
    fc.LayerConductance(model, model.conv).attribute(x, target=0, additional_forward_args=(scale,), n_steps=3)
    assert_same_state(before, model_state(model))


def test_integrated_gradients_without_multiplying_by_inputs() -> None:
    # Captum's LayerIntegratedGradients test compares with IntegratedGradients(multiply_by_inputs=False)
    model = small_cnn(seed=1).eval()
    x = torch.randn(2, 1, 8, 8)
    arguments = dict(baselines=0.2, target=3, n_steps=5, return_convergence_delta=True)
    ours = fc.IntegratedGradients(model, multiply_by_inputs=False)
    theirs = captum_attr.IntegratedGradients(model, multiply_by_inputs=False)
    assert not ours.multiplies_by_inputs
    _close(ours.attribute(x, **arguments), theirs.attribute(x, **arguments), rtol=1e-4, atol=1e-5)
