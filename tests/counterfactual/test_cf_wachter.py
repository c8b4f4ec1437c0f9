"""Wachter counterfactuals against the closed-form counterfactuals of linear models."""

from __future__ import annotations

import pytest
import torch
from cf_oracles import elastic_net_step, pairwise_boundary
from models import LinearModel, assert_same_state, fail_at_call, mlp, model_state
from torch import nn

import fastxai as fx
from fastxai.counterfactual import mad, wachter

pytestmark = pytest.mark.usefixtures("one_thread")


def _two_class(seed: int = 3, batch: int = 8, features: int = 6):
    model = LinearModel(features, 2, seed=seed)
    x = torch.randn(batch, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    weight, bias = model.weight.detach(), model.bias.detach()
    predicted = (x @ weight.T + bias).argmax(1)
    boundaries = [
        pairwise_boundary(weight, bias, x[i], 1 - int(predicted[i]), int(predicted[i])) for i in range(batch)
    ]
    return model, x, predicted, boundaries


def test_l2_counterfactual_of_a_linear_model_is_the_projection_on_the_boundary() -> None:
    model, x, predicted, boundaries = _two_class()
    result = wachter(model, x, distance="l2", lr=0.05, steps=300)
    assert result.valid.all() and torch.equal(result.original, predicted)
    assert torch.equal(result.predictions, 1 - predicted)
    for i, (v, m) in enumerate(boundaries):
        expected = x[i] + m / v.square().sum() * v  # the orthogonal projection onto v . d = m
        torch.testing.assert_close(
            result.counterfactuals[i], expected, rtol=0, atol=1e-5 * float(expected.abs().max())
        )
        assert float(result.l2[i]) == pytest.approx(m / float(v.norm()), rel=1e-5)
    assert torch.isfinite(result.lam).all()


def test_l1_counterfactual_changes_only_the_feature_of_largest_weight() -> None:
    model, x, _, boundaries = _two_class()
    result = wachter(model, x, distance="l1", lr=0.05, steps=300)
    assert result.valid.all()
    for i, (v, m) in enumerate(boundaries):
        feature = int(v.abs().argmax())
        change = result.counterfactuals[i] - x[i]
        assert change.nonzero().flatten().tolist() == [feature]
        assert float(change[feature]) == pytest.approx(m / float(v[feature]), rel=1e-5)
        assert float(result.l1[i]) == pytest.approx(m / float(v.abs().max()), rel=1e-5)


def test_l1_with_a_feature_scale_picks_the_largest_scaled_weight() -> None:
    model, x, _, boundaries = _two_class(seed=5)
    scale = torch.tensor([3.0, 0.2, 1.0, 0.5, 2.0, 1.5], dtype=torch.float64)
    result = wachter(model, x, distance="l1", scale=scale, lr=0.05, steps=300)
    assert result.valid.all()
    for i, (v, m) in enumerate(boundaries):
        feature = int((v.abs() * scale).argmax())
        change = result.counterfactuals[i] - x[i]
        assert change.nonzero().flatten().tolist() == [feature]
        assert float(change[feature]) == pytest.approx(m / float(v[feature]), rel=1e-5)


def test_mad_is_the_median_absolute_deviation() -> None:
    data = torch.tensor([[1.0, 10.0], [2.0, 10.0], [4.0, 10.0], [8.0, 10.0], [9.0, 10.0]])
    torch.testing.assert_close(mad(data), torch.tensor([3.0, 1e-6]))  # |x - 4| -> 3,2,0,4,5 -> 3


def test_targeted_l2_reaches_the_target_region_at_the_projection_distance() -> None:
    model = LinearModel(5, 3, seed=1)
    weight, bias = model.weight.detach(), model.bias.detach()
    x = torch.randn(24, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    predicted = (x @ weight.T + bias).argmax(1)
    target = (predicted + 1) % 3
    result = wachter(model, x, target, distance="l2", lr=0.05, steps=300)
    assert result.valid.all() and torch.equal(result.predictions, target)
    checked = 0
    for i in range(len(x)):
        t = int(target[i])
        # the region z_t >= z_j (all j) is an intersection of half-spaces: the farthest one's
        # projection, when it satisfies the others, is the nearest point of the region
        steps = [
            (max(m, 0.0) / v.square().sum()) * v  # no step into a half-space it is in
            for v, m in (pairwise_boundary(weight, bias, x[i], t, j) for j in range(3) if j != t)
        ]
        farthest = max(steps, key=lambda d: float(d.norm()))
        point = x[i] + farthest
        z = point @ weight.T + bias
        if float(z[t] - z.max()) > -1e-9:
            checked += 1
            assert float(result.l2[i]) == pytest.approx(float(farthest.norm()), rel=1e-4)
        assert float(result.l2[i]) >= float(farthest.norm()) * (1 - 1e-6)  # never nearer than a bound
    assert checked >= 10


def test_bounds_are_respected_and_the_boxed_projection_is_found() -> None:
    model = LinearModel(6, 2, seed=7)
    weight, bias = model.weight.detach(), model.bias.detach()
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low = torch.zeros(6, dtype=torch.float64)
    high = torch.tensor([1.0, 1.0, 0.8, 1.0, 1.0, 1.0], dtype=torch.float64).clamp_min(x.max(0).values)
    result = wachter(model, x, distance="l2", bounds=(low, high), lr=0.05, steps=400)
    assert bool((result.counterfactuals >= low).all() and (result.counterfactuals <= high).all())
    predicted = result.original
    clamped = 0
    for i in range(len(x)):
        v, m = pairwise_boundary(weight, bias, x[i], 1 - int(predicted[i]), int(predicted[i]))
        reachable = float(torch.where(v > 0, v * (high - x[i]), v * (low - x[i])).sum()) >= m
        assert bool(result.valid[i]) == reachable
        if not reachable:
            assert torch.equal(result.counterfactuals[i], x[i]) and result.lam[i] == float("inf")
            continue
        expected = elastic_net_step(v, m, 0.0, low - x[i], high - x[i])
        unboxed = m / v.square().sum() * v
        clamped += int(not torch.allclose(expected, unboxed))
        torch.testing.assert_close(
            result.counterfactuals[i] - x[i], expected, rtol=0, atol=2e-2 * float(expected.norm())
        )
    assert clamped >= 2  # the box changed the answer for some inputs


@pytest.mark.parametrize("loss", ["hinge", "squared"])
def test_any_other_class_and_kappa_on_an_mlp(loss: str) -> None:
    model = mlp(seed=1, features=8, hidden=12, classes=4).double()
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kappa = 0.1 if loss == "hinge" else 0.0
    lam = 0.1 if loss == "hinge" else 10.0  # the squared loss of probabilities has weak gradients
    result = wachter(
        model, x, distance="elastic", loss=loss, kappa=kappa, target_proba=0.6, lam=lam, lr=0.05, steps=200
    )
    assert result.valid.all()
    with torch.no_grad():
        logits = model(result.counterfactuals)
    assert torch.equal(logits.argmax(1), result.predictions)
    assert bool((result.predictions != result.original).all())
    own = logits.gather(1, result.original.view(-1, 1)).squeeze(1)
    assert bool((logits.max(1).values - own >= kappa - 1e-9).all())
    torch.testing.assert_close(result.l1, (result.counterfactuals - x).abs().sum(1))


def test_batched_search_equals_the_loop_over_samples() -> None:
    model = mlp(seed=2, features=8, hidden=12, classes=3).double()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # lambda kept moderate: at 1e5 and above the steps are so large that rounding differences
    # between batch sizes grow into different paths
    options = dict(distance="elastic", lr=0.05, steps=100, lam=0.01, lam_factor=4.0, lam_steps=9)
    batched = wachter(model, x, **options)
    assert len(set(batched.lam.tolist())) > 1  # the samples stopped at different lambdas
    for i in range(len(x)):
        alone = wachter(model, x[i : i + 1], **options)
        torch.testing.assert_close(alone.counterfactuals[0], batched.counterfactuals[i], rtol=1e-6, atol=1e-9)
        assert float(alone.lam[0]) == float(batched.lam[i])
    assert batched.valid.sum() >= 3


def test_model_left_as_found_also_after_an_error() -> None:
    model = mlp(seed=0, features=6, hidden=8, classes=3)
    model.train()
    model[0].bias.requires_grad_(False)
    model[2].register_forward_hook(lambda *args: None)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    wachter(model, x, steps=5, lam_steps=2)
    assert_same_state(before, model_state(model))
    handle = fail_at_call(model, 4)
    with pytest.raises(RuntimeError, match="crash"):
        wachter(model, x, steps=5)
    handle.remove()
    assert_same_state(before, model_state(model))
    assert all(p.grad is None for p in model.parameters())


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = mlp(seed=0, features=6, hidden=8, classes=3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


BAD = [
    ({"distance": "l3"}, ValueError, "distance must be one of"),
    ({"loss": "ce"}, ValueError, "loss must be one of"),
    ({"lam": 0}, ValueError, "lam must be a finite number > 0"),
    ({"lam_factor": 1.0}, ValueError, "lam_factor must be a finite number > 1"),
    ({"lam_steps": 0}, ValueError, "lam_steps must be an int >= 1"),
    ({"steps": 0}, ValueError, "steps must be an int >= 1"),
    ({"lr": -1.0}, ValueError, "lr must be a finite number > 0"),
    ({"momentum": 1}, TypeError, "momentum must be a bool"),
    ({"kappa": -0.1}, ValueError, "kappa must be a finite number >= 0"),
    ({"beta": float("nan")}, ValueError, "beta must be a finite number"),
    ({"target_proba": 1.5}, ValueError, "target_proba must be in"),
    ({"scale": torch.zeros(6)}, ValueError, "scale must be > 0"),
    ({"scale": torch.ones(4)}, ValueError, "scale must broadcast"),
    ({"bounds": (0.0, 0.5)}, ValueError, "inputs must lie within bounds"),
    ({"bounds": (1.0, 0.0)}, ValueError, "bounds must have low < high"),
    ({"bounds": (0.0,)}, ValueError, r"bounds must be None or \(low, high\)"),
    ({"refine_steps": -1}, ValueError, "refine_steps must be an int >= 0"),
    ({"target": torch.tensor([0, 1])}, ValueError, "target must be an int or have shape"),
    ({"target": (0, 1)}, ValueError, "target must be None, an int or"),
    ({"inputs": torch.ones(2, 6, dtype=torch.long)}, TypeError, "inputs must be a floating-point"),
    ({"inputs": torch.full((2, 6), float("nan"))}, ValueError, "NaN"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_refused_before_any_model_call(change: dict, error: type, message: str) -> None:
    model = Counting().train()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    kwargs = dict(change)
    inputs = kwargs.pop("inputs", x)
    before = model_state(model)
    with pytest.raises(error, match=message):
        wachter(model, inputs, **kwargs)
    assert model.calls == 0
    assert_same_state(before, model_state(model))


def test_target_out_of_range_after_one_forward() -> None:
    model = Counting()
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\)"):
        wachter(model, torch.rand(2, 6), 3)
    assert model.calls == 1


def test_single_output_model_refused() -> None:
    with pytest.raises(ValueError, match="classes >= 2"):
        fx.wachter(nn.Linear(4, 1), torch.rand(2, 4))
