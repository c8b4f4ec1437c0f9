"""LEMNA: the fused lasso against its optimality conditions and its two limits, the mixture
against planted regimes, and the explanation of a scorer whose decisive positions are known,
with LIME's fidelity on the same inputs (feature deduction, as in the paper)."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

import fastxai as fx
from fastxai.attribution.fused_lasso import fused_lasso, kkt_violation
from fastxai.attribution.lemna import mixture_regression
from fastxai.attribution.surrogate import _moments, weighted_least_squares

pytestmark = pytest.mark.usefixtures("one_thread")


def design(batch: int = 4, samples: int = 120, features: int = 9, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    z = (torch.rand(batch, samples, features, generator=generator) < 0.5).double()
    beta = torch.zeros(batch, features, dtype=torch.float64)
    beta[:, 2:5] = 1.0
    beta[:, 6] = -0.5
    y = (z * beta.unsqueeze(1)).sum(-1) + 0.2 * torch.randn(
        batch, samples, generator=generator, dtype=torch.float64
    )
    w = torch.rand(batch, samples, generator=generator, dtype=torch.float64) + 0.1
    return z, y, w


@pytest.mark.parametrize("penalty", [1e-3, 1e-2, 5e-2])
def test_fused_lasso_meets_its_optimality_conditions(penalty: float) -> None:
    z, y, w = design()
    gram, linear, _, _ = _moments(z, y, w, True)
    beta = fused_lasso(gram, linear, penalty)
    assert float(kkt_violation(gram, linear, beta, penalty).max()) < 1e-10
    # the check can fail: moving one coefficient off the optimum breaks the conditions
    moved = beta.clone()
    moved[:, 3] += 1e-3
    assert bool((kkt_violation(gram, linear, moved, penalty) > 1e-5).all())
    # and a fused lasso fit is no worse than the plain one on its own objective
    plain = torch.linalg.solve(gram, linear.unsqueeze(-1)).squeeze(-1)

    def objective(b: torch.Tensor) -> torch.Tensor:
        quadratic = 0.5 * (b.unsqueeze(1) @ gram @ b.unsqueeze(-1)).flatten() - (b * linear).sum(1)
        return quadratic + penalty * (b[:, 1:] - b[:, :-1]).abs().sum(1)

    assert bool((objective(beta) <= objective(plain) + 1e-12).all())


def test_fused_lasso_limits_are_least_squares_and_one_common_coefficient() -> None:
    z, y, w = design()
    gram, linear, _, _ = _moments(z, y, w, True)
    expected, _ = weighted_least_squares(z, y, w)
    torch.testing.assert_close(fused_lasso(gram, linear, 0.0), expected, rtol=1e-9, atol=1e-10)
    # a large penalty fuses every coefficient: the regression of y on the row sum of z
    common, _ = weighted_least_squares(z.sum(-1, keepdim=True), y, w)
    torch.testing.assert_close(
        fused_lasso(gram, linear, 10.0), common.expand(-1, z.shape[2]), rtol=1e-9, atol=1e-10
    )


def test_mixture_regression_recovers_planted_regimes() -> None:
    """Two linear regimes, each sample drawn from one: EM finds both coefficient vectors."""
    generator = torch.Generator().manual_seed(1)
    batch, samples, features = 3, 400, 6
    z = (torch.rand(batch, samples, features, generator=generator) < 0.5).double()
    first = torch.tensor([2.0, 2.0, 0.0, 0.0, -1.0, -1.0], dtype=torch.float64)
    second = torch.tensor([0.0, 0.0, 3.0, 3.0, 0.0, 0.0], dtype=torch.float64)
    regime = torch.rand(batch, samples, generator=generator) < 0.5
    noise = 0.01 * torch.randn(batch, samples, generator=generator, dtype=torch.float64)
    y = torch.where(regime, z @ first + 1.0, z @ second - 2.0) + noise
    mixture = mixture_regression(z, y, n_components=2, penalty=0.0, min_variance=1e-6)
    for b in range(batch):
        coef = mixture.coef[b]
        order = (
            [0, 1] if float((coef[0] - first).abs().max()) < float((coef[1] - first).abs().max()) else [1, 0]
        )
        torch.testing.assert_close(coef[order[0]], first, atol=0.02, rtol=0)
        torch.testing.assert_close(coef[order[1]], second, atol=0.02, rtol=0)
        torch.testing.assert_close(
            mixture.intercept[b, order], torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.02, rtol=0
        )
        torch.testing.assert_close(mixture.weights[b, order[0]], regime[b].double().mean(), atol=0.02, rtol=0)


class Planted(nn.Module):
    """A scorer of length-20 sequences that reads only positions 5, 6 and 7, through a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.scale * (x[:, 5] + x[:, 6] + x[:, 7] - 1.5)).unsqueeze(1)


def deduction(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor, k: int) -> float:
    """The paper's feature deduction test: the mean drop of the score when the top-k features
    (largest coefficients) of each input are nullified."""
    top = attribution.topk(k, dim=1).indices
    with torch.no_grad():
        return float((model(x) - model(x.scatter(1, top, 0.0))).mean())


def test_lemna_finds_the_decisive_positions_and_its_fidelity_is_close_to_lime() -> None:
    model = Planted()
    x = 0.5 + 0.5 * torch.rand(12, 20, generator=torch.Generator().manual_seed(0))
    explanation = fx.lemna(model, x, 0, n_samples=300, seed=0)
    assert explanation.shape == x.shape
    top = explanation.topk(3, dim=1).indices.sort(1).values
    assert float((top == torch.tensor([5, 6, 7])).all(1).float().mean()) >= 0.9
    lime = fx.lime(model, x, 0, n_samples=300, seed=0)
    random = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    for k in (2, 3):
        ours, theirs, chance = (deduction(model, x, a, k) for a in (explanation, lime, random))
        assert ours > chance + 0.4
        # the planted scorer is nearly linear in the kept features: one surrogate suffices, and
        # LEMNA's mixture costs little fidelity against LIME's Lasso here
        assert ours >= theirs - 0.1, (ours, theirs)


def test_groups_follow_the_feature_mask_and_the_model_is_left_as_found() -> None:
    model = Planted().train()
    before = model_state(model)
    sequences = 0.5 + 0.5 * torch.rand(3, 20, 2, generator=torch.Generator().manual_seed(2))

    def embedded(x: torch.Tensor) -> torch.Tensor:
        return model(x.mean(2))

    mask = torch.arange(20).view(20, 1).expand(20, 2)
    grouped = fx.lemna(embedded, sequences, 0, feature_mask=mask, n_samples=200, seed=0)
    assert grouped.shape == sequences.shape and torch.equal(grouped[:, :, 0], grouped[:, :, 1])
    flat = fx.lemna(
        embedded, sequences, 0, feature_mask=mask, n_samples=200, seed=0, return_input_shape=False
    )
    assert flat.shape == (3, 20) and torch.equal(flat, grouped[:, :, 0])
    fx.lemna(model, sequences.mean(2), 0, n_samples=50, seed=0)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_samples": 1}, ValueError, "n_samples"),
        ({"n_components": 0}, ValueError, "n_components must be an int >= 1"),
        ({"n_components": 60, "n_samples": 50}, ValueError, "n_components must be at most n_samples"),
        ({"penalty": -1.0}, ValueError, "penalty must be a finite number >= 0"),
        ({"min_variance": float("inf")}, ValueError, "min_variance must be a finite number"),
        ({"n_iter": 0}, ValueError, "n_iter must be an int >= 1"),
        ({"feature_mask": torch.zeros(7, dtype=torch.long)}, ValueError, "feature_mask must have shape"),
        ({"target": 3}, ValueError, "target must be in"),
    ],
)
def test_bad_input_is_refused_before_work(kwargs: dict, error: type, message: str) -> None:
    model = Planted()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    arguments = {"target": 0} | kwargs
    with pytest.raises(error, match=message):
        fx.lemna(model, torch.rand(2, 20), **arguments)
    assert len(calls) <= (1 if "target" in kwargs else 0)  # the target's range needs the output size
