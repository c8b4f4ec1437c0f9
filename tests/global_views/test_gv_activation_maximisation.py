"""Activation maximisation against closed-form maximisers of linear units."""

from __future__ import annotations

import math

import pytest
import torch
from models import LinearModel, assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.global_views import activation_maximisation
from fastxai.global_views.activation_maximisation import gaussian_blur

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_linear_logit_unbounded_maximiser_is_w_over_2_l2(chunk_size: int | None) -> None:
    model = LinearModel(6, 4)
    l2 = 0.5
    result = activation_maximisation(
        model,
        unit=[0, 3],
        input_shape=(2, 3),
        l2=l2,
        lr=0.1,
        n_steps=300,
        batch=2,
        seed=0,
        chunk_size=chunk_size,
    )
    weight, bias = model.weight.detach(), model.bias.detach()
    expected = (weight[[0, 3]] / (2 * l2)).view(2, 1, 2, 3).expand(2, 2, 2, 3)
    assert result.inputs.shape == (2, 2, 2, 3) and result.activations.shape == (2, 2)
    torch.testing.assert_close(result.inputs, expected, atol=1e-5, rtol=1e-5)
    logits = expected.flatten(2) @ weight.T + bias
    torch.testing.assert_close(result.activations.double(), logits[[0, 1], :, [0, 3]], atol=1e-4, rtol=1e-5)


def test_linear_logit_bounded_maximiser_is_the_box_corner() -> None:
    model = LinearModel(7, 3, seed=2)
    lo, hi = -0.5, 2.0
    inputs, activations = activation_maximisation(
        model, unit=1, input_shape=(7,), l2=0.0, lr=0.1, n_steps=100, bounds=(lo, hi), batch=3, seed=1
    )
    weight = model.weight.detach()[1]
    corner = torch.where(weight > 0, hi, lo).to(torch.float64)
    assert inputs.shape == (3, 7) and activations.shape == (3,)
    torch.testing.assert_close(inputs, corner.expand(3, 7), atol=0, rtol=0)
    expected = corner @ weight + model.bias.detach()[1]
    torch.testing.assert_close(activations.double(), expected.expand(3), atol=1e-5, rtol=1e-5)


def test_neuron_of_a_linear_layer_by_name_and_by_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    l2 = 0.25
    by_name = activation_maximisation(
        model, layer="0", unit=2, input_shape=(5,), l2=l2, lr=0.1, n_steps=300, seed=0
    )
    by_module = activation_maximisation(
        model, layer=model[0], unit=2, input_shape=(5,), l2=l2, lr=0.1, n_steps=300, seed=0
    )
    expected = model[0].weight.detach()[2] / (2 * l2)
    torch.testing.assert_close(by_name.inputs, expected.view(1, 5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_name.inputs, by_module.inputs)


@pytest.mark.parametrize("jitter", [0, 2])
def test_conv_channel_mean_maximiser(jitter: int) -> None:
    # A 1x1 convolution's channel mean is w_k . mean_p x_p + b_k: its gradient is w_k / (H W) at every
    # position, and it is invariant to circular shifts, so jitter leaves the maximiser unchanged.
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 1)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    l2, height, width = 0.025, 4, 5
    result = activation_maximisation(
        model, layer="0", unit=[1, 3], input_shape=(3, height, width), l2=l2, lr=0.05, n_steps=200,
        jitter=jitter, seed=0,
    )  # fmt: skip
    weight = conv.weight.detach()[[1, 3], :, 0, 0] / (2 * l2 * height * width)
    expected = weight.view(2, 1, 3, 1, 1).expand(2, 1, 3, height, width)
    torch.testing.assert_close(result.inputs, expected, atol=1e-5, rtol=1e-4)
    channel_means = conv(expected.reshape(2, 3, height, width)).mean((2, 3))
    torch.testing.assert_close(result.activations[:, 0], channel_means[[0, 1], [1, 3]], atol=1e-5, rtol=1e-5)


def test_gaussian_blur_of_an_impulse_is_the_separable_gaussian() -> None:
    sigma = 0.8
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    one_d = torch.exp(-(offsets**2) / (2 * sigma**2))
    one_d /= one_d.sum()
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[4 - radius : 5 + radius, 4 - radius : 5 + radius] = torch.outer(one_d, one_d)
    torch.testing.assert_close(gaussian_blur(x, sigma)[0, 0], expected)
    constant = torch.full((2, 3, 4, 6), 0.7, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(constant, 1.5), constant)


def test_regularisers_keep_inputs_in_bounds_and_seed_reproduces() -> None:
    model = small_cnn(seed=0)
    init = torch.full((2, 2, 1, 8, 8), 0.5)
    kwargs = dict(unit=[2, 5], input_shape=(1, 8, 8), n_steps=20, lr=0.2, jitter=1, blur_every=3, batch=2)
    first = activation_maximisation(model, seed=7, bounds=(0.0, 1.0), init=init, **kwargs)
    second = activation_maximisation(model, seed=7, bounds=(0.0, 1.0), init=init, chunk_size=3, **kwargs)
    assert first.inputs.shape == (2, 2, 1, 8, 8)
    assert float(first.inputs.min()) >= 0.0 and float(first.inputs.max()) <= 1.0
    torch.testing.assert_close(first.inputs, second.inputs, atol=1e-5, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        start = model(init[:, 0])[[0, 1], [2, 5]]
    assert bool((first.activations > start.view(2, 1)).all())
    other_seed = activation_maximisation(model, seed=8, bounds=(0.0, 1.0), **kwargs)
    assert not torch.allclose(first.inputs, other_seed.inputs)


def test_init_is_used_as_the_start() -> None:
    model = LinearModel(4, 2)
    init = torch.tensor([[0.2, -0.1, 0.3, 0.0]], dtype=torch.float64)
    result = activation_maximisation(model, unit=0, input_shape=(4,), init=init, n_steps=1, lr=0.01, l2=0.0)
    # Adam's first step moves every coordinate by lr in the direction of the gradient's sign.
    expected = init + 0.01 * model.weight.detach()[0].sign()
    torch.testing.assert_close(result.inputs, expected, atol=1e-6, rtol=0)


def test_model_state_is_restored() -> None:
    model = small_cnn(seed=2)
    model.train()
    before = model_state(model)
    activation_maximisation(model, layer="4", unit=1, input_shape=(1, 8, 8), n_steps=2, seed=0)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="unit"):
        activation_maximisation(model, layer="4", unit=8, input_shape=(1, 8, 8), n_steps=2)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(layer="nope", unit=0), ValueError, r"layer 'nope'.*valid names: '0', '1'"),
        (dict(layer=3, unit=0), TypeError, "layer must be"),
        (dict(layer=nn.Linear(2, 2), unit=0), ValueError, "layer must be a submodule"),
        (dict(unit=10), ValueError, r"unit must be in \[0, 10\)"),
        (dict(layer="4", unit=8), ValueError, r"unit must be in \[0, 8\).*layer '4'"),
        (dict(unit=-1), ValueError, "unit must be >= 0"),
        (dict(unit=[]), TypeError, "unit must be"),
        (dict(unit=0, bounds=(1.0, 1.0)), ValueError, "bounds must have lo < hi"),
        (dict(unit=0, bounds=(0.0,)), ValueError, "bounds must be"),
        (dict(unit=0, n_steps=0), ValueError, "n_steps"),
        (dict(unit=0, lr=0.0), ValueError, "lr"),
        (dict(unit=0, l2=-1.0), ValueError, "l2"),
        (dict(unit=0, batch=0), ValueError, "batch"),
        (dict(unit=0, blur_sigma=0), ValueError, "blur_sigma"),
        (dict(unit=0, init=torch.zeros(2, 1, 8, 8)), ValueError, r"init must have shape \(1, 1, 8, 8\)"),
        (dict(unit=0, input_shape=(1, 0, 8)), ValueError, "input_shape"),
    ],
)
def test_bad_input(kwargs: dict, error: type[Exception], match: str) -> None:
    kwargs.setdefault("input_shape", (1, 8, 8))
    with pytest.raises(error, match=match):
        activation_maximisation(small_cnn(seed=0), n_steps=kwargs.pop("n_steps", 2), **kwargs)


def test_jitter_needs_spatial_dimensions() -> None:
    with pytest.raises(ValueError, match="jitter and blur_every need spatial"):
        activation_maximisation(LinearModel(4, 2), unit=0, input_shape=(4,), jitter=1)
