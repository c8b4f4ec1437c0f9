"""Exact Shapley values from all coalitions: against the mean over every order (brute force),
efficiency, the linear-model formula, Captum's ShapleyValues, chunking and backends, the group
cap and the memory check refused before the model runs, and the model left as found."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import backend_params
from models import LinearModel, QuadraticModel, assert_same_state, model_state, small_cnn
from torch import nn

import fastxai
from fastxai import _budget
from fastxai.attribution.exact_shapley import MAX_GROUPS, TooManyGroupsError, combine

pytestmark = pytest.mark.usefixtures("one_thread")


def _mean_over_orders(
    model: nn.Module, x: torch.Tensor, base: torch.Tensor, mask: torch.Tensor, target: int
) -> torch.Tensor:
    """Every order of the groups walked from the baseline to the input: [B, M] (the definition)."""
    groups = int(mask.max()) + 1
    phi = torch.zeros(x.shape[0], groups, dtype=torch.float64)
    with torch.no_grad():
        for order in itertools.permutations(range(groups)):
            kept = torch.zeros(groups, dtype=torch.float64)
            before = model(base.expand_as(x))[:, target]
            for group in order:
                kept[group] = 1.0
                after = model(base + kept[mask] * (x - base))[:, target]
                phi[:, group] += after - before
                before = after
    return phi / math.factorial(groups)


def test_brute_force_over_every_order_on_a_nonlinear_model() -> None:
    model = QuadraticModel(8, 3)
    x = torch.randn(3, 8, dtype=torch.float64)
    base = torch.randn(8, dtype=torch.float64) * 0.5
    mask = torch.tensor([0, 1, 1, 2, 3, 3, 0, 2])
    got = fastxai.shapley_values(model, x, 2, baselines=base, feature_mask=mask, return_input_shape=False)
    torch.testing.assert_close(got, _mean_over_orders(model, x, base, mask, 2))
    shaped = fastxai.shapley_values(model, x, 2, baselines=base, feature_mask=mask)
    torch.testing.assert_close(shaped, got[:, mask])


def test_efficiency_on_a_network() -> None:
    model = small_cnn(seed=4).eval()
    x = torch.randn(4, 1, 6, 6)
    mask = (torch.arange(36) // 6).view(1, 6, 6)  # 6 rows of the image
    base = torch.full((1, 6, 6), 0.25)
    phi = fastxai.shapley_values(model, x, 3, baselines=base, feature_mask=mask, return_input_shape=False)
    with torch.no_grad():
        gap = model(x)[:, 3] - model(base.expand_as(x))[:, 3]
    torch.testing.assert_close(phi.sum(1), gap, rtol=1e-5, atol=1e-5)


def test_linear_model_formula() -> None:
    model = LinearModel(12, 2)
    x = torch.randn(3, 12, dtype=torch.float64)
    base = torch.randn(3, 12, dtype=torch.float64)
    mask = torch.arange(12) % 5
    contribution = model.weight[0].detach() * (x - base)
    expected = torch.zeros(3, 5, dtype=torch.float64).index_add_(1, mask, contribution)
    got = fastxai.shapley_values(model, x, 0, baselines=base, feature_mask=mask, return_input_shape=False)
    torch.testing.assert_close(got, expected)


def test_combine_against_shapleys_formula() -> None:
    groups = 5
    values = torch.randn(2, 2**groups, dtype=torch.float64)
    expected = torch.zeros(2, groups, dtype=torch.float64)
    for member in range(groups):
        for code in range(2**groups):
            if code >> member & 1:
                continue
            size = bin(code).count("1")
            weight = math.factorial(size) * math.factorial(groups - size - 1) / math.factorial(groups)
            expected[:, member] += weight * (values[:, code | 1 << member] - values[:, code])
    torch.testing.assert_close(combine(values, groups), expected)


def test_captum_shapley_values_agree() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(5, 8)
    base = torch.randn(1, 8) * 0.1
    mask = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    expected = captum_attr.ShapleyValues(model).attribute(x, baselines=base, target=1, feature_mask=mask)
    got = fastxai.shapley_values(model, x, 1, baselines=base, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_target_none_chunking_and_fixed_elements() -> None:
    model = small_cnn(seed=5).eval()
    x = torch.randn(3, 1, 4, 4)
    mask = (torch.arange(16) // 4).view(1, 4, 4)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    first = fastxai.shapley_values(model, x, predicted, feature_mask=mask)
    torch.testing.assert_close(fastxai.shapley_values(model, x, None, feature_mask=mask, chunk_size=5), first)
    # -1 elements are no player: kept as in the input, attribution 0
    fixed = mask.clone()
    fixed[0, 0, 0] = -1
    got = fastxai.shapley_values(model, x, predicted, feature_mask=fixed)
    assert torch.equal(got[:, 0, 0, 0], torch.zeros(3))


@pytest.mark.parametrize(("backend", "device"), backend_params())
def test_backends_agree_with_reference(backend: str, device: str) -> None:
    model = small_cnn(seed=8).eval().to(device)
    x = torch.randn(2, 1, 6, 6, device=device)
    mask = (torch.arange(36, device=device) // 9).view(1, 6, 6)
    expected = fastxai.shapley_values(model, x, 1, feature_mask=mask, backend="reference")
    got = fastxai.shapley_values(model, x, 1, feature_mask=mask, backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"feature_mask": torch.arange(MAX_GROUPS + 1).repeat(2)[:42].view(6, 7)},
            TooManyGroupsError,
            "21 groups",
        ),
        ({"feature_mask": torch.zeros(6, 7)}, TypeError, "integer"),
        ({"feature_mask": torch.zeros(3, 6, 7, dtype=torch.long)}, ValueError, "feature_mask"),
        ({"baselines": torch.zeros(3, 6, 7)}, ValueError, "baselines"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"backend": "nonesuch"}, ValueError, "backend"),
    ],
)
def test_bad_input_before_any_model_call(kwargs: dict, error: type, match: str) -> None:
    calls: list[int] = []
    model = LinearModel(42, 2, dtype=torch.float32)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    kwargs.setdefault("feature_mask", torch.arange(42).view(6, 7) % 3)
    with pytest.raises(error, match=match):
        fastxai.shapley_values(model, torch.randn(2, 6, 7), 1, **kwargs)
    assert calls == []


def test_memory_check_before_any_model_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    model = LinearModel(16, 2, dtype=torch.float32)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 1 << 20)
    mask = torch.arange(16)  # 2**16 coalitions of 4 examples: 4 MiB of scores
    with pytest.raises(ValueError, match="feature_mask"):
        fastxai.shapley_values(model, torch.randn(4, 16), 1, feature_mask=mask)
    assert calls == []


def test_model_state_restored_also_on_error() -> None:
    model = small_cnn(seed=9)
    model.train()
    before = model_state(model)
    x = torch.randn(2, 1, 4, 4)
    mask = (torch.arange(16) // 4).view(1, 4, 4)
    fastxai.shapley_values(model, x, 1, feature_mask=mask)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        fastxai.shapley_values(model, x, 10, feature_mask=mask)
    assert_same_state(before, model_state(model))
