"""GradientSHAP / Expected Gradients: linear-model oracles, determinism, chunking, bad input, state."""

from __future__ import annotations

import pytest
import torch
from models import LinearModel, QuadraticModel, assert_same_state, model_state, small_cnn

from fastxai.attribution.gradient_shap import expected_gradients, gradient_shap
from fastxai.reference import gaussian_perturb


def test_single_baseline_without_noise_is_exact_on_a_linear_model() -> None:
    model = LinearModel(12, 4)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    baseline = torch.randn(3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 1])
    weights = model.weight.detach()[target].view(5, 3, 4)
    for given in (baseline, baseline.unsqueeze(0)):
        got = gradient_shap(model, x, target, baselines=given, n_samples=3, seed=1)
        torch.testing.assert_close(got, weights * (x - baseline), rtol=1e-12, atol=1e-12)


def test_linear_model_expectation_over_baselines_and_noise() -> None:
    """E[w (x + s z - x'_k)] = w (x - mean_k x'_k); the noise part is known exactly given z."""
    model = LinearModel(6, 2)
    x = torch.randn(3, 6, dtype=torch.float64)
    distribution = torch.randn(4, 6, dtype=torch.float64)
    n, sigma = 4000, 0.3
    got = gradient_shap(model, x, 1, baselines=distribution, n_samples=n, stdevs=sigma, seed=7)
    noise_mean = (gaussian_perturb(x, torch.full((3,), sigma), 7, 0, n) - x).mean(0)
    weights = model.weight.detach()[1]
    expected = weights * (x + noise_mean - distribution.mean(0))
    # Only the choice of baselines is random now: its standard error bounds the difference.
    spread = (weights * distribution).std(0, unbiased=False) / n**0.5
    assert ((got - expected).abs() <= 5 * spread + 1e-12).all()


def test_expected_gradients_on_a_quadratic_model_matches_its_closed_form() -> None:
    """One baseline, no noise: E_alpha[grad f(b + a (x - b))] = A (b + (x - b) / 2) + c exactly
    in expectation; with many samples the mean of alpha is close to 1/2."""
    model = QuadraticModel(5, classes=2)
    x = torch.randn(2, 5, dtype=torch.float64)
    baseline = torch.randn(5, dtype=torch.float64)
    got = expected_gradients(model, x, 0, baselines=baseline, n_samples=3000, seed=2)
    middle = baseline + (x - baseline) / 2
    expected = model.gradient(middle, torch.tensor([0, 0])).detach() * (x - baseline)
    torch.testing.assert_close(got, expected, rtol=0, atol=0.1 * expected.abs().max().item())


def test_same_seed_same_result_for_any_chunk_size() -> None:
    model = small_cnn(seed=1).eval()
    x = torch.randn(3, 1, 8, 8)
    distribution = torch.rand(5, 1, 8, 8)
    runs = [
        gradient_shap(model, x, 2, baselines=distribution, n_samples=4, stdevs=0.2, seed=11, chunk_size=chunk)
        for chunk in (1, 2, 5, 64)
    ]
    for run in runs[1:]:
        torch.testing.assert_close(run, runs[0], rtol=1e-5, atol=1e-7)
    other = gradient_shap(model, x, 2, baselines=distribution, n_samples=4, stdevs=0.2, seed=12)
    assert not torch.allclose(other, runs[0])


def test_bad_input_named_and_state_restored() -> None:
    model = small_cnn(seed=2).train()
    before = model_state(model)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="baselines"):
        gradient_shap(model, x, baselines=torch.zeros(3, 1, 8, 7))
    with pytest.raises(TypeError, match="baselines"):
        gradient_shap(model, x, baselines=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_samples"):
        gradient_shap(model, x, baselines=torch.zeros(1, 1, 8, 8), n_samples=0)
    with pytest.raises(ValueError, match="stdevs"):
        gradient_shap(model, x, baselines=torch.zeros(1, 1, 8, 8), stdevs=-1.0)
    with pytest.raises(ValueError, match="target"):
        gradient_shap(model, x, 10, baselines=torch.zeros(1, 1, 8, 8))
    assert_same_state(before, model_state(model))
    gradient_shap(model, x, 1, baselines=torch.zeros(2, 1, 8, 8), seed=0)
    assert_same_state(before, model_state(model))
