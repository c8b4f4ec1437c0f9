"""KernelSHAP and Shapley value sampling: exact values on linear models and by enumeration,
efficiency, seeds and chunking, backends, bad input and the model left as found."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import backend_params
from models import LinearModel, assert_same_state, mlp, model_state, small_cnn

import fastxai.attribution.shapley as shapley_module
from fastxai.attribution import surrogate
from fastxai.attribution.shapley import kernel_shap, shapley_value_sampling


def _linear_case() -> tuple[LinearModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = LinearModel(12, 3)
    x = torch.randn(4, 12, dtype=torch.float64)
    base = torch.randn(12, dtype=torch.float64)
    mask = torch.arange(12) % 5
    contribution = model.weight[1].detach() * (x - base)
    per_group = torch.zeros(4, 5, dtype=torch.float64).index_add_(1, mask, contribution)
    return model, x, base, mask, per_group


def _brute_force_shapley(
    model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, target: int
) -> torch.Tensor:
    """Shapley's formula summed over every coalition (baseline 0): [B, M]."""
    groups = int(mask.max()) + 1
    phi = torch.zeros(x.shape[0], groups, dtype=torch.float64)
    with torch.no_grad():
        for member in range(groups):
            for coalition in itertools.product([0, 1], repeat=groups):
                if coalition[member]:
                    continue
                size = sum(coalition)
                weight = math.factorial(size) * math.factorial(groups - size - 1) / math.factorial(groups)
                with_member = list(coalition)
                with_member[member] = 1
                keep_with = torch.tensor(with_member, dtype=torch.float64)[mask]
                keep_without = torch.tensor(coalition, dtype=torch.float64)[mask]
                gain = model(x * keep_with)[:, target] - model(x * keep_without)[:, target]
                phi[:, member] += weight * gain
    return phi


@pytest.mark.parametrize("n_samples", [20, 40])  # 20: enumeration (2**5 - 2 = 30 > 20 is sampled)
def test_kernel_shap_linear_oracle(n_samples: int) -> None:
    model, x, base, mask, per_group = _linear_case()
    got = kernel_shap(
        model, x, 1, baselines=base, feature_mask=mask, n_samples=n_samples, seed=0, return_input_shape=False
    )
    torch.testing.assert_close(got, per_group)
    shaped = kernel_shap(model, x, 1, baselines=base, feature_mask=mask, n_samples=n_samples, seed=0)
    torch.testing.assert_close(shaped, per_group[:, mask])


def test_kernel_shap_every_element_linear_oracle() -> None:
    model = LinearModel(10, 2)
    x = torch.randn(3, 10, dtype=torch.float64)
    got = kernel_shap(model, x, 0, n_samples=40, seed=3, chunk_size=7)
    torch.testing.assert_close(got, model.weight[0].detach() * x)


def test_kernel_shap_enumeration_is_exact_on_a_nonlinear_model() -> None:
    model = mlp(features=8).double()
    x = torch.randn(2, 8, dtype=torch.float64)
    mask = torch.arange(8) // 2
    got = kernel_shap(model, x, 2, feature_mask=mask, n_samples=14, seed=0, return_input_shape=False)
    torch.testing.assert_close(got, _brute_force_shapley(model, x, mask, 2))


def test_kernel_shap_sampled_approaches_shapley_values_with_efficiency() -> None:
    model = mlp(features=14).double()
    x = torch.randn(2, 14, dtype=torch.float64)
    mask = torch.arange(14) // 2  # 7 groups: 126 coalitions, 100 sampled
    exact = _brute_force_shapley(model, x, mask, 1)
    got = kernel_shap(model, x, 1, feature_mask=mask, n_samples=100, seed=1, return_input_shape=False)
    with torch.no_grad():
        total = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(got.sum(1), total)  # efficiency holds exactly, whatever the sample
    assert (got - exact).abs().max() < 0.1 * exact.abs().max()


def test_shapley_sampling_linear_oracle() -> None:
    model, x, base, mask, per_group = _linear_case()
    got = shapley_value_sampling(
        model, x, 1, baselines=base, feature_mask=mask, n_samples=3, seed=0, return_input_shape=False
    )
    torch.testing.assert_close(got, per_group)


def test_shapley_sampling_converges_and_is_efficient() -> None:
    model = mlp(features=8).double()
    x = torch.randn(2, 8, dtype=torch.float64)
    mask = torch.arange(8) // 2
    exact = _brute_force_shapley(model, x, mask, 2)
    got = shapley_value_sampling(
        model, x, 2, feature_mask=mask, n_samples=600, seed=0, return_input_shape=False
    )
    with torch.no_grad():
        total = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    torch.testing.assert_close(got.sum(1), total)
    assert (got - exact).abs().max() < 0.05 * exact.abs().max()


def test_shapley_sampling_against_captum_on_additive_model() -> None:
    """On a model additive over the groups every order gives the same marginal contributions,
    so the sampled values are exact and must equal Captum's, whatever either draws."""
    captum_attr = pytest.importorskip("captum.attr")
    model = LinearModel(2 * 4 * 4, 3, dtype=torch.float32)
    x = torch.randn(3, 2, 4, 4)
    mask = (torch.arange(32) // 3).view(1, 2, 4, 4)
    ours = shapley_value_sampling(model, x, 2, feature_mask=mask, baselines=0.1, n_samples=2, seed=0)
    theirs = captum_attr.ShapleyValueSampling(model).attribute(
        x, target=2, feature_mask=mask, baselines=0.1, n_samples=2
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", [kernel_shap, shapley_value_sampling])
def test_seed_and_chunk_size(method) -> None:  # type: ignore[no-untyped-def]
    model = small_cnn(seed=2).eval()
    x = torch.randn(3, 1, 6, 6)
    mask = (torch.arange(36) // 4).view(1, 6, 6)
    kwargs = {"feature_mask": mask, "n_samples": 12, "seed": 5}
    reference = method(model, x, 4, **kwargs)
    for chunk_size in (1, 5, 64):
        torch.testing.assert_close(method(model, x, 4, chunk_size=chunk_size, **kwargs), reference)
    other = method(model, x, 4, **{**kwargs, "seed": 6})
    assert not torch.equal(other, reference)


def test_per_sample_masks() -> None:
    model = LinearModel(9, 2)
    x = torch.randn(2, 9, dtype=torch.float64)
    mask = torch.stack([torch.arange(9) % 3, torch.arange(9) // 3])
    contribution = model.weight[0].detach() * x
    expected = torch.stack(
        [
            torch.zeros(3, dtype=torch.float64).index_add_(0, m, c)
            for m, c in zip(mask, contribution, strict=True)
        ]
    )
    for method in (kernel_shap, shapley_value_sampling):
        got = method(model, x, 0, feature_mask=mask, n_samples=6, seed=0, return_input_shape=False)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("backend", "device"), backend_params())
def test_backends_agree_with_reference(backend: str, device: str) -> None:
    model = small_cnn(seed=8).eval().to(device)
    x = torch.randn(2, 1, 6, 6, device=device)
    mask = (torch.arange(36, device=device) // 6).view(1, 6, 6)
    for method in (kernel_shap, shapley_value_sampling):
        expected = method(model, x, 1, feature_mask=mask, n_samples=10, seed=0, backend="reference")
        got = method(model, x, 1, feature_mask=mask, n_samples=10, seed=0, backend=backend)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_constrained_least_squares_against_lagrange_system() -> None:
    generator = torch.Generator().manual_seed(0)
    z = (torch.rand(2, 30, 5, generator=generator) < 0.5).double()
    y = torch.randn(2, 30, generator=generator, dtype=torch.float64)
    w = torch.rand(2, 30, generator=generator, dtype=torch.float64)
    total = torch.tensor([1.0, -2.0], dtype=torch.float64)
    got = surrogate.constrained_least_squares(z, y, w, total)
    for b in range(2):
        # KKT: [2 Z^T W Z, 1; 1^T, 0] [phi; lambda] = [2 Z^T W y; total]
        gram = 2 * z[b].T @ (w[b, :, None] * z[b])
        system = torch.zeros(6, 6, dtype=torch.float64)
        system[:5, :5], system[:5, 5], system[5, :5] = gram, 1.0, 1.0
        rhs = torch.cat([2 * z[b].T @ (w[b] * y[b]), total[b : b + 1]])
        torch.testing.assert_close(got[b], torch.linalg.solve(system, rhs)[:5])


def test_model_state_restored_also_on_error() -> None:
    model = small_cnn(seed=9)
    model.train()
    before = model_state(model)
    x = torch.randn(2, 1, 4, 4)
    mask = (torch.arange(16) // 4).view(1, 4, 4)
    kernel_shap(model, x, 1, feature_mask=mask, n_samples=8, seed=0)
    shapley_value_sampling(model, x, 1, feature_mask=mask, n_samples=2, seed=0)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        kernel_shap(model, x, 10, feature_mask=mask, n_samples=8, seed=0)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        (kernel_shap, {"n_samples": 0}, "n_samples"),
        (kernel_shap, {"n_samples": 10.0}, "n_samples"),
        (shapley_value_sampling, {"n_samples": 0}, "n_samples"),
        (kernel_shap, {"n_samples": 40, "seed": -1}, "seed"),
        (kernel_shap, {"feature_mask": torch.tensor([0, 2]).repeat(8).view(4, 4)}, "gaps"),
        (shapley_value_sampling, {"feature_mask": torch.zeros(4, 4)}, "integer"),
        (shapley_value_sampling, {"feature_mask": torch.zeros(3, 4, dtype=torch.long)}, "feature_mask"),
        (shapley_value_sampling, {"baselines": torch.zeros(3, 4)}, "baselines"),
        (shapley_value_sampling, {"chunk_size": -2}, "chunk_size"),
    ],
)
def test_bad_input_before_any_model_call(method, kwargs: dict, match: str) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    model = LinearModel(16, 2, dtype=torch.float32)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=match):
        method(model, torch.randn(2, 4, 4), 1, **kwargs)
    assert calls == []


@pytest.mark.parametrize("groups", [5, 22])  # the table of all codes, and the sort beyond 20 groups
def test_coalitions_of_a_size_are_uniform(groups: int) -> None:
    """Every drawn subset has the asked size, and each subset of that size is equally likely
    (counts within 5 standard deviations of uniform)."""
    size = 2
    draws = 30000
    sizes = torch.full((3, draws // 3), size)
    subsets = shapley_module._uniform_subsets(groups, sizes, torch.Generator().manual_seed(0))
    assert subsets.shape == (3, draws // 3, groups) and subsets.dtype == torch.bool
    assert torch.equal(subsets.sum(2), sizes)
    if groups > 6:
        members = subsets.reshape(-1, groups).sum(0).double()  # each member: size / M of the draws
        expected = draws * size / groups
        assert (members - expected).abs().max() < 5 * math.sqrt(expected)
        return
    codes = (subsets.reshape(-1, groups).long() << torch.arange(groups)).sum(1)
    counts = torch.bincount(codes, minlength=2**groups)[codes.unique()].double()
    assert counts.numel() == math.comb(groups, size)
    expected = draws / math.comb(groups, size)
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected)


@pytest.mark.parametrize("groups", [13, 25])  # fewer samples than coalitions: drawn, not enumerated
def test_sampled_coalition_sizes_follow_the_shapley_kernel(groups: int) -> None:
    """Sizes s in 1..M-1 with probability ~ 1 / (s (M - s)) (counts within 5 standard deviations),
    each coalition followed by its complement."""
    n_samples = 4000
    coalitions, weights = shapley_module._kernel_shap_coalitions(groups, 3, n_samples, 7, torch.device("cpu"))
    assert weights is None and coalitions.shape == (3, n_samples, groups)
    half = n_samples // 2
    assert torch.equal(coalitions[:, half:], ~coalitions[:, :half])
    sizes = coalitions[:, :half].sum(2).flatten()
    assert int(sizes.min()) >= 1 and int(sizes.max()) <= groups - 1
    mass = torch.tensor([1.0 / (s * (groups - s)) for s in range(1, groups)], dtype=torch.float64)
    expected = sizes.numel() * mass / mass.sum()
    counts = torch.bincount(sizes - 1, minlength=groups - 1).double()
    assert ((counts - expected).abs() <= 5 * expected.sqrt() + 1).all()


def test_kernel_shap_underdetermined_keeps_efficiency() -> None:
    """Fewer coalitions than features (Captum's default 25 on 64 pixels): the minimum-norm fit,
    still summing to f(x) - f(baseline) exactly."""
    model = LinearModel(16, 2, dtype=torch.float64)
    x = torch.randn(3, 16, dtype=torch.float64)
    phi = kernel_shap(model, x, 1, n_samples=10, seed=0)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(phi.sum(1), gap)


def test_shapley_sampling_antithetic_pairs_exact_for_two_groups() -> None:
    """An order and its reverse give both orders of two groups: exact Shapley values even on a
    model with an interaction, from two samples."""

    def model(z: torch.Tensor) -> torch.Tensor:
        return (z[:, 0] * z[:, 1] + z[:, 0]).unsqueeze(1)

    x = torch.tensor([[2.0, 3.0]])
    phi = shapley_value_sampling(model, x, 0, n_samples=2, seed=3)
    # v(1,1) = 8, v(1,0) = 2, v(0,1) = 0, v(0,0) = 0: phi_0 = (2 + 8) / 2, phi_1 = (6 + 0) / 2
    torch.testing.assert_close(phi, torch.tensor([[5.0, 3.0]]))
