"""Integrated Gradients: Captum's five rules, oracles, completeness, adaptive refinement."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from models import LinearModel, QuadraticModel, small_cnn
from torch import nn

import fastxai as fx
from fastxai.attribution.integrated_gradients import NotConverged

FIXED = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_against_captum(method: str, chunk_size: int | None) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = small_cnn(seed=8).eval()
    x = torch.randn(4, 1, 8, 8)
    baselines = torch.randn(4, 1, 8, 8) * 0.1
    target = torch.tensor([3, 1, 0, 5])
    n_steps = 9
    ours, delta = fx.integrated_gradients(
        model,
        x,
        baselines,
        target=target,
        n_steps=n_steps,
        method=method,
        return_convergence_delta=True,
        chunk_size=chunk_size,
    )
    theirs, their_delta = captum_attr.IntegratedGradients(model).attribute(
        x, baselines, target=target, n_steps=n_steps, method=method, return_convergence_delta=True
    )
    if method == "riemann_trapezoid":
        # Same points; Captum's weights are 1/n (halved at the ends) instead of 1/(n-1).
        theirs = theirs * n_steps / (n_steps - 1)
    else:
        torch.testing.assert_close(delta, their_delta.to(delta.dtype), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", FIXED)
def test_linear_model_oracle(method: str) -> None:
    model = LinearModel(8, 3)
    x = torch.randn(5, 8, dtype=torch.float64)
    baseline = torch.randn(8, dtype=torch.float64)
    got, delta = fx.integrated_gradients(
        model, x, baseline, target=2, n_steps=4, method=method, return_convergence_delta=True
    )
    torch.testing.assert_close(got, model.weight[2].detach() * (x - baseline))
    assert delta.abs().max() < 1e-12


@pytest.mark.parametrize("method", ["riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_quadratic_model_oracle(method: str) -> None:
    """The gradient is linear along the path, so rules exact for linear integrands give
    ``(x - x') * (grad f(x') + grad f(x)) / 2`` and complete attributions."""
    model = QuadraticModel(6, 2, seed=1)
    x = torch.randn(3, 6, dtype=torch.float64)
    baseline = torch.randn(3, 6, dtype=torch.float64)
    target = torch.tensor([1, 0, 1])
    got, delta = fx.integrated_gradients(
        model, x, baseline, target=target, n_steps=3, method=method, return_convergence_delta=True
    )
    mean_gradient = (model.gradient(x, target) + model.gradient(baseline, target)).detach() / 2
    torch.testing.assert_close(got, (x - baseline) * mean_gradient)
    assert delta.abs().max() < 1e-10


def test_baselines_scalar_per_input_and_per_sample_agree() -> None:
    model = small_cnn(seed=9).eval()
    x = torch.randn(3, 1, 8, 8)
    value = 0.25
    per_input = torch.full((1, 8, 8), value)
    per_sample = torch.full((3, 1, 8, 8), value)
    expected = fx.integrated_gradients(model, x, value, target=1, n_steps=5)
    for baselines in (per_input, per_sample, per_input[0, 0], torch.tensor(value)):
        torch.testing.assert_close(
            fx.integrated_gradients(model, x, baselines, target=1, n_steps=5), expected
        )


def test_completeness_improves_with_steps() -> None:
    model = small_cnn(seed=10, activation=nn.Softplus, pool=nn.AvgPool2d).eval().double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    errors = [
        fx.integrated_gradients(model, x, target=0, n_steps=n, return_convergence_delta=True)[1].abs().max()
        for n in (2, 4, 16)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8


def test_adaptive_meets_the_tolerance_for_every_sample_and_reports_evaluations() -> None:
    model = small_cnn(seed=11, activation=nn.Softplus, pool=nn.AvgPool2d).eval().double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    tolerance = 1e-4
    attributions, delta, evaluations = fx.integrated_gradients(
        model,
        x,
        target=2,
        method="adaptive",
        tolerance=tolerance,
        return_convergence_delta=True,
        return_evaluations=True,
    )
    with torch.no_grad():
        difference = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    torch.testing.assert_close(delta, attributions.flatten(1).sum(1) - difference)
    assert (delta.abs() <= tolerance * difference.abs() + 1e-6 * difference.abs().max()).all()
    assert evaluations.shape == (6,) and (evaluations >= 5).all()
    # Against a 512-point Gauss-Legendre solution the adaptive answer is as good as its delta says.
    accurate = fx.integrated_gradients(model, x, target=2, n_steps=512)
    error = (attributions - accurate).flatten(1).abs().sum(1)
    assert (error <= 20 * tolerance * difference.abs()).all()
    assert evaluations.float().mean() < 60
    # Without the options: the attributions alone, as every other method returns.
    alone = fx.integrated_gradients(model, x, target=2, method="adaptive", tolerance=tolerance)
    assert isinstance(alone, torch.Tensor)
    torch.testing.assert_close(alone, attributions)


def test_adaptive_refines_only_unconverged_samples() -> None:
    """A linear sample converges at the first check; a ReLU one keeps refining."""
    torch.manual_seed(0)
    relu_net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    x[1] = 0.0  # at the baseline the path is a point: converged from the start
    with pytest.warns(RuntimeWarning, match="1 stopped at max_steps=33"):
        _, evaluations = fx.integrated_gradients(
            relu_net, x, target=0, method="adaptive", tolerance=1e-12, max_steps=33, return_evaluations=True
        )
    assert evaluations[1] == 5  # the first round: 3 Gauss-Legendre points and the two end values
    assert 29 <= evaluations[0] <= 33  # a raise adds 2 or 4 points; none fits past 33


@pytest.mark.parametrize(("backend", "device"), backend_params())
def test_same_result_on_every_backend(backend: str, device: str) -> None:
    model = small_cnn(seed=12).eval().to(device)
    x = torch.randn(3, 1, 8, 8, device=device)
    expected = fx.integrated_gradients(model, x, target=4, n_steps=6, backend="reference")
    got = fx.integrated_gradients(model, x, target=4, n_steps=6, backend=backend, chunk_size=5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), backend_params())
def test_adaptive_on_every_backend(backend: str, device: str) -> None:
    model = small_cnn(seed=13, activation=nn.Tanh, pool=nn.AvgPool2d).eval().to(device)
    x = torch.randn(2, 1, 8, 8, device=device)
    expected = fx.integrated_gradients(model, x, target=1, method="adaptive", backend="reference")
    got = fx.integrated_gradients(model, x, target=1, method="adaptive", backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_adaptive_reports_what_it_did_not_reach() -> None:
    """A pipeline can check: ``on_unconverged="raise"`` raises, and the delta says how far."""
    model = small_cnn(seed=14).eval()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(NotConverged, match="max_steps=7"):
        fx.integrated_gradients(
            model, x, target=0, method="adaptive", tolerance=1e-9, max_steps=7, on_unconverged="raise"
        )
    with pytest.warns(RuntimeWarning, match="rounding floor"):  # float32 cannot resolve 1e-12
        fx.integrated_gradients(model, x, target=0, method="adaptive", tolerance=1e-12, max_steps=4001)


class _SquareRoot(nn.Module):
    """``f(x) = sum sqrt(x)``: the gradient is infinite at the baseline 0, IG = sqrt(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sqrt().sum(1, keepdim=True)


def test_adaptive_never_evaluates_the_gradient_at_the_baseline() -> None:
    x = torch.rand(3, 5, dtype=torch.float64) + 0.1
    attributions, delta = fx.integrated_gradients(
        _SquareRoot(),
        x,
        target=0,
        method="adaptive",
        tolerance=1e-4,
        return_convergence_delta=True,
        max_steps=4001,
    )
    assert torch.isfinite(attributions).all()
    assert (delta.abs() <= 1e-4 * x.sqrt().sum(1)).all()
    torch.testing.assert_close(attributions, x.sqrt(), rtol=1e-2, atol=1e-3)
