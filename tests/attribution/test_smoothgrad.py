"""SmoothGrad, SmoothGrad-squared and VarGrad: loop check, oracles, invariance to chunks and backends."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import backend_params
from models import LinearModel, QuadraticModel, small_cnn
from torch import nn

import fastxai as fx
from fastxai.reference import gaussian_perturb


def _loop_smoothgrad(model, x, target, n_samples, sigma, seed, nt_type, multiply_by_inputs=False):
    """One noisy input at a time, with the reference noise: the textbook algorithm."""
    total = torch.zeros_like(x)
    total_sq = torch.zeros_like(x)
    for sample in range(n_samples):
        for row in range(x.shape[0]):
            noisy = gaussian_perturb(x[row : row + 1], sigma[row : row + 1], seed, sample, 1, row)[0]
            noisy.requires_grad_(True)
            (gradient,) = torch.autograd.grad(model(noisy)[0, target[row]], noisy)
            term = gradient * noisy.detach() if multiply_by_inputs else gradient
            total[row] += term[0]
            total_sq[row] += term[0] ** 2
    mean, mean_sq = total / n_samples, total_sq / n_samples
    return {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean**2}[nt_type]


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("multiply_by_inputs", [False, True])
def test_matches_a_loop_over_samples(nt_type: str, multiply_by_inputs: bool) -> None:
    model = small_cnn(seed=2).eval()
    x = torch.randn(3, 1, 8, 8)
    target = torch.tensor([4, 0, 7])
    sigma = torch.tensor([0.1, 0.3, 0.0])
    ours = fx.smoothgrad(
        model,
        x,
        target=target,
        n_samples=5,
        stdevs=sigma,
        nt_type=nt_type,
        seed=17,
        multiply_by_inputs=multiply_by_inputs,
        chunk_size=4,
    )
    expected = _loop_smoothgrad(model, x, target, 5, sigma, 17, nt_type, multiply_by_inputs)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_linear_model_oracle() -> None:
    model = LinearModel(10, 3)
    x = torch.randn(4, 10, dtype=torch.float64)
    weights = model.weight[1].detach().expand(4, 10)
    for nt_type, expected in [
        ("smoothgrad", weights),
        ("smoothgrad_sq", weights**2),
        ("vargrad", 0 * weights),
    ]:
        got = fx.smoothgrad(model, x, target=1, n_samples=7, stdevs=0.5, nt_type=nt_type, seed=0)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_quadratic_model_oracle() -> None:
    """grad f(x + s z) = A (x + s z) + b: the mean is exact given the noise, and in expectation
    SmoothGrad = A x + b and VarGrad = s^2 diag(A A^T)."""
    features, n_samples, sigma = 6, 4000, 0.4
    model = QuadraticModel(features, classes=2)
    x = torch.randn(2, features, dtype=torch.float64)
    target = torch.tensor([0, 1])
    noise_mean = (gaussian_perturb(x, torch.full((2,), sigma), 3, 0, n_samples) - x).mean(0)
    smooth = fx.smoothgrad(model, x, target=target, n_samples=n_samples, stdevs=sigma, seed=3, chunk_size=512)
    torch.testing.assert_close(smooth, model.gradient(x + noise_mean, target).detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        smooth, model.gradient(x, target).detach(), rtol=0, atol=6 * sigma / n_samples**0.5 * 3
    )

    variance = fx.smoothgrad(
        model, x, target=target, n_samples=n_samples, stdevs=sigma, nt_type="vargrad", seed=3
    )
    a = model.a.detach()[target]
    expected = sigma**2 * torch.einsum("nij,nij->ni", a, a)
    relative = ((variance - expected) / expected).abs().max().item()
    assert relative < 6 * math.sqrt(2 / n_samples)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_same_seed_same_result_for_any_chunk_size(chunk_size: int) -> None:
    model = small_cnn(seed=4).eval()
    x = torch.randn(4, 1, 8, 8)
    kwargs = dict(target=2, n_samples=6, stdevs=0.2, nt_type="vargrad", seed=123)
    expected = fx.smoothgrad(model, x, chunk_size=5, **kwargs, backend="reference")
    got = fx.smoothgrad(model, x, chunk_size=chunk_size, **kwargs, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("backend", "device"), backend_params())
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_same_seed_same_result_on_every_backend(backend: str, device: str, nt_type: str) -> None:
    model = small_cnn(seed=5, activation=nn.Softplus).eval().to(device)
    x = torch.randn(3, 1, 8, 8, device=device)
    kwargs = dict(target=1, n_samples=8, stdevs=0.25, seed=99)
    expected = fx.smoothgrad(model, x, chunk_size=4, backend="reference", nt_type=nt_type, **kwargs)
    got = fx.smoothgrad(model, x, chunk_size=5, backend=backend, nt_type=nt_type, **kwargs)
    # VarGrad = mean(a^2) - mean(a)^2 cancels: its rounding error scales with mean(a^2).
    scale_type = "smoothgrad_sq" if nt_type == "vargrad" else nt_type
    scale = fx.smoothgrad(model, x, backend="reference", nt_type=scale_type, **kwargs).abs().max()
    assert (got - expected).abs().max() <= 1e-6 * scale


def test_seed_none_draws_fresh_noise_and_seed_reproduces() -> None:
    model = small_cnn(seed=6).eval()
    x = torch.randn(2, 1, 8, 8)
    assert not torch.equal(fx.smoothgrad(model, x, n_samples=2), fx.smoothgrad(model, x, n_samples=2))
    assert torch.equal(
        fx.smoothgrad(model, x, n_samples=2, seed=1), fx.smoothgrad(model, x, n_samples=2, seed=1)
    )


def test_channels_last_and_non_contiguous_inputs() -> None:
    model = small_cnn(seed=7, channels=3).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = fx.smoothgrad(model, x, target=0, n_samples=3, seed=5)
    channels_last = fx.smoothgrad(
        model, x.contiguous(memory_format=torch.channels_last), target=0, n_samples=3, seed=5
    )
    transposed = fx.smoothgrad(
        model, x.transpose(2, 3).contiguous().transpose(2, 3), target=0, n_samples=3, seed=5
    )
    torch.testing.assert_close(channels_last, expected)
    torch.testing.assert_close(transposed, expected)


def test_row_offset_makes_batches_equal_one_call() -> None:
    model = small_cnn(seed=3).eval()
    x = torch.randn(5, 1, 8, 8)
    whole = fx.smoothgrad(model, x, target=1, n_samples=4, seed=8)
    parts = torch.cat(
        [
            fx.smoothgrad(model, x[:2], target=1, n_samples=4, seed=8),
            fx.smoothgrad(model, x[2:], target=1, n_samples=4, seed=8, row_offset=2),
        ]
    )
    torch.testing.assert_close(parts, whole, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="row_offset"):
        fx.smoothgrad(model, x, row_offset=-1)
