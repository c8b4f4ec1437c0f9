"""CEM pertinent negatives and positives against the KKT solution of the elastic-net problem
on linear models."""

from __future__ import annotations

import pytest
import torch
from cf_oracles import elastic_net_step, pairwise_boundary
from models import LinearModel, assert_same_state, fail_at_call, mlp, model_state
from torch import nn

from fastxai.counterfactual import cem

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(lr=0.05, steps=300, search_steps=6)


def _linear(seed: int = 3, batch: int = 8):
    model = LinearModel(6, 2, seed=seed)
    x = torch.rand(batch, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    weight, bias = model.weight.detach(), model.bias.detach()
    return model, x, weight, bias, (x @ weight.T + bias).argmax(1)


@pytest.mark.parametrize("direction", ["increase", "decrease", "any"])
def test_pertinent_negative_of_a_linear_model_is_the_elastic_net_minimum(direction: str) -> None:
    model, x, weight, bias, predicted = _linear()
    low, high, beta = -1.0, 3.0, 0.1
    result = cem(model, x, "pn", beta=beta, direction=direction, bounds=(low, high), **FAST)
    delta = result.counterfactuals - x
    assert bool((result.counterfactuals >= low).all() and (result.counterfactuals <= high).all())
    if direction == "increase":
        assert bool((delta >= 0).all())
    if direction == "decrease":
        assert bool((delta <= 0).all())
    for i in range(len(x)):
        v, m = pairwise_boundary(weight, bias, x[i], 1 - int(predicted[i]), int(predicted[i]))
        box_low = torch.zeros(6, dtype=x.dtype) if direction == "increase" else low - x[i]
        box_high = torch.zeros(6, dtype=x.dtype) if direction == "decrease" else high - x[i]
        reachable = float(torch.where(v > 0, v * box_high, v * box_low).sum()) > m
        assert bool(result.valid[i]) == reachable
        if reachable:
            expected = elastic_net_step(v, m, beta, box_low, box_high)
            torch.testing.assert_close(delta[i], expected, rtol=0, atol=3e-2 * float(expected.norm()))
            assert int(result.predictions[i]) != int(predicted[i])
    assert result.valid.sum() >= 4


@pytest.mark.parametrize("pp_start", ["background", "input"])
def test_pertinent_positive_of_a_linear_model_is_the_smallest_part_of_the_input(pp_start: str) -> None:
    model, x, weight, bias, predicted = _linear(seed=4, batch=16)
    beta = 0.1
    result = cem(model, x, "pp", beta=beta, background=0.0, bounds=(0.0, 1.0), pp_start=pp_start, **FAST)
    checked = 0
    for i in range(len(x)):
        t0 = int(predicted[i])
        v, m = pairwise_boundary(weight, bias, torch.zeros(6, dtype=x.dtype), t0, 1 - t0)
        assert bool(result.valid[i])  # x itself is a valid (if large) pertinent positive
        assert bool((result.counterfactuals[i] >= 0).all() and (result.counterfactuals[i] <= x[i]).all())
        assert int(result.predictions[i]) == t0
        if m > 0:  # the empty input is the other class: something must be kept
            expected = elastic_net_step(v, m, beta, torch.zeros(6, dtype=x.dtype), x[i])
            torch.testing.assert_close(
                result.counterfactuals[i], expected, rtol=0, atol=3e-2 * float(expected.norm())
            )
            checked += 1
        else:  # the empty input already is class t0
            assert not result.counterfactuals[i].any()
    assert 3 <= checked < len(x)
    torch.testing.assert_close(result.l1, result.counterfactuals.abs().sum(1))


def test_identity_autoencoder_changes_nothing_and_a_projection_pulls_towards_its_range() -> None:
    model = LinearModel(6, 3, seed=1)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = dict(beta=0.05, bounds=(-2.0, 3.0), direction="any", lr=0.05, steps=100, search_steps=3)
    calls = [0]

    def identity(points: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return points.clone()

    plain = cem(model, x, "pn", **options)
    with_identity = cem(model, x, "pn", ae=identity, gamma=10.0, **options)
    assert calls[0] > 0
    torch.testing.assert_close(plain.counterfactuals, with_identity.counterfactuals, rtol=0, atol=0)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=x.dtype))[0]
    projection = nn.Linear(6, 6, bias=False).double()
    with torch.no_grad():
        projection.weight.copy_(basis @ basis.T)
    projection.train()
    before = model_state(projection)
    pulled = cem(model, x, "pn", ae=projection, gamma=10.0, **options)
    assert_same_state(before, model_state(projection))

    def off_range(points: torch.Tensor) -> torch.Tensor:
        return (points - points @ basis @ basis.T).norm(dim=1)

    both = plain.valid & pulled.valid
    assert both.sum() >= 3
    assert bool((off_range(pulled.counterfactuals[both]) < off_range(plain.counterfactuals[both])).all())


def test_batched_cem_equals_the_loop_over_samples() -> None:
    model = mlp(seed=2, features=6, hidden=10, classes=3).double()
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    options = dict(beta=0.05, bounds=(-3.0, 3.0), direction="any", lr=0.05, steps=60, search_steps=3)
    batched = cem(model, x, "pn", **options)
    assert batched.valid.sum() >= 2
    for i in range(len(x)):
        alone = cem(model, x[i : i + 1], "pn", **options)
        torch.testing.assert_close(alone.counterfactuals[0], batched.counterfactuals[i], rtol=1e-6, atol=1e-9)


def test_model_left_as_found_also_after_an_error() -> None:
    model = mlp(seed=0, features=6, hidden=8, classes=3)
    model.train()
    model[2].weight.requires_grad_(False)
    model[0].register_forward_pre_hook(lambda *args: None)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    cem(model, x, "pp", steps=5, search_steps=2, bounds=(0.0, 1.0))
    assert_same_state(before, model_state(model))
    handle = fail_at_call(model, 3)
    with pytest.raises(RuntimeError, match="crash"):
        cem(model, x, "pn", steps=5, search_steps=2)
    handle.remove()
    assert_same_state(before, model_state(model))


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = mlp(seed=0, features=6, hidden=8, classes=3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


BAD = [
    ({"mode": "pq"}, ValueError, "mode must be one of"),
    ({"direction": "up"}, ValueError, "direction must be one of"),
    ({"pp_start": "zero"}, ValueError, "pp_start must be one of"),
    ({"kappa": -1.0}, ValueError, "kappa must be a finite number >= 0"),
    ({"beta": -0.1}, ValueError, "beta must be a finite number >= 0"),
    ({"gamma": 1.0}, ValueError, "gamma > 0 needs an autoencoder"),
    ({"ae": "autoencoder"}, TypeError, "ae must be None or a callable"),
    ({"c": 0.0}, ValueError, "c must be a finite number > 0"),
    ({"search_steps": 0}, ValueError, "search_steps must be an int >= 1"),
    ({"steps": 1.5}, ValueError, "steps must be an int >= 1"),
    ({"momentum": "yes"}, TypeError, "momentum must be a bool"),
    ({"bounds": (0.0, 0.5)}, ValueError, "inputs must lie within bounds"),
    ({"background": 2.0}, ValueError, "background must lie within bounds"),
    ({"background": torch.zeros(5)}, ValueError, "background must broadcast"),
    ({"refine_steps": None}, ValueError, "refine_steps must be an int"),
    ({"inputs": [[0.0] * 6]}, TypeError, "inputs must be a torch.Tensor"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_refused_before_any_model_call(change: dict, error: type, message: str) -> None:
    model = Counting().train()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    kwargs = {"bounds": (0.0, 1.0)} | dict(change)
    inputs = kwargs.pop("inputs", x)
    before = model_state(model)
    with pytest.raises(error, match=message):
        cem(model, inputs, **kwargs)
    assert model.calls == 0
    assert_same_state(before, model_state(model))
