"""Every fused op on every available backend against its PyTorch reference.

Tolerances follow the rule "a kernel may be about as wrong as the reference in the same
dtype": float32 results agree to rounding (noise to a few ulp, since libm's log/sin/cos
differ between backends); float16/bfloat16 outputs are both rounded from float32, so they
may differ by one unit in the last place.
"""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params, kernel_backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastxai import ops, reference

SHAPES = {
    "tiny": (2, (4,)),
    "batch1": (1, (5,)),
    "odd": (3, (3, 7, 5)),
    "not_multiple_of_4": (2, (3, 3)),
    "image": (4, (3, 16, 16)),
}
DTYPES = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
}
NOISE_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=2e-6)}  # libm differences in log, sin, cos
LAYOUTS = ("contiguous", "transposed", "channels_last")
BACKENDS = backend_params()


def _inputs(shape_id: str, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    batch, features = SHAPES[shape_id]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *features, generator=generator).to(device=device, dtype=dtype)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` in another memory layout."""
    if layout == "transposed" and x.dim() >= 3:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, noise: bool = False
) -> None:
    tolerance = NOISE_TOLERANCE.get(dtype, DTYPES[dtype]) if noise else DTYPES[dtype]
    torch.testing.assert_close(actual, expected, **tolerance)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
def test_gaussian_perturb(backend: str, device: str, dtype: torch.dtype, shape_id: str) -> None:
    x = _inputs(shape_id, dtype, device)
    sigma = torch.linspace(0.1, 0.9, x.shape[0], device=device)
    for seed, sample_offset, n_samples, batch_offset in [(0, 0, 3, 0), (2**40 + 7, 5, 2, 2)]:
        got = ops.gaussian_perturb(x, sigma, seed, sample_offset, n_samples, batch_offset, backend=backend)
        want = reference.gaussian_perturb(x, sigma, seed, sample_offset, n_samples, batch_offset)
        assert got.shape == (n_samples, *x.shape) and got.dtype == dtype
        _assert_close(got, want, dtype, noise=True)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("variant", ["sum", "sum_sq", "multiplied"])
def test_moment_accumulate(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, variant: str
) -> None:
    values = torch.stack([_inputs(shape_id, dtype, device, seed) for seed in range(3)])
    multiplier = torch.stack([_inputs(shape_id, dtype, device, seed) for seed in range(10, 13)])
    multiplier = multiplier if variant == "multiplied" else None
    start = _inputs(shape_id, torch.float32, device, 99)
    totals = {name: (start.clone(), start.clone() if variant != "sum" else None) for name in ("got", "want")}
    ops.moment_accumulate(values, *totals["got"], multiplier, backend=backend)
    reference.moment_accumulate(values, *totals["want"], multiplier)
    for got, want in zip(totals["got"], totals["want"], strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_path_points(backend: str, device: str, dtype: torch.dtype, shape_id: str, layout: str) -> None:
    x = _layout(_inputs(shape_id, dtype, device, 1), layout)
    baseline = _layout(_inputs(shape_id, dtype, device, 2), layout)
    alphas = torch.tensor([0.0, 0.1, 0.5, 0.77, 1.0], device=device)
    got = ops.path_points(x, baseline, alphas, backend=backend)
    want = reference.path_points(x.contiguous(), baseline.contiguous(), alphas)
    assert got.shape == (5, *x.shape) and got.dtype == dtype
    _assert_close(got, want, dtype)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("per_sample_weights", [False, True])
def test_weighted_path_accumulate(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, per_sample_weights: bool
) -> None:
    grads = torch.stack([_inputs(shape_id, dtype, device, seed) for seed in range(4)])
    batch = grads.shape[1]
    weights = torch.rand(4, batch, device=device) if per_sample_weights else torch.rand(4, device=device)
    got = _inputs(shape_id, torch.float32, device, 7)
    want = got.clone()
    ops.weighted_path_accumulate(grads, weights, got, backend=backend)
    full_weights = weights if per_sample_weights else weights.view(4, 1).expand(4, batch).contiguous()
    reference.weighted_path_accumulate(grads, full_weights, want)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_of_perturbed_inputs(backend: str, device: str, layout: str) -> None:
    x = _layout(_inputs("image", torch.float32, device), layout)
    sigma = torch.full((x.shape[0],), 0.3, device=device)
    got = ops.gaussian_perturb(x, sigma, 11, 0, 2, backend=backend)
    _assert_close(got, reference.gaussian_perturb(x.contiguous(), sigma, 11, 0, 2), torch.float32, noise=True)


def test_float64_runs_on_the_reference_only() -> None:
    x = torch.randn(2, 3, dtype=torch.float64)
    alphas = torch.tensor([0.5])
    torch.testing.assert_close(ops.path_points(x, torch.zeros_like(x), alphas), 0.5 * x.unsqueeze(0))
    for backend, _device in kernel_backends():
        with pytest.raises(TypeError, match="backend='reference'"):
            ops.path_points(x, torch.zeros_like(x), alphas, backend=backend)


# Interpreted Triton is slow: a few dozen examples per backend keep this under a minute.
@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 4),
    features=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    n_samples=st.integers(1, 4),
    sample_offset=st.integers(0, 2**32 - 5),
    batch_offset=st.integers(0, 1000),
    seed=st.integers(0, 2**63 - 1),
    sigma=st.floats(0.0, 3.0),
)
def test_hypothesis_all_ops(
    backend: str,
    device: str,
    batch: int,
    features: list[int],
    n_samples: int,
    sample_offset: int,
    batch_offset: int,
    seed: int,
    sigma: float,
) -> None:
    generator = torch.Generator().manual_seed(seed % 2**32)
    x = torch.randn(batch, *features, generator=generator).to(device)
    sigmas = torch.full((batch,), sigma, device=device)
    noisy = ops.gaussian_perturb(x, sigmas, seed, sample_offset, n_samples, batch_offset, backend=backend)
    _assert_close(
        noisy,
        reference.gaussian_perturb(x, sigmas, seed, sample_offset, n_samples, batch_offset),
        torch.float32,
        True,
    )
    got_total, got_sq = torch.ones_like(x), torch.zeros_like(x)
    want_total, want_sq = torch.ones_like(x), torch.zeros_like(x)
    ops.moment_accumulate(noisy, got_total, got_sq, noisy, backend=backend)
    reference.moment_accumulate(noisy, want_total, want_sq, noisy)
    torch.testing.assert_close(got_total, want_total, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got_sq, want_sq, rtol=1e-6, atol=1e-5)
    alphas = torch.rand(n_samples, generator=generator).to(device)
    baseline = torch.randn(x.shape, generator=generator).to(device)
    points = ops.path_points(x, baseline, alphas, backend=backend)
    torch.testing.assert_close(points, reference.path_points(x, baseline, alphas), rtol=1e-6, atol=1e-6)
    weights = torch.rand(n_samples, batch, generator=generator).to(device)
    got_acc, want_acc = torch.zeros_like(x), torch.zeros_like(x)
    ops.weighted_path_accumulate(points, weights, got_acc, backend=backend)
    reference.weighted_path_accumulate(points, weights, want_acc)
    torch.testing.assert_close(got_acc, want_acc, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (float("-inf"), float("inf"))], ids=["unit", "unbounded"])
def test_pgd_step(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, norm: str, bounds: tuple[float, float]
) -> None:
    origin = _inputs(shape_id, torch.float32, device, 1).sigmoid().to(dtype)
    x_adv = (origin.float() + 0.05 * _inputs(shape_id, torch.float32, device, 2)).clamp(0, 1).to(dtype)
    grad = _inputs(shape_id, dtype, device, 3)
    grad[0] = 0  # a zero gradient: no step, and no 0/0 in the L2 normalisation
    batch = origin.shape[0]
    step_size = torch.linspace(0.01, 0.2, batch, device=device)
    eps = torch.linspace(0.0, 0.3, batch, device=device)  # eps 0 for the first row
    got = ops.pgd_step(x_adv, grad, origin, step_size, eps, *bounds, norm, backend=backend)
    want = reference.pgd_step(x_adv, grad, origin, step_size, eps, *bounds, norm)
    assert got.shape == origin.shape and got.dtype == dtype and torch.isfinite(got).all()
    # L2 norms are float32 sums whose order differs between backends.
    tolerance = DTYPES[dtype] if dtype != torch.float32 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got, want, **tolerance)
