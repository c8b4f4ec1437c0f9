"""LIME: the Lasso against scikit-learn, the kernel against Captum's, weights recovered on linear
models, seeds and chunking, backends, bad input and the model left as found."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from models import LinearModel, assert_same_state, model_state, small_cnn

from fastxai.attribution import surrogate
from fastxai.attribution.lime import _similarities, lime


def _regression_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z = (torch.rand(3, 60, 10, generator=generator) < 0.5).double()
    y = z @ torch.randn(10, generator=generator, dtype=torch.float64) + 0.3 * torch.randn(
        3, 60, generator=generator, dtype=torch.float64
    )
    w = torch.rand(3, 60, generator=generator, dtype=torch.float64)
    return z, y, w


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.1])
def test_lasso_against_sklearn(alpha: float) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    z, y, w = _regression_problem()
    coef, intercept = surrogate.lasso(z, y, w, alpha)
    for b in range(3):
        if alpha == 0.0:
            fit = linear_model.LinearRegression().fit(z[b].numpy(), y[b].numpy(), sample_weight=w[b].numpy())
        else:
            fit = linear_model.Lasso(alpha=alpha, tol=1e-12, max_iter=100000).fit(
                z[b].numpy(), y[b].numpy(), sample_weight=w[b].numpy()
            )
        torch.testing.assert_close(coef[b], torch.from_numpy(fit.coef_), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(intercept[b].item(), float(fit.intercept_), rtol=1e-6, atol=1e-7)


def test_weighted_least_squares_against_sklearn() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    z, y, w = _regression_problem(1)
    coef, intercept = surrogate.weighted_least_squares(z, y, w)
    for b in range(3):
        fit = linear_model.LinearRegression().fit(z[b].numpy(), y[b].numpy(), sample_weight=w[b].numpy())
        torch.testing.assert_close(coef[b], torch.from_numpy(fit.coef_))
        torch.testing.assert_close(intercept[b].item(), float(fit.intercept_))


@pytest.mark.parametrize("seed", range(6))
def test_lasso_against_sklearn_sparse_problems(seed: int) -> None:
    """Sparse truths, noise, uneven weights and alphas from weak to strong: the exact polish
    must land on scikit-learn's solution for every input of the batch."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    generator = torch.Generator().manual_seed(100 + seed)
    z = (torch.rand(4, 120, 12, generator=generator) < 0.5).double()
    truth = torch.randn(4, 12, generator=generator, dtype=torch.float64)
    truth = truth * (torch.rand(4, 12, generator=generator) < 0.4)
    y = (z @ truth.unsqueeze(-1)).squeeze(-1) + 5.0 + 0.2 * torch.randn(4, 120, generator=generator).double()
    w = torch.rand(4, 120, generator=generator, dtype=torch.float64) ** 2
    for alpha in (1e-4, 0.01, 0.3):
        coef, intercept = surrogate.lasso(z, y, w, alpha)
        for b in range(4):
            fit = linear_model.Lasso(alpha=alpha, tol=1e-12, max_iter=200000).fit(
                z[b].numpy(), y[b].numpy(), sample_weight=w[b].numpy()
            )
            torch.testing.assert_close(coef[b], torch.from_numpy(fit.coef_), rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(intercept[b].item(), float(fit.intercept_), rtol=1e-6, atol=1e-7)


def test_least_squares_minimum_norm_when_design_is_rank_deficient() -> None:
    """Columns 2 and 3 always equal (two groups never apart) in input 1 only: that input gets
    the pseudo-inverse's minimum-norm solution, input 0 the unique one, in one batched call."""
    generator = torch.Generator().manual_seed(3)
    z = (torch.rand(2, 40, 5, generator=generator) < 0.5).double()
    z[1, :, 3] = z[1, :, 2]
    y = torch.randn(2, 40, generator=generator, dtype=torch.float64)
    w = torch.rand(2, 40, generator=generator, dtype=torch.float64)
    coef, _ = surrogate.weighted_least_squares(z, y, w, fit_intercept=False)
    for b in range(2):
        root = w[b].sqrt().unsqueeze(1)
        expected = torch.linalg.pinv(root * z[b]) @ (root.squeeze(1) * y[b])
        torch.testing.assert_close(coef[b], expected)
    assert coef[1, 2].item() == pytest.approx(coef[1, 3].item())  # split evenly: minimum norm


@pytest.mark.parametrize("distance_mode", ["cosine", "euclidean"])
def test_similarity_kernel_against_captum(distance_mode: str) -> None:
    captum_lime = pytest.importorskip("captum.attr._core.lime")
    kernel = captum_lime.get_exp_kernel_similarity_function(distance_mode, kernel_width=0.7)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    base = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 0.2
    mask = (torch.arange(16) // 3).view(1, 4, 4)
    samples = torch.rand(2, 9, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    got = _similarities(x, base, mask, 6, samples, distance_mode, 0.7)
    for b in range(2):
        for p in range(9):
            keep = samples[b, p].double()[mask]
            perturbed = base[b] + keep * (x[b] - base[b])
            expected = kernel(x[b : b + 1].float(), perturbed.unsqueeze(0).float(), None)
            assert got[b, p].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_linear_surrogate_recovers_linear_model() -> None:
    model = LinearModel(12, 3)
    x = torch.randn(4, 12, dtype=torch.float64)
    base = torch.randn(12, dtype=torch.float64)
    mask = torch.arange(12) % 5
    per_group = torch.zeros(4, 5, dtype=torch.float64).index_add_(
        1, mask, model.weight[1].detach() * (x - base)
    )
    got = lime(
        model,
        x,
        1,
        baselines=base,
        feature_mask=mask,
        n_samples=64,
        interpretable_model="linear",
        seed=0,
        return_input_shape=False,
    )
    torch.testing.assert_close(got, per_group)


def test_lasso_with_many_samples_recovers_weights() -> None:
    """A linear model has no noise to fit: with alpha small against the coefficients, the Lasso
    coefficients are the group contributions shrunk by about alpha / Var(z) = 4 * alpha."""
    model = LinearModel(12, 3)
    x = torch.randn(3, 12, dtype=torch.float64) * 3
    mask = torch.arange(12) // 3
    per_group = torch.zeros(3, 4, dtype=torch.float64).index_add_(1, mask, model.weight[0].detach() * x)
    got = lime(model, x, 0, feature_mask=mask, n_samples=2000, seed=0, alpha=0.001, return_input_shape=False)
    torch.testing.assert_close(got, per_group, rtol=0, atol=0.02)
    shaped = lime(model, x, 0, feature_mask=mask, n_samples=2000, seed=0, alpha=0.001)
    torch.testing.assert_close(shaped, got[:, mask])


def test_seed_and_chunk_size() -> None:
    model = small_cnn(seed=2).eval()
    x = torch.randn(3, 1, 6, 6)
    kwargs = {"feature_mask": (torch.arange(36) // 4).view(1, 6, 6), "n_samples": 30, "alpha": 1e-4}
    reference = lime(model, x, 4, seed=5, **kwargs)
    assert reference.abs().max() > 0  # alpha=0.01 zeroes every coefficient of this small model
    for chunk_size in (1, 7, 200):
        torch.testing.assert_close(lime(model, x, 4, seed=5, chunk_size=chunk_size, **kwargs), reference)
    assert not torch.equal(lime(model, x, 4, seed=6, **kwargs), reference)


@pytest.mark.parametrize(("backend", "device"), backend_params())
def test_backends_agree_with_reference(backend: str, device: str) -> None:
    model = small_cnn(seed=8).eval().to(device)
    x = torch.randn(2, 1, 6, 6, device=device)
    mask = (torch.arange(36, device=device) // 6).view(1, 6, 6)
    kwargs = {"feature_mask": mask, "n_samples": 40, "seed": 0, "interpretable_model": "linear"}
    expected = lime(model, x, 1, backend="reference", **kwargs)
    got = lime(model, x, 1, backend=backend, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_model_state_restored_also_on_error() -> None:
    model = small_cnn(seed=9)
    model.train()
    before = model_state(model)
    x = torch.randn(2, 1, 4, 4)
    lime(model, x, 1, n_samples=10, seed=0)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        lime(model, x, 12, n_samples=10, seed=0)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interpretable_model": "linear", "n_samples": 16}, "n_samples"),
        ({"n_samples": 0}, "n_samples"),
        ({"interpretable_model": "ridge"}, "interpretable_model"),
        ({"distance_mode": "manhattan"}, "distance_mode"),
        ({"kernel_width": 0.0}, "kernel_width"),
        ({"alpha": -1.0}, "alpha"),
        ({"feature_mask": torch.ones(1, 4, 4, dtype=torch.long)}, "gaps"),
        ({"baselines": torch.zeros(4, 4, 1)}, "baselines"),
        ({"seed": 2**63}, "seed"),
    ],
)
def test_bad_input_before_any_model_call(kwargs: dict, match: str) -> None:
    calls: list[int] = []
    model = LinearModel(16, 2, dtype=torch.float32)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=match):
        lime(model, torch.randn(2, 4, 4), 1, **kwargs)
    assert calls == []


@pytest.mark.parametrize("groups", [5, 16, 62, 63, 130])  # one draw per sample up to 62 groups
def test_coin_flips_are_fair_and_independent(groups: int) -> None:
    from fastxai.attribution.lime import _coin_flips

    flips = _coin_flips(4, 2500, groups, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert flips.shape == (4, 2500, groups) and flips.dtype == torch.bool
    z = flips.reshape(-1, groups).double()
    n = z.shape[0]
    assert (z.mean(0) - 0.5).abs().max() < 5 * (0.25 / n) ** 0.5  # each group on half the time
    both = (z.T @ z) / n  # P(i and j on): 1/4 off the diagonal for independent fair coins
    off_diagonal = both[~torch.eye(groups, dtype=torch.bool)]
    assert (off_diagonal - 0.25).abs().max() < 5 * (0.1875 / n) ** 0.5
    again = _coin_flips(4, 2500, groups, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert torch.equal(flips, again)


@pytest.mark.parametrize("seed", range(4))
def test_lasso_active_set_and_iteration_agree(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The active-set start and the FISTA iteration are two routes to the same exact solution:
    with no active-set rounds every input goes through the iteration."""
    generator = torch.Generator().manual_seed(200 + seed)
    z = (torch.rand(6, 150, 14, generator=generator) < 0.5).double()
    truth = torch.randn(6, 14, generator=generator, dtype=torch.float64)
    truth = truth * (torch.rand(6, 14, generator=generator) < 0.3)
    noise = torch.randn(6, 150, generator=generator, dtype=torch.float64)
    y = (z @ truth.unsqueeze(-1)).squeeze(-1) + 0.3 * noise
    w = torch.rand(6, 150, generator=generator, dtype=torch.float64)
    for alpha in (1e-3, 0.05, 0.5):
        coef, intercept = surrogate.lasso(z, y, w, alpha)
        with monkeypatch.context() as patch:
            patch.setattr(surrogate, "_ACTIVE_SET_ROUNDS", 0)
            iterated, iterated_intercept = surrogate.lasso(z, y, w, alpha)
        torch.testing.assert_close(coef, iterated, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(intercept, iterated_intercept, rtol=1e-9, atol=1e-11)


def test_lasso_active_set_settles_sparse_problems_without_iterating(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(9)
    z = (torch.rand(8, 200, 16, generator=generator) < 0.5).double()
    truth = torch.zeros(8, 16, dtype=torch.float64)
    truth[:, :2] = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(8, 200, generator=generator, dtype=torch.float64)
    y = (z @ truth.unsqueeze(-1)).squeeze(-1) + 0.01 * noise
    w = torch.rand(8, 200, generator=generator, dtype=torch.float64)
    with monkeypatch.context() as patch:
        patch.setattr(surrogate, "_ACTIVE_SET_ROUNDS", 0)
        iterated, _ = surrogate.lasso(z, y, w, 0.01)
    monkeypatch.setattr(torch, "baddbmm", None)  # the FISTA step: must not be reached
    coef, _ = surrogate.lasso(z, y, w, 0.01)
    assert (coef[:, 2:] == 0).all() and (coef != 0).any()
    torch.testing.assert_close(coef, iterated, rtol=1e-9, atol=1e-11)
