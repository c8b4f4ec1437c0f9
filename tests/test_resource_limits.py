"""Sizes that cannot fit are refused before any work, with the argument and the estimate named;
sizes that stream through fixed chunks still run. No test allocates the memory it refuses:
either the estimate is far beyond any machine, or ``available_bytes`` is patched down."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from models import small_cnn
from torch import nn

import fastxai as fx
from fastxai import _budget
from fastxai.attribution import quadrature
from fastxai.evaluation import faithfulness


class Counting(nn.Module):
    """A small real CNN that counts its forward calls: zero calls proves nothing ran."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn(seed=0).eval()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.fixture
def model() -> Counting:
    return Counting()


X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))

HUGE = [
    (
        "integrated_gradients",
        lambda m: fx.integrated_gradients(m, X, target=1, n_steps=10**12, method="riemann_left"),
        "n_steps",
    ),
    (
        "gradient_shap",
        lambda m: fx.gradient_shap(m, X, target=1, baselines=torch.zeros(3, 1, 8, 8), n_samples=10**12),
        "n_samples",
    ),
    ("kernel_shap", lambda m: fx.kernel_shap(m, X, target=1, n_samples=10**12), "n_samples"),
    (
        "shapley_value_sampling",
        lambda m: fx.shapley_value_sampling(m, X, target=1, n_samples=10**12),
        "n_samples",
    ),
    ("lime", lambda m: fx.lime(m, X, target=1, n_samples=10**12), "n_samples"),
    ("deletion", lambda m: faithfulness.deletion(m, X, X, target=1, n_steps=10**12), "n_steps"),
]


@pytest.mark.parametrize(("call", "argument"), [case[1:] for case in HUGE], ids=[case[0] for case in HUGE])
def test_sizes_beyond_any_machine_refused_before_work(model: Counting, call, argument: str) -> None:
    """Before: the allocator failed on terabytes (or the OOM killer ended the process)."""
    with pytest.raises(
        ValueError, match=rf"{argument}=1000000000000: .* need [\d.]+ [TP]iB .*available about"
    ):
        call(model)
    assert model.calls == 0


def test_the_estimate_follows_the_memory_available(model: Counting, monkeypatch) -> None:
    """100000 IG steps hold ~13 MB of points, weights and scores: refused with 1 MiB available."""
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(
        ValueError, match=r"n_steps=100000: .* need 10\.7 MiB on cpu; available about 1\.0 MiB"
    ):
        fx.integrated_gradients(model, X, target=1, n_steps=100_000, method="riemann_left")
    with pytest.raises(ValueError, match=r"n_samples=100000: .* need [\d.]+ MiB"):
        fx.kernel_shap(model, X, target=1, n_samples=100_000)
    assert model.calls == 0
    fx.integrated_gradients(model, X, target=1, n_steps=100)  # a small run still fits
    assert model.calls > 0


def test_kernel_shap_counts_only_the_coalitions_it_holds(model: Counting) -> None:
    """With every coalition enumerated (2**M - 2 <= n_samples) a huge n_samples costs nothing:
    the result equals the one with exactly 2**M - 2 coalitions."""
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[:, 4:] = 1
    mask[:, :, 4:] += 2  # 4 groups: 14 coalitions
    exact = fx.kernel_shap(model, X, target=1, feature_mask=mask, n_samples=14)
    huge = fx.kernel_shap(model, X, target=1, feature_mask=mask, n_samples=10**15)
    torch.testing.assert_close(huge, exact, rtol=0, atol=0)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: fx.smoothgrad(m, X, target=1, n_samples=2**33, seed=0),
        lambda m: fx.gradient_shap(
            m, X, target=1, baselines=torch.zeros(3, 1, 8, 8), n_samples=2**32 + 1, stdevs=0.1
        ),
        lambda m: faithfulness.infidelity(m, X, X, target=1, n_perturb_samples=2**33),
    ],
    ids=["smoothgrad", "gradient_shap", "infidelity"],
)
def test_noise_counter_limit_refused_before_work(model: Counting, call, monkeypatch) -> None:
    """Before: SmoothGrad streamed 2**32 samples of work, then failed at the Philox counter limit.
    (Memory is assumed plentiful here: the counter, not the draws, is what is tested.)"""
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 1 << 62)
    with pytest.raises(
        ValueError, match=r"n_(perturb_)?samples=\d+: the noise generator numbers at most 2\*\*32"
    ):
        call(model)
    assert model.calls == 0


def test_gauss_legendre_nodes_match_numpy_and_integrate_exactly() -> None:
    """Above 512 points the nodes come from Newton's method (O(n) memory): they agree with
    numpy's eigenvalue solution and integrate x**k on [0, 1] to 1 / (k + 1) (an n-point rule is
    exact to degree 2n - 1)."""
    n = 600
    alphas, weights = quadrature.points_and_weights("gausslegendre", n)
    nodes, gauss = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(alphas, 0.5 * (nodes + 1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights, 0.5 * gauss, rtol=0, atol=1e-14)
    assert np.all(np.diff(alphas) > 0)
    for k in (0, 1, 7, 100, 2 * n - 1):
        assert math.isclose(float(weights @ alphas**k), 1 / (k + 1), rel_tol=1e-12)


def test_gauss_legendre_6000_steps_without_the_dense_eigenproblem(monkeypatch) -> None:
    """Before: numpy's leggauss(6000) built a 6000 x 6000 companion matrix (56 s measured by the
    issue; 74 GiB at 100000 steps). Now it is never called above 512 points."""

    def dense(n: int):
        raise AssertionError(f"leggauss({n}) called")

    monkeypatch.setattr(np.polynomial.legendre, "leggauss", dense)
    quadrature._points_and_weights.cache_clear()
    started = time.perf_counter()
    alphas, weights = quadrature.points_and_weights("gausslegendre", 6000)
    assert time.perf_counter() - started < 5.0
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-13)
    assert math.isclose(float(weights @ alphas**3), 0.25, rel_tol=1e-12)
    quadrature._points_and_weights.cache_clear()


def test_gauss_legendre_cap_refused_before_work(model: Counting) -> None:
    with pytest.raises(ValueError, match=r"n_steps=100000: Gauss-Legendre takes at most 16384 points"):
        fx.integrated_gradients(model, X, target=1, n_steps=100_000)
    assert model.calls == 0


def test_check_fits_names_argument_and_estimate(monkeypatch) -> None:
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 3 * 2**30)
    _budget.check_fits("n_steps", 10, 2**30, "the points", torch.device("cpu"))
    with pytest.raises(
        ValueError, match=r"^n_steps=10: the points need 74\.5 GiB on cpu; available about 3\.0 GiB"
    ):
        _budget.check_fits("n_steps", 10, 80_000_000_000, "the points", torch.device("cpu"))
    assert _budget.available_bytes.__name__ == "<lambda>"
    monkeypatch.undo()
    assert 0 < _budget.available_bytes(torch.device("cpu"))
