"""Feature inversion against closed-form reconstructions: an invertible layer gives the input back,
the priors' minimisers where the representation leaves freedom, and the digits CNN's penultimate
layer gives inputs the trained model still recognises."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, fail_at_call, model_state, small_cnn
from torch import nn

import fastxai as fx
from fastxai.global_views.inversion import alpha_norm, total_variation

pytestmark = pytest.mark.usefixtures("one_thread")


def orthogonal_model(features: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(features, features))
    linear = nn.Linear(features, features)
    with torch.no_grad():
        linear.weight.copy_(q)
    return nn.Sequential(nn.Flatten(), linear, nn.ReLU(), nn.Linear(features, 3))


def test_an_orthogonal_layer_is_inverted_exactly() -> None:
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    result = fx.feature_inversion(orthogonal_model(), x, layer="1", n_steps=300, seed=0)
    torch.testing.assert_close(result.inputs, x, atol=1e-4, rtol=0)
    assert result.error.shape == (5,) and float(result.error.max()) < 1e-8


def test_total_variation_makes_the_mean_layer_return_a_flat_image() -> None:
    """phi(x) = mean(x): every image of x0's mean has the same representation; the only one with
    TV 0 is the flat image at that mean."""
    x = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    result = fx.feature_inversion(model, x, layer="0", n_steps=300, lambda_tv=1.0, seed=0)
    expected = x.mean((1, 2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(result.inputs, expected, atol=1e-4, rtol=0)


def test_the_alpha_norm_prior_has_its_closed_form_minimiser() -> None:
    """phi(x) = w . x with the 2-norm prior: ``(w . x - y)^2 / y^2 + lambda / n ||x||^2`` is least
    at ``x = t w / ||w||``, ``t = (||w|| / y) / (||w||^2 / y^2 + lambda / n)``."""
    generator = torch.Generator().manual_seed(3)
    w = torch.rand(12, generator=generator) + 0.5
    x = torch.rand(3, 12, generator=generator) + 0.5
    linear = nn.Linear(12, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w.view(1, 12))
    lam = 0.5
    result = fx.feature_inversion(
        nn.Sequential(linear), x, layer="0", n_steps=400, alpha=2.0, lambda_alpha=lam, seed=0
    )
    y, norm = x @ w, w.norm()
    t = (norm / y) / (norm**2 / y**2 + lam / 12)
    torch.testing.assert_close(result.inputs, t.view(-1, 1) * (w / norm), atol=2e-4, rtol=0)


def test_priors_match_their_formulas() -> None:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected_alpha = torch.stack([(x[b].abs() ** 3).mean() for b in range(2)])
    torch.testing.assert_close(alpha_norm(x, 3.0), expected_alpha)
    expected_tv = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    down = x[b, c, i + 1, j] - x[b, c, i, j] if i + 1 < 4 else 0.0
                    right = x[b, c, i, j + 1] - x[b, c, i, j] if j + 1 < 5 else 0.0
                    expected_tv[b] += (down**2 + right**2 + 1e-8) ** 0.75
    torch.testing.assert_close(total_variation(x, 1.5), expected_tv / 60)


def test_rows_are_inverted_independently() -> None:
    model = small_cnn(seed=1)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    init = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    options = {"layer": "2", "n_steps": 20, "lambda_tv": 0.1, "bounds": (0.0, 1.0), "init": init}
    together = fx.feature_inversion(model, x, **options)
    apart = [
        fx.feature_inversion(model, x[i : i + 1], **(options | {"init": init[i : i + 1]})) for i in range(3)
    ]
    torch.testing.assert_close(together.inputs, torch.cat([a.inputs for a in apart]), atol=1e-6, rtol=0)
    chunked = fx.feature_inversion(model, x, chunk_size=2, **options)
    torch.testing.assert_close(together.inputs, chunked.inputs, atol=1e-6, rtol=0)


def test_digits_cnn_recognises_inversions_of_its_penultimate_layer() -> None:
    pytest.importorskip("sklearn")
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    model = train_digits_cnn(x_train, y_train, epochs=5)
    x, y = x_test[:24], y_test[:24]
    result = fx.feature_inversion(
        model, x, layer="8", n_steps=150, lambda_tv=0.05, bounds=(0.0, 1.0), seed=0
    )  # layer 8: the 32 pooled features the classifier reads
    with torch.no_grad():
        original, reconstructed = model(x).argmax(1), model(result.inputs).argmax(1)
    assert float(result.error.mean()) < 0.05, result.error
    assert float((reconstructed == original).float().mean()) >= 0.8
    accuracy = float((original == y).float().mean())
    assert float((reconstructed == y).float().mean()) >= max(0.5, 0.8 * accuracy)  # chance is 0.1
    assert float((result.inputs - x).abs().mean()) > 0.05  # not a copy: pooling keeps little of where


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_steps": 0}, ValueError, "n_steps must be an int >= 1"),
        ({"lr": 0.0}, ValueError, "lr must be a finite number > 0"),
        ({"alpha": 0.5}, ValueError, "alpha must be a finite number >= 1"),
        ({"lambda_tv": -1.0}, ValueError, "lambda_tv must be a finite number >= 0"),
        ({"bounds": (1.0, 0.0)}, ValueError, "bounds must have lo < hi"),
        ({"init": torch.zeros(2, 1, 8, 8)}, ValueError, "init must have the inputs' shape"),
        ({"seed": -1}, ValueError, "seed must be None or an int >= 0"),
        ({"layer": "nope"}, ValueError, "is not a submodule"),
        ({"inputs": torch.full((3, 1, 8, 8), float("nan"))}, ValueError, "inputs contain NaN"),
    ],
)
def test_bad_input_is_refused_before_the_model_runs(kwargs: dict, error: type, message: str) -> None:
    model = small_cnn()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    arguments = {"inputs": torch.rand(3, 1, 8, 8), "layer": "2"} | kwargs
    with pytest.raises(error, match=message):
        fx.feature_inversion(model, **arguments)
    assert not calls


def test_tv_needs_spatial_inputs() -> None:
    with pytest.raises(ValueError, match="lambda_tv needs inputs with spatial dimensions"):
        fx.feature_inversion(orthogonal_model(), torch.rand(2, 16), layer="1", lambda_tv=0.1)


def test_model_left_as_found_also_on_error() -> None:
    model = small_cnn().train()
    before = model_state(model)
    fx.feature_inversion(model, torch.rand(2, 1, 8, 8), layer="4", n_steps=3, seed=0)
    assert_same_state(before, model_state(model))
    handle = fail_at_call(model, 3)
    with pytest.raises(RuntimeError, match="crash"):
        fx.feature_inversion(model, torch.rand(2, 1, 8, 8), layer="4", n_steps=3, seed=0)
    handle.remove()
    assert_same_state(before, model_state(model))
