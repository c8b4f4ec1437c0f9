"""Saliency and Input x Gradient against Captum and against the linear-model oracle."""

from __future__ import annotations

import pytest
import torch
from models import LinearModel, assert_same_state, model_state, small_cnn

import fastxai as fx


def test_linear_model_oracle() -> None:
    model = LinearModel(12, 4)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 1])
    expected = model.weight[target].detach().view_as(x)
    torch.testing.assert_close(fx.saliency(model, x, target=target, abs=False), expected)
    torch.testing.assert_close(fx.saliency(model, x, target=target), expected.abs())
    torch.testing.assert_close(fx.input_x_gradient(model, x, target=target), x * expected)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_against_captum(chunk_size: int | None) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = small_cnn(seed=3)
    x = torch.randn(5, 1, 8, 8)
    target = torch.tensor([1, 0, 3, 9, 2])
    before = model_state(model)
    for ours, theirs in [
        (fx.saliency(model, x, target=target, chunk_size=chunk_size), captum_attr.Saliency(model)),
        (
            fx.input_x_gradient(model, x, target=target, chunk_size=chunk_size),
            captum_attr.InputXGradient(model),
        ),
    ]:
        model.eval()
        expected = theirs.attribute(x, target=target)
        model.train()
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    assert_same_state(before, model_state(model))


def test_predicted_class_is_the_default_target() -> None:
    model = small_cnn(seed=1).eval()
    x = torch.randn(4, 1, 8, 8)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(fx.saliency(model, x), fx.saliency(model, x, target=predicted))


def test_plain_callable_models_work() -> None:
    weight = torch.randn(6, 3)
    x = torch.randn(2, 6)
    attributions = fx.saliency(lambda inputs: inputs @ weight, x, target=2, abs=False)
    torch.testing.assert_close(attributions, weight[:, 2].expand(2, 6))
