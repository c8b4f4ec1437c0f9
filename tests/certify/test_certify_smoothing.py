"""Randomized smoothing: exact binomial bounds, closed-form radii, abstention, determinism."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, mlp, model_state
from torch import nn

from fastxai.certify import certified_accuracy, clopper_pearson_lower, smoothing_certify, smoothing_predict

stats = pytest.importorskip("scipy.stats", reason="scipy gives the reference binomial intervals")


class Constant(nn.Module):
    """Always class ``label`` of ``classes``, whatever the input."""

    def __init__(self, label: int, classes: int = 4) -> None:
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.classes)
        out[:, self.label] = 1.0
        return out


class SignOfFirst(nn.Module):
    """Class 0 if x_0 > 0 else 1: at x_0 = 0 the noisy votes are a fair coin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, :1]
        return torch.cat([first, -first], dim=1)


class Halfspace(nn.Module):
    """``w.x + b`` against 0, with a unit w: the distance to the boundary is |w.x + b|."""

    def __init__(self, features: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        direction = torch.randn(features, generator=generator)
        self.w = direction / direction.norm()
        self.b = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([score, -score], dim=1)


@pytest.mark.parametrize(
    "successes, trials, alpha", [(0, 10, 0.05), (7, 10, 0.05), (95, 100, 0.001), (1000, 1000, 0.01)]
)
def test_clopper_pearson_matches_scipy(successes: int, trials: int, alpha: float) -> None:
    ours = float(clopper_pearson_lower(torch.tensor([successes]), trials, alpha)[0])
    # The one-sided 1 - alpha bound is the lower end of the two-sided 1 - 2 alpha exact interval.
    reference = (
        stats.binomtest(successes, trials).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    )
    assert ours == pytest.approx(reference, abs=1e-12)
    if successes == trials:
        assert ours == pytest.approx(alpha ** (1 / trials), rel=1e-12)


def test_a_constant_model_certifies_the_closed_form_radius() -> None:
    sigma, n, alpha = 0.5, 500, 0.001
    pred, radius = smoothing_certify(
        Constant(2), torch.rand(3, 5), sigma=sigma, n0=10, n=n, alpha=alpha, seed=0
    )
    assert pred.tolist() == [2, 2, 2]
    expected = sigma * stats.norm.ppf(alpha ** (1 / n))
    torch.testing.assert_close(radius, torch.full((3,), expected, dtype=torch.float32))
    assert smoothing_predict(Constant(1), torch.rand(2, 5), n=50, seed=0).tolist() == [1, 1]


def test_a_fair_coin_abstains() -> None:
    x = torch.zeros(4, 3)
    pred, radius = smoothing_certify(SignOfFirst(), x, sigma=0.3, n0=50, n=400, seed=1)
    assert pred.tolist() == [-1, -1, -1, -1]
    assert radius.tolist() == [0.0] * 4
    assert smoothing_predict(SignOfFirst(), x, sigma=0.3, n=400, alpha=0.001, seed=2).tolist() == [-1] * 4


def test_a_halfspace_certifies_close_to_its_true_distance() -> None:
    model = Halfspace(6)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 6, generator=generator) * 0.3
    pred, radius = smoothing_certify(
        model, x, sigma=0.25, n0=100, n=4000, alpha=0.001, seed=4, batch_size=1000
    )
    with torch.no_grad():
        score = model(x)[:, 0]
        distance = score.abs()
    certified = pred >= 0
    assert bool((pred[certified] == (score[certified] < 0).long()).all())
    # The smoothed classifier of a halfspace is the halfspace: its exact radius is the distance;
    # the certificate is below it (with probability 1 - alpha) and near it for this many samples.
    assert bool((radius <= distance + 1e-6).all())
    far = distance > 0.15
    assert bool((radius[far] >= distance[far] - 0.12).all())


def test_results_depend_on_the_seed_only() -> None:
    model = mlp(seed=5, features=6, classes=3).eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(6))
    first = smoothing_certify(model, x, sigma=0.5, n0=20, n=300, seed=7, batch_size=64)
    again = smoothing_certify(model, x, sigma=0.5, n0=20, n=300, seed=7, batch_size=7)
    whole = smoothing_certify(model, x, sigma=0.5, n0=20, n=300, seed=7, batch_size=10_000)
    for other in (again, whole):
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
    one_row = smoothing_certify(model, x[:2], sigma=0.5, n0=20, n=300, seed=7, batch_size=3)
    assert torch.equal(one_row[0], first[0][:2])
    predicted = smoothing_predict(model, x, sigma=0.5, n=200, seed=8, batch_size=9)
    assert torch.equal(predicted, smoothing_predict(model, x, sigma=0.5, n=200, seed=8, batch_size=1000))


def test_certified_accuracy_counts_correct_predictions_within_the_radius() -> None:
    pred = torch.tensor([0, 1, -1, 2])
    radius = torch.tensor([0.3, 0.6, 0.0, 1.2])
    labels = torch.tensor([0, 1, 2, 1])
    result = certified_accuracy(pred, radius, labels, [0.0, 0.25, 0.5, 1.0])
    assert result == {0.0: 0.5, 0.25: 0.5, 0.5: 0.25, 1.0: 0.0}


def test_state_is_restored_also_on_error() -> None:
    model = mlp(seed=9, features=6, classes=3)
    model.train()
    before = model_state(model)
    smoothing_certify(model, torch.rand(2, 6), n0=5, n=20, seed=0)
    assert_same_state(before, model_state(model))
    with pytest.raises(RuntimeError):
        smoothing_certify(model, torch.rand(2, 7), n0=5, n=20, seed=0)  # wrong feature count
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_input(kwargs: dict, name: str) -> None:
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x

    with pytest.raises(ValueError, match=name):
        smoothing_certify(model, torch.rand(2, 3), **kwargs)
    assert not calls  # rejected before any model evaluation
    with pytest.raises(TypeError, match="x must be a floating-point"):
        smoothing_certify(model, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="radius"):
        certified_accuracy(torch.zeros(3), torch.zeros(2), torch.zeros(3), [0.0])
